//! The CPU budget end to end (`engine.max_samples_per_sec`): the real binary on the demo model, fed
//! over its ingest endpoint at ten times its budget. It must accept every request (202, never 503:
//! the queue is not full), score about its budget, count the rest as skipped, and score a uniform
//! sample: the scores of the samples it scored and of those it skipped are one distribution (KS
//! two-sample, each of the four (layer, score) pairs at the 0.1 % level).
//!
//! The traffic is built so that a biased sampler fails: every 100 ms a burst of ten clean digits
//! followed by ten inverted ones (1 − x), whose scores differ (checked below). A sampler that admits
//! the head of each burst (a token bucket) would score mostly clean digits.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agent::config::Config;
use agent::drift::ks_two_sample;
use agent::engine::Engine;
use ndarray::{Array4, Axis, concatenate};
use support::{Daemon, DemoConfig, LogsOnFailure, MODEL, request, v2_body, wait_until};

const BUDGET: f64 = 20.0;
const RATE: u64 = 200;
const SECS: u64 = 10;

/// User + system CPU seconds of a process so far (`/proc/PID/stat`, clock ticks of 1/100 s).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

#[test]
fn ten_times_overload_keeps_the_budget_and_an_unbiased_sample() {
    let d = tempfile::tempdir().unwrap();
    let cfg = DemoConfig {
        model: "methods = [\"vanilla\"]\nsmoothing_points = 1".into(),
        engine: format!(
            "providers = [\"cpu\"]\nbatch_size = 8\nmax_batch_delay_ms = 5\nmax_samples_per_sec = {BUDGET}"
        ),
        window: "samples = 64".into(),
        rest: "[[sources]]\ntype = \"ingest\"\nname = \"mirror\"\n\n[logging]\n\
               level = \"info,agent::daemon::engine_loop=debug\"\nformat = \"json\"\n"
            .into(),
        ..DemoConfig::default()
    }
    .write(d.path());
    let log = d.path().join("agent.log");
    let _logs = LogsOnFailure(vec![log.clone()]);
    let agent = Daemon::start(&cfg, &log);
    agent.wait_ready();

    let clean = support::digits();
    let inverted = clean.mapv(|v| 1.0 - v);
    let n = clean.len_of(Axis(0));
    let path = format!("/v2/models/{MODEL}/infer");
    let json = [("Content-Type", "application/json")];
    // Bodies prepared up front, so that the client keeps its pace.
    let bodies: Vec<(String, String)> = (0..2 * n)
        .map(|k| {
            let (kind, x) = if k < n { ('c', &clean) } else { ('i', &inverted) };
            let j = k % n;
            (format!("{kind}{j}"), v2_body("", x.index_axis(Axis(0), j)))
        })
        .collect();

    let mut codes: HashMap<u16, u64> = HashMap::new();
    let mut posted = 0u64;
    let t0 = Instant::now();
    let mut scored_at = Vec::new();
    let cpu0 = cpu_secs(agent.proc.pid());
    for burst in 0..SECS * 10 {
        let due = t0 + Duration::from_millis(burst * 100);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if burst % 10 == 0 {
            scored_at.push((Instant::now(), agent.scored()));
        }
        for i in 0..RATE / 10 {
            // Ten clean, then ten inverted digits, a different digit each time.
            let j = ((burst * RATE / 20 + i % 10) as usize) % n;
            let k = if i < RATE / 20 { j } else { n + j };
            let (name, body) = &bodies[k];
            let body = body.replacen(r#""id":"""#, &format!(r#""id":"{name}-{posted}""#), 1);
            let r = request(agent.port, "POST", &path, &json, body.as_bytes()).expect("an answer");
            *codes.entry(r.code).or_default() += 1;
            posted += 1;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs(agent.proc.pid()) - cpu0;
    scored_at.push((Instant::now(), agent.scored()));
    let offered = posted as f64 / elapsed;
    assert_eq!(codes.get(&202).copied(), Some(posted), "answers: {codes:?}");
    assert!(offered > 5.0 * BUDGET, "the client offered only {offered:.0} samples/s");

    // Every posted sample ends scored or skipped.
    let skipped = || agent.metric("agent_samples_skipped_total", &[("model", MODEL), ("reason", "budget")]);
    wait_until("every sample scored or skipped", Duration::from_secs(60), &log, || {
        Some(()).filter(|_| agent.scored() + skipped().unwrap_or(0.0) >= posted as f64)
    });
    let (scored, skipped) = (agent.scored(), skipped().unwrap());
    assert_eq!(scored + skipped, posted as f64);

    // The scoring rate once the first period has measured the arrival rate (from second 2 on).
    let (ta, sa) = scored_at[2];
    let (tb, sb) = *scored_at.last().unwrap();
    let rate = (sb - sa) / (tb - ta).as_secs_f64();
    eprintln!(
        "offered {offered:.0} samples/s ({:.1}× the budget of {BUDGET}/s): scored {scored}, skipped {skipped}; \
         scoring rate from second 2 on {rate:.1}/s; the agent used {:.0} % of a core",
        offered / BUDGET,
        100.0 * cpu / elapsed
    );
    assert!(rate > 0.6 * BUDGET && rate < 1.4 * BUDGET, "scored {rate:.1}/s under a budget of {BUDGET}/s");

    // Which samples were scored: the engine logs each scored input.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut scored_ids: Vec<usize> = Vec::new();
    for line in text.lines().filter(|l| l.contains(r#""message":"scored""#)) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let input = v["fields"]["input"].as_str().unwrap();
        let id = input.trim_start_matches("mirror/");
        let (kind, rest) = id.split_at(1);
        let j: usize = rest.split('-').next().unwrap().parse().unwrap();
        scored_ids.push(if kind == "c" { j } else { n + j });
    }
    assert_eq!(scored_ids.len() as f64, scored, "scored inputs in the log");

    // Each distinct input's scores, from the engine in this process (same configuration).
    let config = Config::load(&cfg).unwrap();
    let mut engine = Engine::new(&config.to_engine_spec()).unwrap();
    let all: Array4<f32> = concatenate(Axis(0), &[clean.view(), inverted.view()]).unwrap();
    let scores = engine.score_batch(all.into_dyn().view()).unwrap();
    // How often each input was posted: the multiset of posted inputs, minus the scored ones, is
    // the skipped ones.
    let mut posted_count = vec![0u64; 2 * n];
    let mut p = 0u64;
    for burst in 0..SECS * 10 {
        for i in 0..RATE / 10 {
            let j = ((burst * RATE / 20 + i % 10) as usize) % n;
            posted_count[if i < RATE / 20 { j } else { n + j }] += 1;
            p += 1;
        }
    }
    assert_eq!(p, posted);
    let mut skipped_count = posted_count.clone();
    for &k in &scored_ids {
        skipped_count[k] -= 1;
    }
    let clean_share = scored_ids.iter().filter(|&&k| k < n).count() as f64 / scored_ids.len() as f64;
    eprintln!("clean digits among the scored: {:.1} % (posted: 50 %)", 100.0 * clean_share);
    let mut separating = 0;
    for layer in 0..2 {
        for (what, pick) in [
            (
                "noise",
                (|s: &agent::scores::LayerScores| s.noise_score) as fn(&agent::scores::LayerScores) -> f64,
            ),
            ("variance", |s| s.variance_score),
        ] {
            let value = |k: usize| pick(&scores[k].scores[layer]);
            let mut a: Vec<f64> = scored_ids.iter().map(|&k| value(k)).collect();
            let mut b: Vec<f64> = skipped_count
                .iter()
                .enumerate()
                .flat_map(|(k, &c)| (0..c).map(move |_| k))
                .map(value)
                .collect();
            a.sort_by(f64::total_cmp);
            b.sort_by(f64::total_cmp);
            let ks = ks_two_sample(&a, &b).unwrap();
            eprintln!(
                "layer {layer} {what}: scored vs skipped D = {:.3}, p = {:.3}",
                ks.statistic, ks.p_value
            );
            assert!(
                ks.p_value > 1e-3,
                "layer {layer} {what} score: the scored samples are not a uniform sample"
            );
            let mut c: Vec<f64> = (0..n).map(value).collect();
            let mut i: Vec<f64> = (n..2 * n).map(value).collect();
            c.sort_by(f64::total_cmp);
            i.sort_by(f64::total_cmp);
            let sep = ks_two_sample(&c, &i).unwrap();
            eprintln!(
                "layer {layer} {what}: clean vs inverted D = {:.3}, p = {:.2e}",
                sep.statistic, sep.p_value
            );
            separating += usize::from(sep.p_value < 1e-6);
        }
    }
    // The test can tell: clean and inverted digits score differently on some pairs (a constant
    // score, as the second layer's noise score with one smoothing point, tells nothing).
    assert!(
        separating >= 2,
        "clean and inverted digits must score differently for the test to mean anything"
    );
    // And directly: the scored samples are half clean, as posted (4 standard errors), where a
    // sampler admitting the head of each burst would score mostly clean ones.
    let se = (0.25 / scored_ids.len() as f64).sqrt();
    assert!((clean_share - 0.5).abs() < 4.0 * se, "clean share {clean_share:.3} ± {se:.3}");
}
