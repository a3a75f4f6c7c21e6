use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;
use tokio::sync::{mpsc, watch};

use super::*;
use crate::decode::{RejectReason, Rejection};

#[derive(Default)]
struct Count {
    rejected: AtomicUsize,
    errors: AtomicUsize,
}

impl Observer for Count {
    fn rejected(&self, _: &str, _: &Rejection) {
        self.rejected.fetch_add(1, Ordering::SeqCst);
    }
    fn error(&self, _: &str, _: &'static str) {
        self.errors.fetch_add(1, Ordering::SeqCst);
    }
}

fn put(dir: &Path, name: &str, v: f32) {
    // The producer protocol: write a .tmp file, then rename.
    let tmp = dir.join(format!("{name}.tmp"));
    ArrayD::<f32>::from_elem(IxDyn(&[1, 2, 2]), v).write_npy(std::fs::File::create(&tmp).unwrap()).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn opts() -> DecodeOptions {
    DecodeOptions { input_shape: vec![1, 2, 2], ..Default::default() }
}

struct Running {
    rx: mpsc::Receiver<Delivery>,
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
    observer: Arc<Count>,
}

fn start(cfg: &DirConfig) -> (Running, Totals) {
    let (src, totals) = DirSource::open(cfg).unwrap();
    let (tx, rx) = mpsc::channel(2);
    let (stop, stop_rx) = watch::channel(false);
    let observer = Arc::new(Count::default());
    let obs: Arc<dyn Observer> = observer.clone();
    let thread = std::thread::spawn(move || src.run(opts(), tx, obs, stop_rx));
    (Running { rx, stop, thread, observer }, totals)
}

fn recv(r: &mut Running) -> Delivery {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match r.rx.try_recv() {
            Ok(d) => return d,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("no delivery within 10 s: {e}"),
        }
    }
}

fn stop(r: Running) {
    r.stop.send(true).unwrap();
    drop(r.rx);
    r.thread.join().unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn wait_for(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn candidates_skip_tmp_and_hidden() {
    assert!(is_candidate("a.npy"));
    assert!(!is_candidate("a.npy.tmp"));
    assert!(!is_candidate(".a.npy"));
}

#[test]
fn scored_files_go_to_done_rejected_ones_beside_a_reason() {
    for method in [WatchMethod::Notify, WatchMethod::Poll] {
        let d = tempfile::tempdir().unwrap();
        let cfg = DirConfig { method, poll_interval_ms: 50, ..DirConfig::new(d.path()) };
        let (mut r, totals) = start(&cfg);
        assert_eq!(totals, Totals::default());
        put(d.path(), "a.npy", 0.5);
        std::fs::write(d.path().join("bad.npy"), b"garbage").unwrap();
        std::fs::write(d.path().join("ignored.npy.tmp"), b"half written").unwrap();
        std::fs::write(d.path().join(".hidden"), b"x").unwrap();
        let got = recv(&mut r);
        assert_eq!(got.input, "a.npy");
        assert_eq!(got.batch.as_dense().unwrap().shape(), &[1, 1, 2, 2]);
        got.ack.finish(&Outcome::Scored { samples: 1 }).unwrap();
        wait_for(|| r.observer.rejected.load(Ordering::SeqCst) == 1);
        assert_eq!(names(&cfg.done_dir()), vec!["a.npy"]);
        assert_eq!(names(&cfg.rejected_dir()), vec!["bad.npy", "bad.npy.reason.txt"]);
        let why = std::fs::read_to_string(cfg.rejected_dir().join("bad.npy.reason.txt")).unwrap();
        assert!(why.starts_with("reason: decode\nbad.npy: "), "{why}");
        assert_eq!(names(d.path()), vec![".hidden", "ignored.npy.tmp"]);
        assert!(names(&cfg.processing_dir()).is_empty());
        stop(r);
        // The ledger carries the totals into the next start.
        let (_, totals) = DirSource::open(&cfg).unwrap();
        assert_eq!(totals.scored_samples, 1);
        assert_eq!(totals.rejected_by(RejectReason::Decode), 1);
    }
}

#[test]
fn leftovers_are_rescanned_and_redelivered_on_start() {
    let d = tempfile::tempdir().unwrap();
    let cfg = DirConfig::new(d.path());
    // Dropped while the agent was down.
    put(d.path(), "early.npy", 0.1);
    // Claimed but never acknowledged before a crash.
    std::fs::create_dir_all(cfg.processing_dir()).unwrap();
    put(&cfg.processing_dir(), "old-000001~claimed.npy", 0.2);
    let (mut r, _) = start(&cfg);
    let first = recv(&mut r);
    assert_eq!(first.input, "claimed.npy");
    first.ack.finish(&Outcome::Scored { samples: 1 }).unwrap();
    let second = recv(&mut r);
    assert_eq!(second.input, "early.npy");
    second.ack.finish(&Outcome::Scored { samples: 1 }).unwrap();
    stop(r);
    assert_eq!(names(&cfg.done_dir()), vec!["claimed.npy", "early.npy"]);
}

#[test]
fn finished_but_unmoved_files_are_moved_not_counted_twice() {
    let d = tempfile::tempdir().unwrap();
    let cfg = DirConfig::new(d.path());
    let (mut r, _) = start(&cfg);
    put(d.path(), "x.npy", 0.3);
    let got = recv(&mut r);
    // Simulate a crash between the ledger write and the move: write the ledger line only.
    let claim = names(&cfg.processing_dir()).pop().unwrap();
    stop(r);
    let (src, _) = DirSource::open(&cfg).unwrap();
    src.shared.ledger.lock().unwrap().append(&claim, &Outcome::Scored { samples: 1 }).unwrap();
    drop(src);
    drop(got);
    let (src, totals) = DirSource::open(&cfg).unwrap();
    assert_eq!(totals.scored_samples, 1);
    assert_eq!(names(&cfg.done_dir()), vec!["x.npy"]);
    assert!(names(&cfg.processing_dir()).is_empty());
    drop(src);
    // And reopening again keeps the count (compaction carried it over).
    let (_, totals) = DirSource::open(&cfg).unwrap();
    assert_eq!(totals.scored_samples, 1);
}

#[test]
fn a_torn_ledger_line_is_ignored() {
    let d = tempfile::tempdir().unwrap();
    let cfg = DirConfig::new(d.path());
    drop(DirSource::open(&cfg).unwrap());
    let ledger = cfg.state_dir().join("ledger");
    let mut text = std::fs::read_to_string(&ledger).unwrap();
    text.push_str("S\tabc~y.npy\t1\nS\tdef~z.n");
    std::fs::write(&ledger, text).unwrap();
    let (_, totals) = DirSource::open(&cfg).unwrap();
    assert_eq!(totals.scored_inputs, 1);
}

#[test]
fn validate_names_a_missing_directory() {
    let cfg =
        DirConfig { poll_interval_ms: 0, method: WatchMethod::Poll, ..DirConfig::new("/nonexistent/inbox") };
    let keys: Vec<String> = cfg.validate().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["path", "poll_interval_ms"]);
}

#[test]
fn png_and_jpeg_files_are_inputs_too() {
    let d = tempfile::tempdir().unwrap();
    let cfg = DirConfig::new(d.path().join("inbox"));
    std::fs::create_dir_all(&cfg.path).unwrap();
    let (mut r, _) = start(&cfg);
    for (name, format) in [("a.png", image::ImageFormat::Png), ("b.jpg", image::ImageFormat::Jpeg)] {
        let tmp = cfg.path.join(format!("{name}.tmp"));
        image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(4, 4, image::Luma([255])))
            .save_with_format(&tmp, format)
            .unwrap();
        std::fs::rename(&tmp, cfg.path.join(name)).unwrap();
        let got = recv(&mut r);
        assert_eq!(got.input, name);
        // Resized from 4×4 to the model's 2×2, grey, scaled to [0, 1].
        assert_eq!(got.batch.as_dense().unwrap().shape(), &[1, 1, 2, 2]);
        assert!(got.batch.as_dense().unwrap().iter().all(|v| (*v - 1.0).abs() < 0.02), "{:?}", got.batch);
        got.ack.finish(&Outcome::Scored { samples: 1 }).unwrap();
    }
    stop(r);
    assert_eq!(names(&cfg.done_dir()), ["a.png", "b.jpg"]);
}
