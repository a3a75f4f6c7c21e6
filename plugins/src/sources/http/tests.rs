use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::journal::{Journal, Validators};
use super::progress::{Admit, Progress};
use super::record::{Lines, Piece, parse_line};
use super::*;
use crate::decode::{RejectReason, Rejection};
use crate::limits::Limits;

#[test]
fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
    let (i, m) = (Duration::from_millis(100), Duration::from_millis(1000));
    assert_eq!(backoff(0, i, m, 1.0), Duration::from_millis(100));
    assert_eq!(backoff(0, i, m, 0.0), Duration::from_millis(50));
    assert_eq!(backoff(2, i, m, 1.0), Duration::from_millis(400));
    assert_eq!(backoff(4, i, m, 1.0), Duration::from_millis(1000));
    assert_eq!(backoff(60, i, m, 0.0), Duration::from_millis(500));
    assert_eq!(backoff(3, i, m, 7.0), backoff(3, i, m, 1.0));
}

#[test]
fn lines_split_across_chunks_and_bound_their_length() {
    let mut l = Lines::new(8);
    assert_eq!(l.push(b"ab"), vec![]);
    assert_eq!(l.push(b"c\n\r\n  \nde"), vec![Piece::Line(b"abc".to_vec())]);
    assert_eq!(l.push(b"f\r\n"), vec![Piece::Line(b"def".to_vec())]);
    assert_eq!(l.push(b"0123456789"), vec![Piece::TooLong]);
    assert_eq!(l.push(b"more of it\nok\n"), vec![Piece::Line(b"ok".to_vec())]);
    assert_eq!(l.push(b"tail"), vec![]);
    assert_eq!(l.finish(), vec![Piece::Line(b"tail".to_vec())]);
    assert_eq!(l.push(b"12345678\n"), vec![Piece::Line(b"12345678".to_vec())]);
    assert_eq!(l.push(b"123456789\n"), vec![Piece::TooLong]);
}

fn opts() -> DecodeOptions {
    DecodeOptions { input_shape: vec![1, 2, 2], ..Default::default() }
}

#[test]
fn records_parse_and_decode() {
    let r = parse_line(
        br#"{"id": 7, "cursor": 8, "inputs": [{"name": "x", "shape": [1, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#, &Limits::default(),
    )
    .unwrap();
    assert_eq!((r.id.as_str(), r.cursor.as_deref()), ("7", Some("8")));
    assert_eq!(r.decode("feed", None, &opts()).unwrap().as_dense().unwrap().shape(), &[1, 1, 2, 2]);
    // The id defaults to the cursor; a file payload in base64.
    let mut npy = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(
        &ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[2, 1, 2, 2])),
        &mut npy,
    )
    .unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &npy);
    let line = format!(r#"{{"cursor": "c9", "format": "npy", "base64": "{b64}"}}"#);
    let r = parse_line(line.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(r.id, "c9");
    assert_eq!(r.decode("feed", None, &opts()).unwrap().as_dense().unwrap().shape(), &[2, 1, 2, 2]);
    // Protocol errors: not JSON, no id nor cursor.
    assert!(parse_line(b"{not json", &Limits::default()).is_err());
    assert!(parse_line(br#"{"inputs": []}"#, &Limits::default()).is_err());
    // Rejections under the record's id.
    for (line, reason) in [
        (r#"{"id": "a"}"#, RejectReason::Decode),
        (r#"{"id": "a", "format": "gif", "base64": "AAAA"}"#, RejectReason::Unsupported),
        (r#"{"id": "a", "format": "npy", "base64": "!!"}"#, RejectReason::Decode),
        (
            r#"{"id": "a", "inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}"#,
            RejectReason::Shape,
        ),
        (
            r#"{"id": "a", "inputs": [{"name": "x", "shape": [1, 2, 2], "datatype": "BOOL", "data": [1, 0, 1, 0]}]}"#,
            RejectReason::Dtype,
        ),
    ] {
        let e = parse_line(line.as_bytes(), &Limits::default())
            .unwrap()
            .decode("feed", None, &opts())
            .unwrap_err();
        assert_eq!(e.reason, reason, "{line}");
        assert!(e.message.starts_with("feed/a"), "{}", e.message);
    }
}

fn scored() -> Outcome {
    Outcome::Scored { samples: 1 }
}

#[test]
fn the_position_moves_over_finished_prefixes_only() {
    let d = tempfile::tempdir().unwrap();
    let (_j, state) = Journal::open(&d.path().join("journal"), 100).unwrap();
    let mut p = Progress::new(state);
    let Admit::New(a) = p.admit("a", Some("1".into())) else { panic!() };
    let Admit::New(b) = p.admit("b", Some("2".into())) else { panic!() };
    let Admit::New(c) = p.admit("c", Some("3".into())) else { panic!() };
    assert_eq!(p.admit("b", Some("2".into())), Admit::Duplicate, "in flight");
    // c and b finish before a: the position stays before a.
    assert_eq!(p.finish(c, "c", &scored()), (None, None));
    assert_eq!(p.finish(b, "b", &scored()), (None, None));
    assert_eq!(p.finish(a, "a", &scored()), (Some("3".into()), None));
    assert_eq!(p.state().totals.scored_samples, 3);
    assert_eq!(p.admit("a", Some("9".into())), Admit::Duplicate, "finished");
    p.marker(None, Some(Validators { etag: Some("\"v1\"".into()), last_modified: None }));
    assert_eq!(p.advance(), (None, Some(Validators { etag: Some("\"v1\"".into()), last_modified: None })));
    assert_eq!(p.advance(), (None, None));
}

#[test]
fn the_journal_survives_restarts_torn_lines_and_compaction() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("journal");
    {
        let (mut j, state) = Journal::open(&path, 100).unwrap();
        let mut p = Progress::new(state);
        for (id, cursor) in [("x\tone", "1"), ("two", "2"), ("three", "3")] {
            let Admit::New(seq) = p.admit(id, Some(cursor.into())) else { panic!() };
            let outcome = if id == "two" {
                Outcome::Rejected(Rejection { reason: RejectReason::Shape, message: "bad\nshape".into() })
            } else {
                scored()
            };
            let (c, v) = p.finish(seq, id, &outcome);
            j.append(id, &outcome, c.as_deref(), v.as_ref(), p.state()).unwrap();
        }
        // A fourth record admitted but never finished (killed), and a torn line.
        let _ = p.admit("four", Some("4".into()));
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"S\tfour\t1").unwrap();
    let (_j, state) = Journal::open(&path, 100).unwrap();
    assert_eq!(state.cursor.as_deref(), Some("3"));
    assert_eq!(state.totals.scored_samples, 2);
    assert_eq!(state.totals.rejected_by(RejectReason::Shape), 1);
    assert!(state.finished.contains("x\tone") && state.finished.contains("two"));
    assert!(!state.finished.contains("four"));
    // Compacted: one T line, the position, the remembered ids; reading it again gives the same.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("T\t2\t2\t0\t1\t"), "{text}");
    assert!(text.contains("I\tx\\tone\n"), "{text}");
    let (_j, again) = Journal::open(&path, 2).unwrap();
    assert_eq!(again.totals, state.totals);
    assert_eq!(again.finished.len(), 2, "bounded by dedupe_ids");
    assert!(!again.finished.contains("x\tone") && again.finished.contains("three"));
}

#[derive(Default)]
struct Count {
    errors: Mutex<Vec<&'static str>>,
    rejected: AtomicUsize,
    ok: AtomicUsize,
}

impl Observer for Count {
    fn rejected(&self, _: &str, _: &Rejection) {
        self.rejected.fetch_add(1, Ordering::SeqCst);
    }
    fn error(&self, _: &str, kind: &'static str) {
        self.errors.lock().unwrap().push(kind);
    }
    fn feed_ok(&self, _: &str) {
        self.ok.fetch_add(1, Ordering::SeqCst);
    }
}

fn record(i: usize) -> String {
    format!(
        r#"{{"id": "s{i}", "cursor": "{i}", "inputs": [{{"name": "x", "shape": [1, 2, 2], "datatype": "FP32", "data": [{i}, 0, 0, 0]}}]}}"#
    )
}

/// A feed of 10 records in pages of 4: the first request fails with 500, then pages follow the
/// `after` cursor; record 5 is malformed (a rejection) and a garbage line is a protocol error.
fn serve(listener: TcpListener, requests: Arc<AtomicUsize>) {
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { return };
        let mut first = String::new();
        let mut r = BufReader::new(s.try_clone().unwrap());
        r.read_line(&mut first).unwrap();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                break;
            }
        }
        let n = requests.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            let _ = s.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            continue;
        }
        let after: usize = first
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.split("after=").nth(1))
            .and_then(|v| v.parse::<usize>().ok().map(|v| v + 1))
            .unwrap_or(0);
        let mut body = String::new();
        for i in after..(after + 4).min(10) {
            if i == 5 {
                body.push_str(r#"{"id": "s5", "cursor": "5", "inputs": [{"name": "x", "shape": [7], "datatype": "FP32", "data": [1]}]}"#);
            } else {
                body.push_str(&record(i));
            }
            body.push('\n');
            if i == 2 {
                body.push_str("garbage\n\n");
            }
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(body.as_bytes());
    }
}

#[test]
fn polls_pages_retries_and_resumes_from_the_journal() {
    let d = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/feed", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let r2 = requests.clone();
    std::thread::spawn(move || serve(listener, r2));
    let mut cfg = HttpConfig::new(url, d.path().join("state"));
    cfg.name = "feed".into();
    cfg.poll_interval_ms = 50;
    cfg.backoff_initial_ms = 10;
    cfg.backoff_max_ms = 20;
    assert_eq!(cfg.validate(), vec![]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();

    let run = |stop_after: usize| {
        let (src, totals) = HttpSource::open(&cfg).unwrap();
        let (tx, mut rx) = mpsc::channel(2);
        let (stop, stop_rx) = watch::channel(false);
        let obs = Arc::new(Count::default());
        let o: Arc<dyn Observer> = obs.clone();
        let task = rt.spawn(src.run(opts(), tx, o, stop_rx));
        let mut ids = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while ids.len() < stop_after {
            assert!(Instant::now() < deadline, "only {ids:?} within 20 s");
            match rx.try_recv() {
                Ok(d) => {
                    ids.push(d.input.clone());
                    d.ack.finish(&Outcome::Scored { samples: 1 }).unwrap();
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        stop.send(true).unwrap();
        drop(rx);
        rt.block_on(task).unwrap();
        (ids, totals, obs)
    };
    // First run: five samples, then stop (s5 is rejected, not delivered).
    let (ids, totals, obs) = run(5);
    assert_eq!(totals, Totals::default());
    assert_eq!(ids, ["feed/s0", "feed/s1", "feed/s2", "feed/s3", "feed/s4"]);
    let errors = obs.errors.lock().unwrap().clone();
    assert!(errors.contains(&"status") && errors.contains(&"protocol"), "{errors:?}");
    assert!(obs.ok.load(Ordering::SeqCst) >= 1);
    // Second run: resumes after the journal's position, nothing twice, nothing skipped.
    let (ids, totals, obs) = run(4);
    assert_eq!(totals.scored_samples, 5);
    assert_eq!(ids, ["feed/s6", "feed/s7", "feed/s8", "feed/s9"]);
    assert_eq!(obs.rejected.load(Ordering::SeqCst) + totals.rejected_total() as usize, 1);
    let (_, totals) = HttpSource::open(&cfg).unwrap();
    assert_eq!((totals.scored_samples, totals.rejected_by(RejectReason::Shape)), (9, 1));
}

/// A snapshot feed without cursors: the last three records, with an ETag; `If-None-Match` → 304.
fn serve_snapshot(listener: TcpListener, len: Arc<AtomicUsize>, seen: Arc<Mutex<Vec<Option<String>>>>) {
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { return };
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut if_none_match = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("if-none-match")
            {
                if_none_match = Some(v.trim().to_string());
            }
        }
        seen.lock().unwrap().push(if_none_match.clone());
        let n = len.load(Ordering::SeqCst);
        let etag = format!("\"v{n}\"");
        if if_none_match.as_deref() == Some(etag.as_str()) {
            let _ = s.write_all(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n");
            continue;
        }
        let body: String = (n.saturating_sub(3)..n)
            .map(|i| {
                format!(
                    "{{\"id\": \"r{i}\", \"inputs\": [{{\"name\": \"x\", \"shape\": [1, 2, 2], \"datatype\": \"UINT8\", \"data\": [{i}, 0, 0, 0]}}]}}\n"
                )
            })
            .collect();
        let head = format!(
            "HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(body.as_bytes());
    }
}

#[test]
fn a_snapshot_feed_is_deduplicated_and_its_etag_remembered() {
    let d = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/snapshot", listener.local_addr().unwrap());
    let len = Arc::new(AtomicUsize::new(3));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (l2, s2) = (len.clone(), seen.clone());
    std::thread::spawn(move || serve_snapshot(listener, l2, s2));
    let mut cfg = HttpConfig::new(url, d.path().join("state"));
    cfg.poll_interval_ms = 30;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let start = || {
        let (src, _) = HttpSource::open(&cfg).unwrap();
        let (tx, rx) = mpsc::channel(8);
        let (stop, stop_rx) = watch::channel(false);
        let task = rt.spawn(src.run(opts(), tx, Arc::new(crate::sources::LogObserver), stop_rx));
        (rx, stop, task)
    };
    let take = |rx: &mut mpsc::Receiver<Delivery>, n: usize, within: Duration| {
        let mut ids = Vec::new();
        let deadline = Instant::now() + within;
        while ids.len() < n && Instant::now() < deadline {
            match rx.try_recv() {
                Ok(d) => {
                    ids.push(d.input.clone());
                    d.ack.finish(&Outcome::Scored { samples: 1 }).unwrap();
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        ids
    };
    let (mut rx, stop, task) = start();
    assert_eq!(take(&mut rx, 3, Duration::from_secs(10)), ["http/r0", "http/r1", "http/r2"]);
    let wait_requests = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_requests(3);
    assert_eq!(seen.lock().unwrap()[1].as_deref(), Some("\"v3\""), "the ETag is sent back");
    // A new record: the snapshot now holds r1, r2 (finished: skipped) and r3.
    len.store(4, Ordering::SeqCst);
    assert_eq!(take(&mut rx, 1, Duration::from_secs(10)), ["http/r3"]);
    std::thread::sleep(Duration::from_millis(100));
    assert!(rx.try_recv().is_err(), "a duplicate was delivered");
    stop.send(true).unwrap();
    rt.block_on(task).unwrap();
    // Restarted: the remembered ETag makes the first request a 304, and nothing is delivered again.
    let before = seen.lock().unwrap().len();
    let (mut rx, stop, task) = start();
    wait_requests(before + 2);
    assert_eq!(seen.lock().unwrap()[before].as_deref(), Some("\"v4\""));
    assert!(take(&mut rx, 1, Duration::from_millis(300)).is_empty());
    stop.send(true).unwrap();
    rt.block_on(task).unwrap();
    let (_, totals) = HttpSource::open(&cfg).unwrap();
    assert_eq!(totals.scored_samples, 4);
}
