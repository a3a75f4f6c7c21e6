//! The daemon end to end on a text model: the real binary, the text demo encoder
//! (`models/text/encoder.onnx`, int64 `input_ids` + `attention_mask`) with its own `tokenizer.json`,
//! a baseline built from `.jsonl` reference texts, texts arriving as `.txt`/`.jsonl` files in a
//! watched directory and as `{"text": …}` posts to `/api/v1/samples`, bad text rejected with a reason,
//! and the drift gauges moving when the stream turns German. Every wait is bounded.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

const TEXT_MODEL: &str = "fortunes";

fn lines(path: &str, skip: usize, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    text.lines().skip(skip).take(n).map(str::to_string).collect()
}

fn put(inbox: &Path, name: &str, body: &str) {
    let tmp = inbox.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(tmp, inbox.join(name)).unwrap();
}

fn scored(text: &str) -> f64 {
    metric(text, "agent_samples_scored_total", &[("model", TEXT_MODEL)]).unwrap_or(-1.0)
}

#[test]
fn daemon_scores_text_from_files_and_posts_and_sees_a_language_shift() {
    let d = tempfile::tempdir().unwrap();
    let inbox = d.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let reference = d.path().join("reference.jsonl");
    std::fs::write(&reference, lines("models/text/reference.jsonl", 0, 24).join("\n") + "\n").unwrap();
    let root = repo_root();
    // max_length 32 keeps the compiled graph small (texts are truncated to it), so the test stays
    // within seconds on two cores.
    let cfg = format!(
        r#"[model]
name = "{TEXT_MODEL}"
path = "{model}"
embedding = "embedding"
layers = [
  {{ name = "embeddings", tensor = "/ln/LayerNormalization_output_0", layout = "tokens" }},
  {{ name = "block1", tensor = "/blocks.0/ln2/LayerNormalization_output_0", layout = "tokens" }},
]
methods = ["vanilla"]
max_length = 32

[tokenizer]
path = "{tokenizer}"

[engine]
providers = ["cpu"]
batch_size = 8
max_batch_delay_ms = 10

[baseline]
path = "{dir}/baseline.json"
reference_dir = "{reference}"

[window]
samples = 16

[[sources]]
type = "dir"
name = "inbox"
path = "{inbox}"

[[sources]]
type = "ingest"

[logging]
level = "info"
"#,
        model = root.join("models/text/encoder.onnx").display(),
        tokenizer = root.join("models/text/tokenizer.json").display(),
        dir = d.path().display(),
        reference = reference.display(),
        inbox = inbox.display(),
    );
    let cfg_path = d.path().join("agent.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let log = d.path().join("agent.log");
    let _logs = LogsOnFailure(vec![log.clone()]);
    let daemon = Daemon::start(&cfg_path, &log);
    let port = daemon.port;
    wait_until("/healthz", Duration::from_secs(60), &log, || get(port, "/healthz").filter(|r| r.code == 200));
    daemon.wait_ready();
    assert!(d.path().join("baseline.json").is_file(), "the baseline was built from the .jsonl reference");

    // English held-out fortunes: 12 as a .jsonl file, 2 as a .txt file, 2 posted.
    let clean = lines("models/text/stream.jsonl", 0, 14);
    put(&inbox, "clean.jsonl", &(clean[..12].join("\n") + "\n"));
    let plain: Vec<String> = clean[12..]
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_string())
        .collect();
    put(&inbox, "clean.txt", &(plain.join("\n") + "\n\n"));
    for (i, t) in lines("models/text/stream.jsonl", 14, 2).iter().enumerate() {
        let r =
            request(port, "POST", "/api/v1/samples", &[("Content-Type", "application/json")], t.as_bytes())
                .unwrap();
        assert_eq!(r.code, 202, "post {i}: {}", r.body);
        assert_eq!(r.json()["samples"], 1);
    }
    wait_until("16 clean texts scored", Duration::from_secs(300), &log, || {
        Some(()).filter(|_| scored(&daemon.metrics()) == 16.0)
    });
    let text = daemon.metrics();
    let keys = [("embeddings", "vanilla"), ("block1", "vanilla")];
    let mut before = Vec::new();
    for (layer, method) in keys {
        let l = [("model", TEXT_MODEL), ("layer", layer), ("method", method)];
        let ns = metric(&text, "agent_noise_score", &l).expect("noise score");
        assert!((0.0..=1.0).contains(&ns), "{layer}: NS {ns}");
        before.push(metric(&text, "agent_noise_score_drift", &l).expect("drift gauge"));
    }

    // German fortunes fill the next window: the drift gauges move.
    let german = lines("models/text/drift/german.jsonl", 0, 16);
    put(&inbox, "german.jsonl", &(german.join("\n") + "\n"));
    wait_until("16 German texts scored", Duration::from_secs(300), &log, || {
        Some(()).filter(|_| scored(&daemon.metrics()) == 32.0)
    });
    let text = daemon.metrics();
    let mut moved = 0.0f64;
    for ((layer, method), b) in keys.iter().zip(&before) {
        let l = [("model", TEXT_MODEL), ("layer", *layer), ("method", *method)];
        let after = metric(&text, "agent_noise_score_drift", &l).unwrap();
        eprintln!("{layer} {method}: ΔNS English {b:.4}, German {after:.4}");
        moved = moved.max((after - b).abs());
    }
    assert!(moved > 0.02, "the drift gauges did not move:\n{text}");

    // Bad text is rejected with a reason; the agent stays healthy.
    std::fs::write(inbox.join("latin1.txt"), b"Gr\xfc\xdfe aus K\xf6ln\n").unwrap();
    put(&inbox, "no-text.jsonl", "{\"txt\": \"typo in the key\"}\n");
    put(&inbox, "image.png", "not a text model's input");
    let r = request(port, "POST", "/api/v1/samples", &[], br#"{"text": 42}"#).unwrap();
    assert_eq!((r.code, r.reason()), (400, "decode".to_string()), "{}", r.body);
    let rejected = inbox.join("rejected");
    wait_until("3 rejected files", Duration::from_secs(60), &log, || {
        Some(()).filter(|_| std::fs::read_dir(&rejected).map(|r| r.count()).unwrap_or(0) == 6)
    });
    let text = daemon.metrics();
    assert_eq!(metric(&text, "agent_samples_rejected_total", &[("reason", "decode")]), Some(3.0));
    assert_eq!(metric(&text, "agent_samples_rejected_total", &[("reason", "unsupported")]), Some(1.0));
    let why = std::fs::read_to_string(rejected.join("latin1.txt.reason.txt")).unwrap();
    assert!(why.contains("latin1.txt") && why.contains("UTF-8"), "{why}");
    let why = std::fs::read_to_string(rejected.join("no-text.jsonl.reason.txt")).unwrap();
    assert!(why.contains("line 1") && why.contains("\"text\""), "{why}");
    assert_eq!(get(port, "/healthz").map(|r| r.code), Some(200));
    assert_eq!(scored(&daemon.metrics()), 32.0);
}

/// `agent score`, `agent explain` and `agent report` take text files as they take images.
#[test]
fn score_explain_and_report_take_text_files() {
    let d = tempfile::tempdir().unwrap();
    let root = repo_root();
    let demo = std::fs::read_to_string(root.join("config/text-demo.toml")).unwrap();
    // The demo configuration with absolute paths and a short compiled length.
    let cfg = demo
        .replace("max_length = 128", "max_length = 32")
        .replace("length_buckets = [32, 64]", "")
        .replace("\"models/", &format!("\"{}/models/", root.display()));
    let cfg_path = d.path().join("text.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let input = d.path().join("two.txt");
    std::fs::write(&input, "Never trust a computer you cannot throw.\n<b>Grüße & \"quotes\"</b>\n").unwrap();
    let agent = env!("CARGO_BIN_EXE_agent");
    let cfg_arg = cfg_path.to_str().unwrap();

    let out = std::process::Command::new(agent)
        .args(["score", "--config", cfg_arg, "--json", input.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // 2 samples × 2 layers × 2 methods.
    assert_eq!(rows.len(), 8);
    assert!(rows.iter().all(|r| (0.0..=1.0).contains(&r["noise_score"].as_f64().unwrap())));
    assert_eq!(rows.iter().filter(|r| r["sample"] == 1).count(), 4);

    let html = d.path().join("explain.html");
    let out = std::process::Command::new(agent)
        .args(["explain", "--config", cfg_arg, input.to_str().unwrap(), "--sample", "1", "--out"])
        .arg(&html)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!doctype html>") && page.contains("block1 / actgrad"), "{page}");
    // Every token is shown, escaped, with its value; the markup in the text stays text.
    assert!(page.contains("(15 tokens)"), "{page}");
    assert_eq!(page.matches("class=\"tok\"").count(), 4 * 15, "{page}");
    assert!(page.contains(">&lt;</span>") && page.contains(">&amp;</span>") && !page.contains("<b>"));
    assert!(!page.contains("src=") && !page.contains("<script"), "self-contained");

    let reference = d.path().join("ref.jsonl");
    let current = d.path().join("de.jsonl");
    let take = |p: &str, n: usize| {
        std::fs::read_to_string(root.join(p)).unwrap().lines().take(n).collect::<Vec<_>>().join("\n") + "\n"
    };
    std::fs::write(&reference, take("models/text/reference.jsonl", 12)).unwrap();
    std::fs::write(&current, take("models/text/drift/german.jsonl", 12)).unwrap();
    let out = std::process::Command::new(agent)
        .args(["report", "--config", cfg_arg, "--json", "--permutations", "50", "--reference"])
        .arg(&reference)
        .arg("--current")
        .arg(&current)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((doc["reference_samples"].as_u64(), doc["current_samples"].as_u64()), (Some(12), Some(12)));
    let detectors = doc["detectors"].as_array().unwrap();
    assert!(detectors.iter().any(|r| r["name"] == "embedding_mmd"), "{doc}");
    assert!(detectors.iter().any(|r| r["name"] == "noise_score_ks" && r["layer"] == "block1"), "{doc}");
}
