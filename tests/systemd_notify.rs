//! systemd `Type=notify`: with `NOTIFY_SOCKET` set, the real binary sends `READY=1` once it serves
//! (baseline built, `/readyz` 200), `WATCHDOG=1` at half of `WATCHDOG_USEC`, and `STOPPING=1` on
//! SIGTERM — read here from a real Unix datagram socket, as systemd would.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn next_message(sock: &UnixDatagram, deadline: Instant) -> Option<String> {
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => return Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    None
}

#[test]
fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let d = tempfile::tempdir().unwrap();
    let inbox = d.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let cfg = config(
        d.path(),
        1,
        "batch_size = 8",
        &format!("[[sources]]\ntype = \"dir\"\nname = \"inbox\"\npath = \"{}\"", inbox.display()),
    );
    let sock_path = d.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(&cfg)
        .env("AGENT__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let first = next_message(&sock, deadline).expect("no notification within 120 s");
    assert!(first.lines().any(|l| l == "READY=1"), "first message {first:?}");
    // READY=1 means serving: the readiness probe agrees at once.
    assert_eq!(get(port, "/readyz").map(|r| r.code), Some(200));
    let mut watchdogs = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while let Some(m) = next_message(&sock, until) {
        watchdogs += m.lines().filter(|l| *l == "WATCHDOG=1").count();
    }
    // 2 s at one ping per 200 ms (half of WATCHDOG_USEC): about 10; at least 4 even on a busy machine.
    assert!(watchdogs >= 4, "{watchdogs} watchdog pings in 2 s");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let stopping = next_message(&sock, Instant::now() + Duration::from_secs(30)).unwrap_or_default();
    let mut rest = stopping.clone();
    while !rest.lines().any(|l| l == "STOPPING=1") {
        rest = next_message(&sock, Instant::now() + Duration::from_secs(30))
            .expect("no STOPPING=1 after SIGTERM");
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
