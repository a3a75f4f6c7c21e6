//! The `dir` source and slow writers (issue 13): a file copied or streamed into the inbox is read
//! once its writer is done, never half-written. A real writer thread writes a 1 MiB `.npy` in small
//! chunks with pauses through one open file handle, as `cp`, `scp` or a streaming producer do, and
//! the test checks that the one delivery is the whole array and that nothing is rejected:
//!
//! - notify: pauses far longer than `settle_ms` — the close-write event decides;
//! - poll: pauses shorter than `settle_ms` — the settle time decides;
//! - poll, writer stalling past `settle_ms` so the file is claimed half-written, then resuming:
//!   the failed decode is retried while the file grows, not rejected.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;
use plugins::decode::{DecodeOptions, Rejection};
use plugins::sources::dir::{DirConfig, DirSource, WatchMethod};
use plugins::sources::{Delivery, Observer, Outcome};
use tokio::sync::{mpsc, watch};

const SHAPE: [usize; 3] = [1, 64, 64];
const BATCH: usize = 64;
const CHUNK: usize = 8 * 1024;

#[derive(Default)]
struct Count {
    rejected: AtomicUsize,
    errors: AtomicUsize,
}

impl Observer for Count {
    fn rejected(&self, _: &str, r: &Rejection) {
        eprintln!("rejected: {}", r.message);
        self.rejected.fetch_add(1, Ordering::SeqCst);
    }
    fn error(&self, _: &str, kind: &'static str) {
        eprintln!("source error: {kind}");
        self.errors.fetch_add(1, Ordering::SeqCst);
    }
}

/// A 1 MiB `.npy` (64 samples of 1 × 64 × 64 `f32`) with distinct values.
fn payload() -> (ArrayD<f32>, Vec<u8>) {
    let n = BATCH * SHAPE.iter().product::<usize>();
    let a = ArrayD::from_shape_vec(
        IxDyn(&[BATCH, SHAPE[0], SHAPE[1], SHAPE[2]]),
        (0..n).map(|i| i as f32 / n as f32).collect(),
    )
    .unwrap();
    let mut bytes = Vec::new();
    a.write_npy(&mut bytes).unwrap();
    (a, bytes)
}

struct Running {
    cfg: DirConfig,
    rx: mpsc::Receiver<Delivery>,
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
    observer: Arc<Count>,
}

fn start(inbox: &Path, method: WatchMethod, settle_ms: u64) -> Running {
    let cfg = DirConfig { method, poll_interval_ms: 50, settle_ms, ..DirConfig::new(inbox) };
    let (src, _) = DirSource::open(&cfg).unwrap();
    let (tx, rx) = mpsc::channel(2);
    let (stop, stop_rx) = watch::channel(false);
    let observer = Arc::new(Count::default());
    let obs: Arc<dyn Observer> = observer.clone();
    let opts = DecodeOptions { input_shape: SHAPE.to_vec(), ..Default::default() };
    let thread = std::thread::spawn(move || src.run(opts, tx, obs, stop_rx));
    Running { cfg, rx, stop, thread, observer }
}

impl Running {
    /// The next delivery (within `secs`), acknowledged as scored.
    fn delivery(&mut self, secs: u64) -> ArrayD<f32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            match self.rx.try_recv() {
                Ok(d) => {
                    let batch = d.batch.as_dense().expect("a dense batch").clone();
                    d.ack.finish(&Outcome::Scored { samples: batch.shape()[0] as u64 }).unwrap();
                    return batch;
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("no delivery within {secs} s: {e}"),
            }
        }
    }

    fn stop(self) -> (DirConfig, Arc<Count>) {
        self.stop.send(true).unwrap();
        drop(self.rx);
        self.thread.join().unwrap();
        (self.cfg, self.observer)
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Writes `bytes[range]` to `f` in chunks, `pause` after each.
fn write_chunks(f: &mut std::fs::File, bytes: &[u8], pause: Duration) {
    for c in bytes.chunks(CHUNK) {
        f.write_all(c).unwrap();
        f.flush().unwrap();
        std::thread::sleep(pause);
    }
}

fn check_outcome(r: Running, expected: &ArrayD<f32>, got: &ArrayD<f32>) {
    assert_eq!(got, expected, "the delivery is not the whole file");
    let (cfg, observer) = r.stop();
    assert_eq!(observer.rejected.load(Ordering::SeqCst), 0, "a file was rejected");
    assert_eq!(observer.errors.load(Ordering::SeqCst), 0, "source errors");
    assert_eq!(files(&cfg.done_dir()), vec!["big.npy"]);
    assert!(files(&cfg.rejected_dir()).is_empty());
    assert!(files(&cfg.path).is_empty());
}

#[test]
fn notify_waits_for_close_write_through_long_pauses() {
    let d = tempfile::tempdir().unwrap();
    let settle = 200;
    let mut r = start(d.path(), WatchMethod::Notify, settle);
    let (a, bytes) = payload();
    let path: PathBuf = d.path().join("big.npy");
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::File::create(&path).unwrap();
        let (first, rest) = bytes.split_at(bytes.len() / 3);
        write_chunks(&mut f, first, Duration::from_millis(2));
        // Five settle periods without a byte: only the missing close-write keeps it in the inbox.
        std::thread::sleep(Duration::from_millis(5 * settle));
        let still_there = path.exists();
        write_chunks(&mut f, rest, Duration::from_millis(1));
        still_there
    });
    let got = r.delivery(20);
    assert!(writer.join().unwrap(), "the file was claimed while its writer held it open");
    check_outcome(r, &a, &got);
}

#[test]
fn poll_waits_for_the_settle_time() {
    let d = tempfile::tempdir().unwrap();
    let settle = 500;
    let mut r = start(d.path(), WatchMethod::Poll, settle);
    let (a, bytes) = payload();
    let path = d.path().join("big.npy");
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::File::create(&path).unwrap();
        // 128 chunks, a 50 ms pause after every 8th: well inside the settle time.
        for (i, c) in bytes.chunks(CHUNK).enumerate() {
            f.write_all(c).unwrap();
            if i % 8 == 7 {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
    let got = r.delivery(20);
    writer.join().unwrap();
    check_outcome(r, &a, &got);
}

#[test]
fn poll_retries_a_file_claimed_while_still_growing() {
    let d = tempfile::tempdir().unwrap();
    let settle = 300;
    let mut r = start(d.path(), WatchMethod::Poll, settle);
    let (a, bytes) = payload();
    let path = d.path().join("big.npy");
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::File::create(&path).unwrap();
        let (first, rest) = bytes.split_at(bytes.len() / 2);
        f.write_all(first).unwrap();
        // Stall until the source gives up waiting and claims the half-written file...
        let deadline = Instant::now() + Duration::from_secs(10);
        while path.exists() {
            assert!(Instant::now() < deadline, "never claimed");
            std::thread::sleep(Duration::from_millis(5));
        }
        // ...then carry on through the same handle (the claimed file is the same inode).
        write_chunks(&mut f, rest, Duration::from_millis(1));
    });
    let got = r.delivery(20);
    writer.join().unwrap();
    check_outcome(r, &a, &got);
}

#[test]
fn files_present_at_start_are_read_after_the_settle_time() {
    let d = tempfile::tempdir().unwrap();
    let (a, bytes) = payload();
    std::fs::write(d.path().join("big.npy"), &bytes).unwrap();
    let t0 = Instant::now();
    let mut r = start(d.path(), WatchMethod::Notify, 300);
    let got = r.delivery(20);
    assert!(t0.elapsed() >= Duration::from_millis(300), "read before the settle time");
    check_outcome(r, &a, &got);
}
