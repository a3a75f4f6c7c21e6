//! What the daemon's maps (`[maps]`, `daemon::maps`) cost next to scoring, on a configuration
//! (default: `config/demo.toml` on the CPU): CPU time per sample of `Engine::score_batch` and of
//! `Engine::embedding_maps` on the demo's held-out digits, the overhead that follows for
//! `maps.every` = 1, 2, 4, 10, and the time of one window update (add + expire of a map per pair).
//!
//! ```text
//! cargo build --release -p agent --example maps_bench
//! target/release/examples/maps_bench [CONFIG] [--batch 16] [--secs 5]
//! ```
//!
//! Each figure is process CPU time (all threads, /proc/self/stat) per sample, repeated until `--secs`
//! have passed; on a shared machine wall time would measure the other work.

use std::path::{Path, PathBuf};
use std::time::Instant;

use agent::config::Config;
use agent::drift::MapWindow;
use agent::engine::Engine;
use ndarray::{Array4, Axis};
use ndarray_npy::ReadNpyExt;

#[path = "common/proc_stats.rs"]
mod proc_stats;
use proc_stats::cpu_seconds;

/// CPU seconds per call of `f`, repeated for at least `secs` of wall time.
fn per_call(secs: f64, mut f: impl FnMut()) -> f64 {
    f();
    let (w0, c0) = (Instant::now(), cpu_seconds());
    let mut n = 0u64;
    while n == 0 || w0.elapsed().as_secs_f64() < secs {
        f();
        n += 1;
    }
    (cpu_seconds() - c0) / n as f64
}

fn main() -> anyhow::Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: f64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let config = args
        .iter()
        .find(|a| !a.starts_with("--") && a.parse::<f64>().is_err())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("config/demo.toml"));
    let (batch, secs) = (flag("--batch", 16.0) as usize, flag("--secs", 5.0));
    // Relative paths in the shipped configurations are relative to the repository root.
    std::env::set_current_dir(&repo)?;
    let mut cfg = Config::load(&config)?;
    cfg.engine.runtime.providers = Some(vec![agent::runtime::Provider::Cpu]);
    let mut engine = Engine::new(&cfg.to_engine_spec())?;
    let digits = Array4::<f32>::read_npy(std::fs::File::open(repo.join("models/digits/stream.npy"))?)?;
    let x = digits.slice_axis(Axis(0), (0..batch).into()).to_owned().into_dyn();
    let score = per_call(secs, || {
        engine.score_batch(x.view()).unwrap();
    }) / batch as f64;
    let maps = per_call(secs, || {
        engine.embedding_maps(x.view()).unwrap();
    }) / batch as f64;
    let one = engine.embedding_maps(x.slice_axis(Axis(0), (0..1).into()))?.remove(0);
    let cells: usize = one.iter().map(|m| m.len()).sum();
    let mut window = MapWindow::new(one.len(), Some(1000), None, 256)?;
    let mut t = 0.0;
    let update = per_call(secs.min(1.0), || {
        t += 1.0;
        window.record(t, Some(one.clone())).unwrap();
    });
    println!(
        "config {} ({} pairs, {} map cells per sample), batch {batch}",
        config.display(),
        one.len(),
        cells
    );
    println!("score_batch     {:8.3} ms CPU / sample", score * 1e3);
    println!("embedding_maps  {:8.3} ms CPU / sample ({:.2}× scoring)", maps * 1e3, maps / score);
    for every in [1u32, 2, 4, 10] {
        println!(
            "maps.every = {every:2}: +{:5.1} % CPU over scoring",
            100.0 * maps / score / f64::from(every)
        );
    }
    println!(
        "window update   {:8.3} µs CPU / mapped sample (add + expire, window of 256 maps)",
        update * 1e6
    );
    Ok(())
}
