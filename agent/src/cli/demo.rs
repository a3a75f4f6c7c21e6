//! `agent demo-feed`: the demo's producer. Streams real digits into the watched directory — clean
//! ones first, then drifted ones `clip(x + λε, 0, 1)` with λ rising (docs/spec/scores.md#drift) — and, when
//! the agent's address is given, prints its drift gauges after each step, so drift can be watched rising.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use ndarray::{Array3, Axis};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

#[derive(Debug, Clone, Args)]
pub struct DemoFeedArgs {
    /// The watched directory (the demo's `demo-run/inbox`).
    #[arg(long, default_value = "demo-run/inbox")]
    pub inbox: PathBuf,
    /// Samples to stream: a `[N, 1, 28, 28]` float32 `.npy` in [0, 1].
    #[arg(long, default_value = "models/digits/stream.npy")]
    pub data: PathBuf,
    /// Files written per second.
    #[arg(long, default_value_t = 25.0)]
    pub rate: f64,
    /// Clean samples before the drift starts.
    #[arg(long, default_value_t = 150)]
    pub clean: usize,
    /// Samples per drift step.
    #[arg(long, default_value_t = 100)]
    pub per_step: usize,
    /// Drift strengths λ, in order.
    #[arg(long, value_delimiter = ',', default_value = "0.3,0.6,0.9")]
    pub lambdas: Vec<f32>,
    /// Seed of the drift noise ε.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The agent's address (`host:port`), to print its gauges after each step.
    #[arg(long)]
    pub agent: Option<String>,
}

pub fn run(args: &DemoFeedArgs) -> Result<()> {
    let data: ndarray::ArrayD<f32> = ndarray_npy::read_npy(&args.data)
        .with_context(|| format!("reading {} (a float32 .npy)", args.data.display()))?;
    if data.ndim() != 4 || data.shape()[0] == 0 {
        bail!("{} should hold a batch [N, C, H, W]; it has shape {:?}", args.data.display(), data.shape());
    }
    std::fs::create_dir_all(&args.inbox).with_context(|| format!("creating {}", args.inbox.display()))?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let normal = Normal::new(0.0f32, 1.0).expect("a valid normal");
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let mut next = Instant::now();
    let mut counter = 0usize;
    let mut steps: Vec<(f32, usize)> = vec![(0.0, args.clean)];
    steps.extend(args.lambdas.iter().map(|&l| (l, args.per_step)));
    for (lambda, n) in steps {
        println!("streaming {n} {} digits into {}", describe(lambda), args.inbox.display());
        for _ in 0..n {
            let x = data.index_axis(Axis(0), counter % data.shape()[0]).to_owned();
            let x: Array3<f32> = x.into_dimensionality()?;
            let x = if lambda > 0.0 {
                x.mapv(|v| (v + lambda * normal.sample(&mut rng)).clamp(0.0, 1.0))
            } else {
                x
            };
            let name = if lambda > 0.0 {
                format!("drift{lambda:.1}-{counter:05}.npy")
            } else {
                format!("clean-{counter:05}.npy")
            };
            put(&args.inbox, &name, &x)?;
            counter += 1;
            next += period;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        if let Some(agent) = &args.agent {
            // Let the engine catch up with the step before reading the window.
            std::thread::sleep(Duration::from_secs(3));
            match scrape(agent) {
                Ok(text) => print_gauges(&text),
                Err(e) => println!("  (could not read http://{agent}/metrics: {e})"),
            }
        }
    }
    println!(
        "done: {counter} files; watch http://{}/ for the scores",
        args.agent.as_deref().unwrap_or("127.0.0.1:9717")
    );
    Ok(())
}

fn describe(lambda: f32) -> String {
    if lambda > 0.0 { format!("drifted (λ = {lambda})") } else { "clean".into() }
}

/// Written as `name.tmp` and renamed, the protocol the `dir` source expects from producers.
fn put(inbox: &Path, name: &str, x: &Array3<f32>) -> Result<()> {
    let tmp = inbox.join(format!("{name}.tmp"));
    ndarray_npy::write_npy(&tmp, x).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, inbox.join(name))?;
    Ok(())
}

fn scrape(agent: &str) -> Result<String> {
    let mut s = TcpStream::connect(agent)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {agent}\r\n\r\n").as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// The drift gauges of one scrape as a table, one row per (layer, method): the relative drifts and
/// the KS p-values (two significant digits: at λ = 0.9 they reach 10⁻⁴⁰ and beyond).
fn print_gauges(text: &str) {
    let table = DriftTable::parse(text);
    if table.rows.is_empty() {
        println!("  (no drift gauges yet: the window is empty)");
        return;
    }
    println!("  window: {} samples", table.window.map_or("?".into(), |w| format!("{w:.0}")));
    println!(
        "  {:<10} {:<8} {:>8} {:>8} {:>11} {:>11}",
        "layer", "method", "ΔNS", "ΔVS", "KS p (NS)", "KS p (VS)"
    );
    for ((layer, method), r) in &table.rows {
        println!(
            "  {layer:<10} {method:<8} {:>8} {:>8} {:>11} {:>11}",
            signed(r.noise_drift),
            signed(r.variance_drift),
            pvalue(r.ks_noise),
            pvalue(r.ks_variance)
        );
    }
}

#[derive(Default)]
struct DriftRow {
    noise_drift: Option<f64>,
    variance_drift: Option<f64>,
    ks_noise: Option<f64>,
    ks_variance: Option<f64>,
}

#[derive(Default)]
struct DriftTable {
    window: Option<f64>,
    rows: std::collections::BTreeMap<(String, String), DriftRow>,
}

impl DriftTable {
    /// Reads the gauges it shows from Prometheus text; other lines are ignored.
    fn parse(text: &str) -> DriftTable {
        let mut t = DriftTable::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let label = |key: &str| {
                labels.split(',').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k == key).then(|| v.trim_end_matches('}').trim_matches('"').to_string())
                })
            };
            if name == "agent_window_samples" {
                t.window = Some(value);
                continue;
            }
            let (Some(layer), Some(method)) = (label("layer"), label("method")) else { continue };
            let row = t.rows.entry((layer, method)).or_default();
            match (name, label("score").as_deref()) {
                ("agent_noise_score_drift", _) => row.noise_drift = Some(value),
                ("agent_variance_score_drift", _) => row.variance_drift = Some(value),
                ("agent_drift_ks_pvalue", Some("noise")) => row.ks_noise = Some(value),
                ("agent_drift_ks_pvalue", Some("variance")) => row.ks_variance = Some(value),
                _ => {}
            }
        }
        // Rows without any drift gauge (other per-layer metrics) are not shown.
        t.rows.retain(|_, r| r.noise_drift.is_some() || r.variance_drift.is_some());
        t
    }
}

fn signed(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:+.3}"))
}

fn pvalue(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(p) if p >= 0.01 => format!("{p:.2}"),
        Some(p) => format!("{p:.1e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_table_reads_the_gauges_of_a_scrape() {
        let text = "# HELP agent_noise_score_drift x\n\
            agent_noise_score_drift{layer=\"block2\",method=\"actgrad\",model=\"digits\"} 0.173\n\
            agent_variance_score_drift{layer=\"block2\",method=\"actgrad\",model=\"digits\"} -0.392\n\
            agent_drift_ks_pvalue{layer=\"block2\",method=\"actgrad\",model=\"digits\",score=\"noise\"} 4.1e-36\n\
            agent_drift_ks_pvalue{layer=\"block2\",method=\"actgrad\",model=\"digits\",score=\"variance\"} 0.5\n\
            agent_noise_benchmark{layer=\"conv2_in\",method=\"vanilla\",model=\"digits\"} 0.2\n\
            agent_window_samples{model=\"digits\"} 100\n";
        let t = DriftTable::parse(text);
        assert_eq!(t.window, Some(100.0));
        assert_eq!(t.rows.len(), 1, "the benchmark-only row is not a drift row");
        let r = &t.rows[&("block2".to_string(), "actgrad".to_string())];
        assert_eq!((r.noise_drift, r.variance_drift), (Some(0.173), Some(-0.392)));
        assert_eq!((r.ks_noise, r.ks_variance), (Some(4.1e-36), Some(0.5)));
        assert_eq!(
            (signed(r.noise_drift), pvalue(r.ks_noise), pvalue(r.ks_variance)),
            ("+0.173".into(), "4.1e-36".into(), "0.50".into())
        );
    }
}
