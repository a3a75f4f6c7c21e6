//! Which signal sees text drift first: the paper's scores at the text demo encoder's token layers
//! against the embedding detectors, under a topic shift, two other languages, typos and boilerplate
//! spam — the protocol of `drift_signals` (shared, `drift_signals/protocol.rs`) on the text demo
//! (`config/text-demo.toml`, `models/text`). Writes `power.csv`, `first_fire.csv` and `summary.json`
//! (with the per-sample scoring cost); docs/TEXT_DRIFT.md reports them.
//!
//! ```sh
//! cargo run --release -p agent --example text_drift -- [--out docs/text_drift] [--pool 256] [--clean 1000] [--drifted 200]
//! ```
//!
//! Pools: the first `--pool` texts of `models/text/reference.jsonl` (the reference), of
//! `stream.jsonl` (the clean pool: held-out fortunes of the same eight topics), and of each file in
//! `models/text/drift/` (one shift each; made by `tools/train_text.py`).

#[path = "drift_signals/protocol.rs"]
mod protocol;

use std::path::{Path, PathBuf};

use agent::cli::report::EmbeddingModel;
use agent::config::Config;
use agent::detectors::Pca;
use agent::engine::{Engine, TextModel, TokenSample};
use agent::runtime::Provider;
use anyhow::{Context, Result, bail};
use plugins::decode::{DecodeOptions, Payload, decode_payload_file};
use protocol::{Scored, Settings, Shifted};

const SIZES: [usize; 7] = [10, 20, 30, 50, 75, 100, 200];
const SHIFTS: [(&str, &str, &str); 5] = [
    ("topic", "8 unseen fortune topics", "topic.jsonl"),
    ("language", "German fortunes", "german.jsonl"),
    ("language", "Spanish fortunes", "spanish.jsonl"),
    ("typos", "8 % of letters mistyped", "typos.jsonl"),
    ("spam", "templated boilerplate", "spam.jsonl"),
];

struct Args {
    out: PathBuf,
    pool: usize,
    clean: usize,
    drifted: usize,
    seed: u64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { out: "docs/text_drift".into(), pool: 256, clean: 1000, drifted: 200, seed: 7 };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--out" => a.out = v()?.into(),
            "--pool" => a.pool = v()?.parse()?,
            "--clean" => a.clean = v()?.parse()?,
            "--drifted" => a.drifted = v()?.parse()?,
            "--seed" => a.seed = v()?.parse()?,
            _ => bail!("unknown option {k}"),
        }
    }
    Ok(a)
}

fn load(path: &Path, opts: &DecodeOptions, n: usize) -> Result<Vec<TokenSample>> {
    match decode_payload_file(path, &path.display().to_string(), opts)? {
        Payload::Tokens(mut t) => {
            t.truncate(n);
            Ok(t)
        }
        Payload::Dense(_) => bail!("{}: not text", path.display()),
    }
}

fn score(
    engine: &mut Engine,
    forward: &mut EmbeddingModel,
    text: &TextModel,
    pca: Option<&Pca>,
    x: &[TokenSample],
) -> Result<Scored> {
    let mut scores = Vec::new();
    let mut zs = Vec::new();
    for chunk in x.chunks(16) {
        scores.extend(engine.score_tokens(chunk)?);
        zs.push(forward.embed_tokens(text, chunk)?);
    }
    let views: Vec<_> = zs.iter().map(|z| z.view()).collect();
    Scored::new(scores, ndarray::concatenate(ndarray::Axis(0), &views)?, pca)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let cfg = Config::load(Path::new("config/text-demo.toml"))?;
    let mut spec = cfg.to_engine_spec();
    spec.runtime.providers = Some(vec![Provider::Cpu]);
    let mut engine = Engine::new(&spec)?;
    let text = engine.text_model().cloned().context("config/text-demo.toml is not a text model")?;
    let mut forward = EmbeddingModel::new(&spec, &text.inputs[0].name)?;
    let opts = DecodeOptions { tokens: cfg.token_options()?, ..Default::default() };
    let dir = Path::new("models/text");
    let reference = load(&dir.join("reference.jsonl"), &opts, args.pool)?;
    let stream = load(&dir.join("stream.jsonl"), &opts, args.pool)?;

    let t0 = std::time::Instant::now();
    let ref_scored = score(&mut engine, &mut forward, &text, None, &reference)?;
    let per_sample_ms = 1000.0 * t0.elapsed().as_secs_f64() / reference.len() as f64;
    let pca = protocol::fit_pca(ref_scored.z.view())?;
    let clean = score(&mut engine, &mut forward, &text, Some(&pca), &stream)?;
    let mut shifted = Vec::new();
    let mut tokens = vec![("reference", mean_len(&reference)), ("clean", mean_len(&stream))];
    for (name, severity, file) in SHIFTS {
        let x = load(&dir.join("drift").join(file), &opts, args.pool)?;
        tokens.push((severity, mean_len(&x)));
        let scored = score(&mut engine, &mut forward, &text, Some(&pca), &x)?;
        let pool = (0..x.len()).collect();
        shifted.push(Shifted { name: name.into(), severity: severity.into(), scored, pool });
    }
    let n = reference.len() + stream.len() + shifted.iter().map(|s| s.pool.len()).sum::<usize>();
    eprintln!(
        "scored {n} texts in {:.1} s ({per_sample_ms:.1} ms per sample, scores and embedding)",
        t0.elapsed().as_secs_f64()
    );
    let settings =
        Settings { started: t0, sizes: &SIZES, clean: args.clean, drifted: args.drifted, seed: args.seed };
    let mut summary =
        protocol::run(engine.keys(), &ref_scored, &pca, &clean, &shifted, &settings, &args.out)?;
    summary["max_length"] = text.length.into();
    summary["reference_ms_per_sample"] = per_sample_ms.into();
    summary["mean_tokens"] = tokens.iter().map(|(k, v)| ((*k).to_string(), serde_json::json!(v))).collect();
    std::fs::write(args.out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

fn mean_len(x: &[TokenSample]) -> f64 {
    x.iter().map(|s| s.len() as f64).sum::<f64>() / x.len().max(1) as f64
}
