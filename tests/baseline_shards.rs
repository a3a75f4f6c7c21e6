//! A baseline built by four workers (`agent baseline --shard I/4`, then `agent baseline merge`)
//! equals the one a single process builds from the same reference: the real binary on the demo
//! model, with a reference of batch files of unequal sizes. The merge refuses an incomplete or mixed
//! set of partials, and the daemon's check refuses a partial as a baseline.
//!
//! Tolerance: the counts and hashes are equal; means, standard deviations and the reservoirs (all 40
//! scores, the reservoir being larger) agree to a relative 1e-5. A shard scores its samples in other
//! engine batches than the single process, and ONNX Runtime's float32 kernels may round differently
//! per batch shape; the merge itself is exact to float64 rounding (`drift::merge`'s unit tests).
//! That the merged reservoir is a uniform sample when it is smaller than the union is tested there.

mod support;

use std::path::Path;

use agent::drift::{Baseline, ScoreSummary};
use ndarray::{Array4, Axis, s};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use support::{DemoConfig, agent_ok, baseline_shards, read_baseline, repo_root, run_agent};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1e-12)
}

fn same(a: &ScoreSummary, b: &ScoreSummary, what: &str) {
    assert_eq!(a.count, b.count, "{what}: count");
    assert_eq!(a.non_finite, b.non_finite, "{what}: non-finite");
    assert!(close(a.mean, b.mean), "{what}: mean {} vs {}", a.mean, b.mean);
    assert!(close(a.std, b.std), "{what}: std {} vs {}", a.std, b.std);
    assert_eq!(a.reservoir.len(), b.reservoir.len(), "{what}: reservoir size");
    for (x, y) in a.reservoir.iter().zip(&b.reservoir) {
        assert!(close(*x, *y), "{what}: reservoir {x} vs {y}");
    }
}

#[test]
fn four_shards_merged_equal_one_process() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // 40 reference digits in files of 7, 13, 1 and 19 samples.
    let f = std::fs::File::open(repo_root().join("models/digits/reference.npy")).unwrap();
    let reference = Array4::<f32>::read_npy(f).unwrap();
    let refdir = dir.join("reference");
    std::fs::create_dir(&refdir).unwrap();
    let mut at = 0;
    for (i, len) in [7, 13, 1, 19].into_iter().enumerate() {
        let part = reference.slice(s![at..at + len, .., .., ..]).to_owned();
        part.write_npy(std::fs::File::create(refdir.join(format!("part-{i}.npy"))).unwrap()).unwrap();
        at += len;
    }
    assert!(reference.len_of(Axis(0)) >= at);
    let cfg = demo_config(dir, 2).write(dir);
    std::fs::create_dir(dir.join("inbox")).unwrap();
    let (c, r) = (cfg.to_str().unwrap(), refdir.to_str().unwrap());

    let whole = dir.join("whole.json");
    agent_ok(
        run_agent(&["baseline", "--config", c, "--reference", r, "--out", whole.to_str().unwrap()]),
        "single process",
    );
    let mut partials = Vec::new();
    for (i, (p, out)) in baseline_shards(c, r, dir, 4).into_iter().enumerate() {
        assert!(out.contains(&format!("shard {i}/4; 10 samples")), "{out}");
        partials.push(p);
    }
    let merged = dir.join("merged.json");
    // The order of the partials does not matter.
    let mut args = vec!["baseline", "merge"];
    args.extend(partials.iter().rev().map(String::as_str));
    args.extend(["--out", merged.to_str().unwrap()]);
    let out = agent_ok(run_agent(&args), "the merge");
    assert!(out.contains("40 samples from 4 partials"), "{out}");

    let (a, b) = (read_baseline(&merged), read_baseline(&whole));
    assert_eq!(a.shard, None);
    assert_eq!(a.meta.model_sha256, b.meta.model_sha256);
    assert_eq!(a.meta.settings_hash, b.meta.settings_hash);
    assert_eq!(a.reservoir_size, b.reservoir_size);
    assert_eq!(a.entries.len(), 4);
    for (x, y) in a.entries.iter().zip(&b.entries) {
        assert_eq!((&x.layer, x.method, x.noise_benchmark), (&y.layer, y.method, y.noise_benchmark));
        same(&x.noise_score, &y.noise_score, &format!("{} {} noise", x.layer, x.method.as_str()));
        same(&x.variance_score, &y.variance_score, &format!("{} {} variance", x.layer, x.method.as_str()));
    }
    // The reference embeddings (for the embedding detectors, on by default): all 40 fit in the
    // reservoir, so the merged sample holds the same rows as the single process's, in another order.
    let rows = |b: &Baseline| {
        let e = b.embeddings.as_ref().expect("reference embeddings");
        assert_eq!((e.count, e.dim, e.rows.len()), (40, 32, 40));
        let mut r = e.rows.clone();
        r.sort_by(|p, q| p.partial_cmp(q).unwrap());
        r
    };
    for (x, y) in rows(&a).iter().zip(&rows(&b)) {
        assert!(x.iter().zip(y).all(|(u, v)| close(f64::from(*u), f64::from(*v))), "{x:?} vs {y:?}");
    }

    // The merged baseline is usable; a partial is refused, naming what it is.
    std::fs::copy(&merged, dir.join("baseline.json")).unwrap();
    let out = run_agent(&["check", "--config", c]);
    assert!(out.status.success(), "check with the merged baseline: {}", String::from_utf8_lossy(&out.stdout));
    std::fs::copy(&partials[1], dir.join("baseline.json")).unwrap();
    let out = run_agent(&["check", "--config", c]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && text.contains("shard 1/4 of a sharded build"), "{text}");

    // Three of four partials, or two copies of one: refused, naming the shard.
    let o = merged.to_str().unwrap();
    let out = run_agent(&["baseline", "merge", &partials[0], &partials[1], &partials[2], "--out", o]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("shard 3/4 missing"), "{err}");
    let out =
        run_agent(&["baseline", "merge", &partials[0], &partials[0], &partials[2], &partials[3], "--out", o]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("shard 0/4 is given twice"), "{err}");
    // A partial of other settings (another smoothing) is refused by its settings hash.
    let other = demo_config(dir, 3);
    let odir = dir.join("other");
    std::fs::create_dir(&odir).unwrap();
    let ocfg = other.write(&odir);
    let p3 = odir.join("shard-3.json");
    agent_ok(
        run_agent(&[
            "baseline",
            "--config",
            ocfg.to_str().unwrap(),
            "--reference",
            r,
            "--out",
            p3.to_str().unwrap(),
            "--shard",
            "3/4",
        ]),
        "a shard of other settings",
    );
    let out = run_agent(&[
        "baseline",
        "merge",
        &partials[0],
        &partials[1],
        &partials[2],
        p3.to_str().unwrap(),
        "--out",
        o,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("partial 4 (3/4) has settings hash"), "{err}");
}

/// The demo configuration with vanilla and Grad-CAM maps, `points` smoothing points, a CPU engine,
/// and the baseline file and a dir source in `dir`.
fn demo_config(dir: &Path, points: usize) -> DemoConfig {
    DemoConfig {
        model: format!("methods = [\"vanilla\", \"gradcam\"]\nsmoothing_points = {points}"),
        engine: "providers = [\"cpu\"]\nbatch_size = 4".into(),
        baseline: format!("path = \"{}\"", dir.join("baseline.json").display()),
        rest: format!(
            "[[sources]]\ntype = \"dir\"\nname = \"inbox\"\npath = \"{}\"\n",
            dir.join("inbox").display()
        ),
        ..DemoConfig::default()
    }
}
