//! Cost of the embedding drift detectors (`agent::detectors`) at a realistic size: a reference of
//! 1000 and a window of 1000 embeddings of `D = 2048`, on one thread. Prints one Markdown row per
//! detector (fit and test time, the median of `--repeats` runs) for docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo run --release -p agent --example detectors_bench -- [--reference 1000] [--window 1000] [--dim 2048] [--repeats 3]
//! ```
//!
//! The data: `z = W·g + 0.5·ε` with 64 latent Gaussian factors `g` (so the PCA has structure to find)
//! and the window shifted by 0.05 in every component — the timing does not depend on the data, only
//! on the sizes.

use std::time::Instant;

use agent::detectors::{
    Centroid, CentroidConfig, KsShare, KsShareConfig, Mmd, MmdConfig, OnlineDetectors, Pca, PcaConfig,
};
use ndarray::Array2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number")))
        .unwrap_or(default)
}

fn data(n: usize, d: usize, w: &Array2<f32>, shift: f32, seed: u64) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = || -> f32 { StandardNormal.sample(&mut rng) };
    let g = Array2::from_shape_fn((n, w.nrows()), |_| normal());
    let noise = Array2::from_shape_fn((n, d), |_| 0.5 * normal());
    g.dot(w) + noise + shift
}

fn median_secs(repeats: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let (n_ref, n_win, d, repeats) =
        (arg("--reference", 1000), arg("--window", 1000), arg("--dim", 2048), arg("--repeats", 3));
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let w = Array2::from_shape_fn((64, d), |_| -> f32 { StandardNormal.sample(&mut rng) });
    let reference = data(n_ref, d, &w, 0.0, 2);
    let window = data(n_win, d, &w, 0.05, 3);
    let (r, x) = (reference.view(), window.view());
    println!("reference {n_ref}, window {n_win}, D = {d}, median of {repeats} runs, one thread\n");
    println!("| detector | settings | fit (s) | test (s) | statistic | p-value | drift |");
    println!("|---|---|---|---|---|---|---|");

    let cfg = MmdConfig::default();
    let settings = format!("{} rows per side, {} permutations", cfg.max_samples, cfg.permutations);
    let fit = median_secs(repeats, || drop(Mmd::fit(r, cfg.clone()).unwrap()));
    let det = Mmd::fit(r, cfg).unwrap();
    let test = median_secs(repeats, || drop(det.test(x).unwrap()));
    let res = det.test(x).unwrap();
    row("embedding_mmd", &settings, fit, test, res.statistic, res.p_value, res.drift);

    let cfg = KsShareConfig::default();
    let fit = median_secs(repeats, || drop(KsShare::fit(r, cfg.clone()).unwrap()));
    let det = KsShare::fit(r, cfg).unwrap();
    let test = median_secs(repeats, || drop(det.test(x).unwrap()));
    let res = det.test(x).unwrap();
    row("embedding_ks_share", "all rows, BH at 0.05", fit, test, res.statistic, res.p_value, res.drift);

    let cfg = CentroidConfig::default();
    let settings = format!("{} resamples, reference ≤ {}", cfg.resamples, cfg.max_reference);
    let fit = median_secs(repeats, || drop(Centroid::fit(r, cfg.clone()).unwrap()));
    let det = Centroid::fit(r, cfg).unwrap();
    let test = median_secs(repeats, || drop(det.test(x).unwrap()));
    let null = det.null(n_win);
    let cached = median_secs(repeats, || drop(det.test_with(x, &null).unwrap()));
    let [_cosine, euc] = det.test(x).unwrap();
    row(
        "embedding_centroid (both; Euclidean shown)",
        &settings,
        fit,
        test,
        euc.statistic,
        euc.p_value,
        euc.drift,
    );
    row(
        "embedding_centroid, null kept",
        "same, null cached per window size",
        fit,
        cached,
        euc.statistic,
        euc.p_value,
        euc.drift,
    );

    let cfg = PcaConfig::default();
    let fit = median_secs(repeats, || drop(Pca::fit(r, cfg.clone()).unwrap()));
    let det = Pca::fit(r, cfg.clone()).unwrap();
    let (k, explained) = det.components();
    let settings =
        format!("{k} components ({:.0} % of variance), {} resamples", 100.0 * explained, cfg.resamples);
    let test = median_secs(repeats, || drop(det.test(x).unwrap()));
    let res = det.test(x).unwrap();
    row("embedding_pca", &settings, fit, test, res.statistic, res.p_value, res.drift);

    // What the daemon runs at each interval with the shipped `[detectors]` (MMD, centroid, PCA at
    // alpha 0.01, 200 permutations): fitted once at start-up, then one run per interval on a full
    // window of fixed size (the centroid null kept from the first run).
    let settings = agent::config::DetectorsConfig::default().online();
    let fit = median_secs(repeats, || drop(OnlineDetectors::fit(r, &settings).unwrap()));
    let mut det = OnlineDetectors::fit(r, &settings).unwrap();
    det.test(x).unwrap();
    let test = median_secs(repeats, || drop(det.test(x).unwrap()));
    let names =
        format!("{:?}, alpha {}, {} permutations", settings.enabled, settings.alpha, settings.permutations);
    let res = det.test(x).unwrap();
    let drifted = res.iter().filter(|r| r.drift).count();
    println!(
        "| daemon run (`[detectors]` defaults) | {names} | {fit:.3} | {test:.3} | — | — | {drifted} of {} |",
        res.len()
    );
}

fn row(name: &str, settings: &str, fit: f64, test: f64, stat: f64, p: Option<f64>, drift: bool) {
    let p = p.map(|p| format!("{p:.3}")).unwrap_or_else(|| "—".into());
    println!("| {name} | {settings} | {fit:.3} | {test:.3} | {stat:.4} | {p} | {drift} |");
}
