use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::runtime::Provider;
use crate::scores::Aggregation;
use plugins::sources::http::FeedMode;

/// A valid configuration whose files exist under `dir`.
fn valid(dir: &Path) -> String {
    std::fs::write(dir.join("m.onnx"), b"not really onnx").unwrap();
    std::fs::create_dir_all(dir.join("inbox")).unwrap();
    std::fs::create_dir_all(dir.join("ref")).unwrap();
    format!(
        r#"
[model]
name = "digits"
path = "{d}/m.onnx"
embedding = "embedding"
layers = [{{ name = "conv2_in", tensor = "/pool1/MaxPool_output_0" }}, {{ name = "block2", tensor = "/pool2/MaxPool_output_0" }}]

[baseline]
path = "{d}/baseline.json"
reference_dir = "{d}/ref"

[window]
samples = 100

[[sources]]
type = "dir"
path = "{d}/inbox"
"#,
        d = dir.display()
    )
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn parses_with_defaults() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), &valid(d.path()));
    let cfg = Config::load_with_env(&p, HashMap::new()).unwrap();
    assert_eq!(cfg.validate(), vec![]);
    assert_eq!(cfg.model.score.smoothing_points(), 16);
    assert_eq!(cfg.to_engine_spec().score.smoothing(), 0.5);
    // `samples = 1` alone is the plain gradient, not one random point with σ = 0.5.
    let one =
        Config::load_with_env(&p, HashMap::from([("AGENT__MODEL__SAMPLES".into(), "1".into())])).unwrap();
    assert_eq!(
        (one.to_engine_spec().score.smoothing_points(), one.to_engine_spec().score.smoothing()),
        (1, 0.0)
    );
    assert_eq!(cfg.model.score.channel_agg(), Aggregation::Abs);
    assert_eq!(cfg.model.score.embedding_agg(), Aggregation::Var);
    assert_eq!(cfg.engine.runtime.providers(), [Provider::Cuda, Provider::Cpu]);
    assert_eq!(cfg.noise.n_noise(), 4);
    assert_eq!(cfg.server.listen, "127.0.0.1:9717");
    assert_eq!(cfg.model.layers[0].tensor, "/pool1/MaxPool_output_0");
    let spec = cfg.to_engine_spec();
    assert_eq!(spec.layers.len(), 2);
    assert_eq!(spec.model_name, "digits");
    assert_eq!(spec.score.smoothing_points(), 16);
    match &cfg.sources[0] {
        SourceConfig::Dir(dir) => assert_eq!(dir.name, "dir"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn http_and_ingest_sources_with_defaults() {
    let d = tempfile::tempdir().unwrap();
    let text = valid(d.path())
        + &format!(
            r#"
[[sources]]
type = "http"
name = "feed"
url = "http://127.0.0.1:8080/feed"
state_dir = "{d}/feed-state"

[[sources]]
type = "ingest"
models = ["mnist"]
"#,
            d = d.path().display()
        );
    let cfg = Config::load_with_env(&write(d.path(), &text), HashMap::new()).unwrap();
    assert_eq!(cfg.validate(), vec![]);
    let SourceConfig::Http(h) = &cfg.sources[1] else { panic!("{:?}", cfg.sources[1]) };
    assert_eq!((h.mode, h.poll_interval_ms, h.backoff_max_ms), (FeedMode::Poll, 1000, 30_000));
    let SourceConfig::Ingest(i) = &cfg.sources[2] else { panic!("{:?}", cfg.sources[2]) };
    assert_eq!((i.name.as_str(), i.max_body_bytes, i.retry_after_secs), ("ingest", 8 << 20, 1));
    assert_eq!(cfg.model.preprocessing.layout, Layout::Nchw);
}

#[test]
fn http_ingest_and_image_problems_are_all_listed() {
    let d = tempfile::tempdir().unwrap();
    let text = valid(d.path()).replace(
        "[baseline]",
        r#"[model.preprocessing]
resize = [0, 32]
crop = [40, 40]
channels = 4
max_image_pixels = 0
layout = "nhwc"

[baseline]"#,
    ) + r#"
[[sources]]
type = "http"
name = "feed"
url = "ftp://example.com/feed"
state_dir = ""
header_timeout_ms = 0
backoff_initial_ms = 100
backoff_max_ms = 10
dedupe_ids = 0

[[sources]]
type = "ingest"
max_body_bytes = 0
auth_token = ""

[[sources]]
type = "ingest"
name = "second"
"#;
    let cfg = Config::load_with_env(&write(d.path(), &text), HashMap::new()).unwrap();
    let keys: Vec<String> = cfg.validate().into_iter().map(|p| p.key).collect();
    for k in [
        "model.preprocessing.resize",
        "model.preprocessing.crop",
        "model.preprocessing.channels",
        "model.preprocessing.max_image_pixels",
        "sources[1].url",
        "sources[1].state_dir",
        "sources[1].header_timeout_ms",
        "sources[1].backoff_max_ms",
        "sources[1].dedupe_ids",
        "sources[2].max_body_bytes",
        "sources[2].auth_token",
        "sources[3]",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
    // Unknown keys of the new sources are rejected too.
    let text = valid(d.path()) + "\n[[sources]]\ntype = \"ingest\"\nmax_body_size = 3\n";
    let err = Config::load_with_env(&write(d.path(), &text), HashMap::new()).unwrap_err().to_string();
    assert!(err.contains("max_body_size"), "{err}");
}

#[test]
fn unknown_keys_are_rejected_with_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let text = valid(d.path()).replace("[window]", "[window]\nsamplez = 3");
    let p = write(d.path(), &text);
    let err = Config::load_with_env(&p, HashMap::new()).unwrap_err().to_string();
    assert!(err.contains("agent.toml"), "{err}");
    assert!(err.contains("samplez"), "{err}");
    let text = valid(d.path()).replace("type = \"dir\"", "type = \"dir\"\npoll_intervall_ms = 5");
    let err = Config::load_with_env(&write(d.path(), &text), HashMap::new()).unwrap_err().to_string();
    assert!(err.contains("poll_intervall_ms"), "{err}");
    let text = valid(d.path()).replace("type = \"dir\"", "type = \"carrier-pigeon\"");
    let err = Config::load_with_env(&write(d.path(), &text), HashMap::new()).unwrap_err().to_string();
    assert!(err.contains("carrier-pigeon"), "{err}");
}

#[test]
fn environment_overrides_keys() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), &valid(d.path()));
    let env: HashMap<String, String> = [
        ("AGENT__SERVER__LISTEN", "0.0.0.0:9999"),
        ("AGENT__ENGINE__BATCH_SIZE", "3"),
        ("AGENT__ENGINE__PROVIDERS", "cpu"),
        ("UNRELATED", "x"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cfg = Config::load_with_env(&p, env).unwrap();
    assert_eq!(cfg.server.listen, "0.0.0.0:9999");
    assert_eq!(cfg.engine.batch_size, 3);
    assert_eq!(cfg.engine.runtime.providers(), [Provider::Cpu]);
}

#[test]
fn validate_lists_every_problem() {
    let d = tempfile::tempdir().unwrap();
    let text = valid(d.path())
        .replace("m.onnx", "missing.onnx")
        .replace("tensor = \"/pool2/MaxPool_output_0\"", "tensor = \"\"")
        .replace("samples = 100", "")
        .replace("[baseline]", "[engine]\nbatch_size = 0\n\n[server]\nlisten = \"nowhere\"\n\n[baseline]")
        .replace("/inbox", "/no-inbox");
    let cfg = Config::load_with_env(&write(d.path(), &text), HashMap::new()).unwrap();
    let keys: Vec<String> = cfg.validate().into_iter().map(|p| p.key).collect();
    for k in [
        "model.path",
        "model.layers[1].tensor",
        "engine.batch_size",
        "window",
        "sources[0].path",
        "server.listen",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
    let shown = cfg.validate()[0].to_string();
    assert!(
        shown.starts_with(&format!("{}: model.path: ", d.path().join("agent.toml").display())),
        "{shown}"
    );
}

#[test]
fn shipped_configurations_parse() {
    for f in ["demo.toml", "prod.toml"] {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config").join(f);
        let cfg = Config::load_with_env(&p, HashMap::new()).unwrap_or_else(|e| panic!("{f}: {e:#}"));
        assert_eq!(cfg.model.layers.len(), 2, "{f}");
    }
}

#[test]
fn renamed_keys_still_work_with_a_deprecation() {
    let d = tempfile::tempdir().unwrap();
    let text = valid(d.path())
        .replace("embedding = \"embedding\"", "embedding = \"embedding\"\nsamples = 4\ndims = 8");
    let cfg = Config::load_with_env(&write(d.path(), &text), HashMap::new()).unwrap();
    assert_eq!((cfg.model.score.smoothing_points(), cfg.model.score.subset_components), (4, Some(8)));
    let keys: Vec<&str> = cfg.deprecated.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["model.samples", "model.dims"]);
    assert!(cfg.deprecated[0].why.contains("model.smoothing_points"), "{:?}", cfg.deprecated);
    assert_eq!(cfg.validate(), vec![]);
    // The new names carry no warning; the old one given through the environment does.
    let text = valid(d.path())
        .replace("embedding = \"embedding\"", "embedding = \"embedding\"\nsmoothing_points = 4");
    let cfg = Config::load_with_env(&write(d.path(), &text), HashMap::new()).unwrap();
    assert!(cfg.deprecated.is_empty(), "{:?}", cfg.deprecated);
    let env = HashMap::from([("AGENT__MODEL__DIMS".to_string(), "8".to_string())]);
    let cfg = Config::load_with_env(&write(d.path(), &valid(d.path())), env).unwrap();
    assert_eq!(cfg.model.score.subset_components, Some(8));
    assert_eq!(cfg.deprecated.len(), 1);
}

#[test]
fn the_http_sources_old_timeout_key_still_works_with_a_deprecation() {
    let d = tempfile::tempdir().unwrap();
    let http = |key: &str| {
        format!(
            "{}\n[[sources]]\ntype = \"http\"\nname = \"feed\"\nurl = \"http://127.0.0.1:9/feed\"\nstate_dir = \"{}\"\n{key} = 1234\n",
            valid(d.path()),
            d.path().join("feed").display()
        )
    };
    let cfg = Config::load_with_env(&write(d.path(), &http("timeout_ms")), HashMap::new()).unwrap();
    let Some(SourceConfig::Http(h)) = cfg.sources.get(1) else { panic!("{:?}", cfg.sources) };
    assert_eq!(h.header_timeout_ms, 1234);
    let keys: Vec<&str> = cfg.deprecated.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["sources[1].timeout_ms"]);
    assert!(cfg.deprecated[0].why.contains("sources[1].header_timeout_ms"), "{:?}", cfg.deprecated);
    assert_eq!(cfg.validate(), vec![]);
    // The new name carries no warning.
    let cfg = Config::load_with_env(&write(d.path(), &http("header_timeout_ms")), HashMap::new()).unwrap();
    let Some(SourceConfig::Http(h)) = cfg.sources.get(1) else { panic!("{:?}", cfg.sources) };
    assert_eq!(h.header_timeout_ms, 1234);
    assert!(cfg.deprecated.is_empty(), "{:?}", cfg.deprecated);
}

#[test]
fn limits_parse_override_and_validate() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), &valid(d.path()));
    let cfg = Config::load_with_env(&p, HashMap::new()).unwrap();
    assert_eq!(cfg.limits, plugins::limits::Limits::default());
    let text = valid(d.path()) + "\n[limits]\nmax_elements_per_file = 1000\nmax_json_depth = 8\n";
    let env = HashMap::from([("AGENT__LIMITS__MAX_DECOMPRESSED_BYTES".into(), "4096".into())]);
    let cfg = Config::load_with_env(&write(d.path(), &text), env).unwrap();
    assert_eq!(
        (cfg.limits.max_elements_per_file, cfg.limits.max_json_depth, cfg.limits.max_decompressed_bytes),
        (1000, 8, 4096)
    );
    // The decoders get them.
    assert_eq!(crate::daemon::baseline::decode_options(&cfg, &[1, 2]).unwrap().limits, cfg.limits);
    // Per sample above per file, depth beyond the parser's own limit.
    let text = valid(d.path()) + "\n[limits]\nmax_elements_per_file = 10\nmax_json_depth = 500\n";
    let cfg = Config::load_with_env(&write(d.path(), &text), HashMap::new()).unwrap();
    let keys: Vec<String> = cfg.validate().into_iter().map(|p| p.key).collect();
    assert_eq!(keys, ["limits.max_elements_per_sample", "limits.max_json_depth"]);
    let text = valid(d.path()) + "\n[limits]\nmax_pixels = 3\n";
    let err = Config::load_with_env(&write(d.path(), &text), HashMap::new()).unwrap_err().to_string();
    assert!(err.contains("max_pixels"), "{err}");
}

#[test]
fn maps_settings_default_and_are_validated() {
    let d = tempfile::tempdir().unwrap();
    let cfg = Config::load_with_env(&write(d.path(), &valid(d.path())), HashMap::new()).unwrap();
    assert_eq!(cfg.maps, MapsConfig::default());
    assert!(cfg.maps.enabled && cfg.maps.every >= 1);
    let text = valid(d.path()) + "\n[maps]\nevery = 0\nwindow_maps = 0\nreference_samples = 0\n";
    let cfg = Config::load_with_env(&write(d.path(), &text), HashMap::new()).unwrap();
    let keys: Vec<String> = cfg.validate().into_iter().map(|p| p.key).collect();
    for k in ["maps.every", "maps.window_maps", "maps.reference_samples"] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
    let text = valid(d.path()) + "\n[maps]\nevry = 2\n";
    let err = Config::load_with_env(&write(d.path(), &text), HashMap::new()).unwrap_err().to_string();
    assert!(err.contains("evry"), "{err}");
}

#[test]
fn text_keys_parse_into_the_engine_spec_and_their_problems_are_named() {
    let d = tempfile::tempdir().unwrap();
    let text = valid(d.path()).replace(
        "embedding = \"embedding\"",
        "embedding = \"embedding\"\ninput_roles = { ids_in = \"ids\", segs = \"token_types\" }\npad_id = 1\nmax_length = 64\nnoise_exclude_ids = [0, 1, 2]",
    );
    let cfg = Config::load_with_env(&write(d.path(), &text), HashMap::new()).unwrap();
    assert_eq!(cfg.validate(), vec![]);
    let t = cfg.to_engine_spec().text;
    assert_eq!(t.input_roles.get("segs"), Some(&crate::compiler::InputRole::TokenTypes));
    assert_eq!((t.pad_id(), t.max_length(), t.noise_exclude_ids()), (1, 64, vec![0, 1, 2]));
    // Through the environment too.
    let env = HashMap::from([("AGENT__MODEL__NOISE_EXCLUDE_IDS".to_string(), "5,6".to_string())]);
    let cfg = Config::load_with_env(&write(d.path(), &text), env).unwrap();
    assert_eq!(cfg.model.text.noise_exclude_ids, Some(vec![5, 6]));
    // Bad values, and an unknown key beside the flattened ones, are named.
    let bad = text.replace("max_length = 64", "max_length = 0\nvocab_size = 2");
    let cfg = Config::load_with_env(&write(d.path(), &bad), HashMap::new()).unwrap();
    let keys: Vec<String> = cfg.validate().into_iter().map(|p| p.key).collect();
    assert_eq!(keys, ["model.max_length", "model.noise_exclude_ids"]);
    let unknown = text.replace("pad_id = 1", "pad_token = 1");
    let err = Config::load_with_env(&write(d.path(), &unknown), HashMap::new()).unwrap_err();
    assert!(format!("{err:#}").contains("pad_token"), "{err:#}");
    // Smoothing on a text model is refused at validation, with the reason; the model is read for it.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models/text/encoder.onnx");
    let smoothed = valid(d.path())
        .replace(&format!("{}/m.onnx", d.path().display()), &model.display().to_string())
        .replace("embedding = \"embedding\"", "embedding = \"embedding\"\nsmoothing_points = 4");
    let cfg = Config::load_with_env(&write(d.path(), &smoothed), HashMap::new()).unwrap();
    let problems = cfg.validate();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "model.smoothing_points");
    assert!(problems[0].why.contains("token ids"), "{problems:?}");
}

#[test]
fn detectors_defaults_and_every_problem_listed() {
    use crate::detectors::DetectorKind;
    let d = tempfile::tempdir().unwrap();
    let cfg = Config::load_with_env(&write(d.path(), &valid(d.path())), HashMap::new()).unwrap();
    assert_eq!(cfg.detectors.enabled, vec![DetectorKind::Mmd, DetectorKind::Centroid, DetectorKind::Pca]);
    assert!(cfg.detectors.active() && cfg.detectors.alpha == 0.01 && cfg.detectors.reference_samples == 1000);
    let text = valid(d.path()).replace(
        "[window]",
        r#"[detectors]
enabled = ["mmd", "ks_share", "mmd"]
alpha = 0.01
permutations = 50
reference_samples = 1
mmd_max_samples = 1
min_window_samples = 30
max_window_samples = 10
interval_secs = 0

[window]"#,
    );
    let cfg = Config::load_with_env(&write(d.path(), &text), HashMap::new()).unwrap();
    let keys: Vec<String> = cfg.validate().into_iter().map(|p| format!("{}: {}", p.key, p.why)).collect();
    for expected in [
        "detectors.enabled[2]: Mmd is listed twice",
        "detectors.permutations: 50 permutations cannot give a p-value at or below alpha = 0.01 (the smallest is 1/(1 + 50)); use at least 99",
        "detectors.reference_samples: must be at least 2",
        "detectors.mmd_max_samples: must be at least 2",
        "detectors.max_window_samples: 10 is below detectors.min_window_samples (30)",
        "detectors.interval_secs: 0 is not a positive number of seconds",
    ] {
        assert!(keys.iter().any(|k| k.starts_with(expected)), "{expected:?} not in {keys:#?}");
    }
    assert_eq!(keys.len(), 6, "{keys:#?}");
    let off = valid(d.path()).replace("[window]", "[detectors]\nenabled = []\n\n[window]");
    let cfg = Config::load_with_env(&write(d.path(), &off), HashMap::new()).unwrap();
    assert!(!cfg.detectors.active() && cfg.validate().is_empty());
    let bad = valid(d.path()).replace("[window]", "[detectors]\nenabled = [\"domain\"]\n\n[window]");
    let e = Config::load_with_env(&write(d.path(), &bad), HashMap::new()).unwrap_err().to_string();
    assert!(e.contains("domain") && e.contains("detectors.enabled"), "{e}");
}

/// `[tokenizer]`: the file must exist and load, the model must take token ids, and the tokenizer's
/// ids must index its embedding table; a valid one fills the pad id and the noise exclusions.
#[test]
fn tokenizer_problems_are_listed_and_a_valid_one_fills_the_text_settings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let d = tempfile::tempdir().unwrap();
    let text_model = root.join("models/text/encoder.onnx");
    let tokenizer = root.join("models/text/tokenizer.json");
    let with = |model: &Path, tok: &Path| {
        valid(d.path()).replace(&format!("{}/m.onnx", d.path().display()), &model.display().to_string())
            + &format!("\n[tokenizer]\npath = \"{}\"\n", tok.display())
    };
    let problems = |text: String| -> Vec<Problem> {
        Config::load_with_env(&write(d.path(), &text), HashMap::new()).unwrap().validate()
    };
    let cfg =
        Config::load_with_env(&write(d.path(), &with(&text_model, &tokenizer)), HashMap::new()).unwrap();
    assert_eq!(cfg.validate(), vec![]);
    let s = cfg.text_settings();
    assert_eq!((s.pad_id, s.noise_exclude_ids), (Some(0), Some(vec![0, 1, 2, 3, 4])));
    let opts = cfg.token_options().unwrap().expect("a text model");
    assert_eq!(
        (opts.ids_input.as_str(), opts.mask_input.as_deref(), opts.vocab_size),
        ("input_ids", Some("attention_mask"), 4000)
    );

    let p = problems(with(&text_model, &d.path().join("missing.json")));
    assert!(p.len() == 1 && p[0].key == "tokenizer.path" && p[0].why.contains("does not exist"), "{p:?}");
    std::fs::write(d.path().join("bad.json"), "{}").unwrap();
    let p = problems(with(&text_model, &d.path().join("bad.json")));
    assert!(p.len() == 1 && p[0].why.contains("bad.json"), "{p:?}");
    let p = problems(with(&root.join("models/digits/encoder.onnx"), &tokenizer));
    assert!(p.len() == 1 && p[0].why.contains("float input"), "{p:?}");
    // The test fixture's vocabulary has 1000 ids, the tokenizer 4000.
    let p = problems(with(&root.join("tests/models/text/encoder.onnx"), &tokenizer));
    assert!(p.len() == 1 && p[0].why.contains("4000 tokens") && p[0].why.contains("1000"), "{p:?}");
}
