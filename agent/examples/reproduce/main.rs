//! Reproduces the paper's experiments (§4.1, §4.3, §4.4, figure 2) and the spec's estimator errors
//! (`docs/spec/scores.md#cost`) with the agent's own code: [`Engine`] (attribution graph in ONNX Runtime),
//! its
//! `score_batch`, `run_rows` and the accumulators of `agent::scores`. Writes plain CSV/JSON; the
//! figures come from `tools/plot_reproduction.py`, and `scripts/reproduce.sh` runs both.
//!
//! ```sh
//! cargo run --release -p agent --example reproduce -- --out docs/reproduction \
//!     --resnet target/repro-models/resnet18.onnx
//! ```
//!
//! Options: `--out DIR` (default `docs/reproduction`), `--resnet PATH` (the random-weight ResNet-18
//! from `tests/models/build_models.py --only resnet18`; without it the ResNet parts are skipped),
//! `--drift-n N` digits for the drift experiment (default 128), `--smooth-s S` points of the smoothed
//! estimator (default 50), `--resnet-n N` inputs for the ResNet experiments (default 4),
//! `--threads T` ONNX Runtime intra-op threads (default 2).
//!
//! Every number is computed here from a seeded run; nothing is typed in.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use agent::compiler::{self, CompileOptions};
use agent::engine::{Engine, EngineSpec, LayerSpec, SampleScores};
use agent::scores::{
    self, Aggregation, Method, NoiseReference, ScoreAccumulator, choose_dims, embedding_aggregate,
    hutchinson_probes, hutchinson_variance,
};
use anyhow::{Context, Result, bail};
use ndarray::{Array2, Array3, Array4, ArrayD, ArrayView3, ArrayViewD, Axis, IxDyn, s};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde_json::{Value, json};

mod curves;
mod drift;
mod estimators;
mod inputs;
mod resnet;
mod stats;
mod timing;

use curves::*;
use drift::*;
use estimators::*;
use inputs::*;
use resnet::*;
use stats::*;
use timing::*;

const ENCODER: &str = "models/digits/encoder.onnx";
const UNTRAINED: &str = "models/digits/encoder_untrained.onnx";
const REFERENCE: &str = "models/digits/reference.npy";
const ALEXNET: &str = "tests/models/alexnet_small.onnx";
const POOL1: &str = "/pool1/MaxPool_output_0";
const POOL2: &str = "/pool2/MaxPool_output_0";
const DIGIT_LAYERS: [(&str, &str); 2] = [("conv2_in", POOL1), ("block2_out", POOL2)];
const RESNET_LAYERS: [(&str, &str); 4] = [
    ("layer1", "/layer1/layer1.1/relu_1/Relu_output_0"),
    ("layer2", "/layer2/layer2.1/relu_1/Relu_output_0"),
    ("layer3", "/layer3/layer3.1/relu_1/Relu_output_0"),
    ("layer4", "/layer4/layer4.1/relu_1/Relu_output_0"),
];
const ALEXNET_LAYERS: [(&str, &str); 2] = [("pool1", "pool1"), ("relu5", "relu5")];
const LAMBDAS: [f32; 10] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
/// Seeds: which reference digits, the drift noise, the input subsets of the random models.
const DIGIT_SUBSET_SEED: u64 = 20240;
const DRIFT_SEED: u64 = 4400;

struct Args {
    out: PathBuf,
    resnet: Option<PathBuf>,
    drift_n: usize,
    smooth_s: usize,
    resnet_n: usize,
    threads: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        out: PathBuf::from("docs/reproduction"),
        resnet: None,
        drift_n: 128,
        smooth_s: 50,
        resnet_n: 4,
        threads: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => a.out = PathBuf::from(val()?),
            "--resnet" => a.resnet = Some(PathBuf::from(val()?)),
            "--drift-n" => a.drift_n = val()?.parse()?,
            "--smooth-s" => a.smooth_s = val()?.parse()?,
            "--resnet-n" => a.resnet_n = val()?.parse()?,
            "--threads" => a.threads = val()?.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)?;
    let started = Instant::now();
    let mut summary = serde_json::Map::new();
    summary.insert("run".into(), run_info(&args, "start"));

    let reference = load_digits()?;
    eprintln!("[reproduce] drift (§4.4) …");
    drift(&args, &reference)?;
    summary.insert("drift".into(), json!("drift.json"));
    eprintln!("[reproduce] digit score curves (§4.1, §4.3) …");
    let mut curves = CurveTable::default();
    summary.insert("digit_curves".into(), digit_curves(&args, &reference, &mut curves)?);
    eprintln!("[reproduce] alexnet_small (random weights) …");
    summary.insert("alexnet_small".into(), alexnet_curves(&args, &reference, &mut curves)?);
    eprintln!("[reproduce] digit estimator errors (docs/spec/scores.md#cost) …");
    let mut est = EstimatorTable::default();
    summary.insert("digit_estimators".into(), digit_estimators(&args, &reference, &mut est)?);
    eprintln!("[reproduce] digit timing …");
    let mut timing = Vec::new();
    digit_timing(&args, &reference, &mut timing)?;
    if let Some(resnet) = args.resnet.clone() {
        eprintln!("[reproduce] ResNet-18 (random weights): curves, estimators, timing …");
        summary.insert(
            "resnet18".into(),
            resnet18(&args, &resnet, &reference, &mut curves, &mut est, &mut timing)?,
        );
    } else {
        eprintln!("[reproduce] no --resnet given: ResNet-18 parts skipped");
    }
    curves.write(&args.out.join("curves.csv"))?;
    est.write(&args.out.join("estimators.csv"))?;
    write_timing(&args.out.join("timing.csv"), &timing)?;
    summary.insert("timing".into(), Value::Array(timing.iter().map(|t| t.json()).collect()));
    let mut end = run_info(&args, "end");
    end["elapsed_s"] = json!(started.elapsed().as_secs_f64());
    summary.insert("run_end".into(), end);
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&Value::Object(summary))? + "\n",
    )?;
    eprintln!("[reproduce] done in {:.0} s; data in {}", started.elapsed().as_secs_f64(), args.out.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn run_info(args: &Args, when: &str) -> Value {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({
        "when": when, "loadavg": load.trim(), "commit": commit,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "threads": args.threads, "drift_n": args.drift_n, "smooth_s": args.smooth_s, "resnet_n": args.resnet_n,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}
