//! Replays the fuzzers' committed inputs through the same target functions the libFuzzer binaries
//! run (`fuzz/src/targets.rs`), under the same allocation cap (`fuzz/src/cap.rs`): the minimised
//! corpus (`fuzz/corpus/T`), the hand-made seeds (`fuzz/seeds/T`) and every crash found and fixed
//! (`fuzz/regressions/T`). A panic fails the test; an allocation beyond the cap aborts it. Runs in
//! seconds; the fuzzing itself is `fuzz/run.sh` (figures in fuzz/README.md).

#[path = "../fuzz/src/cap.rs"]
mod cap;
#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::PathBuf;

#[global_allocator]
static ALLOC: cap::Capped = cap::Capped;

/// Runs `target` over every committed input of `name`; returns how many there were.
fn replay(name: &str, target: fn(&[u8])) -> usize {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for kind in ["seeds", "corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(name)) else { continue };
        let mut files: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            eprintln!("{name}: {}", f.display());
            target(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no committed inputs for the {name} target");
    n
}

#[test]
fn npy() {
    replay("npy", targets::npy);
}

#[test]
fn npz() {
    replay("npz", targets::npz);
}

#[test]
fn image() {
    replay("image", targets::image);
}

#[test]
fn v2() {
    replay("v2", targets::v2);
}

#[test]
fn feed() {
    replay("feed", targets::feed);
}

#[test]
fn http() {
    replay("http", targets::http);
}

#[test]
fn config() {
    replay("config", targets::config);
}

/// The compiler's probe runs ONNX Runtime, as in every other test that loads a model.
#[test]
fn onnx() {
    replay("onnx", targets::onnx);
}
