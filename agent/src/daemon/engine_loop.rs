//! The engine thread's loop: it takes deliveries off the bounded queue, micro-batches them (up to
//! `batch_size` samples, waiting at most `max_batch_delay_ms` for a batch to fill), scores them (and,
//! when the embedding detectors run, embeds them), records the scores and embeddings in the drift
//! windows and the per-sample histograms, acknowledges each input, and publishes the window gauges.

use std::time::{Duration, Instant};

use anyhow::Context;
use ndarray::{Array2, ArrayView2, Axis, concatenate};
use tokio::sync::mpsc;

use super::monitor::Monitor;
use super::publish::publish_window;
use super::state::AppState;
use super::{Scorer, unix_now};
use crate::config::Config;
use plugins::decode::{Payload, RejectReason, Rejection};
use plugins::sources::{Delivery, Outcome};

/// The engine thread's loop: micro-batches until every source is gone and the queue is empty.
pub(super) fn serve(
    mut scorer: Box<dyn Scorer>,
    mut monitor: Monitor,
    mut rx: mpsc::Receiver<Delivery>,
    rt: tokio::runtime::Handle,
    state: &AppState,
    cfg: &Config,
) {
    let model = cfg.model.name.as_str();
    let batch_size = cfg.engine.batch_size.max(1);
    let delay = Duration::from_millis(cfg.engine.max_batch_delay_ms);
    super::maps::install(&state.maps, cfg, &*scorer, monitor.baseline());
    loop {
        // Wake up at least every second so that a time-bounded window expires on the gauges too.
        let first = match rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), rx.recv()).await })
        {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(_) => {
                publish_window(state, model, &mut monitor);
                continue;
            }
        };
        let mut items = vec![first];
        let mut n: usize = items[0].batch.samples();
        let deadline = tokio::time::Instant::now() + delay;
        while n < batch_size {
            match rt.block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await }) {
                Ok(Some(d)) => {
                    n += d.batch.samples();
                    items.push(d);
                }
                _ => break,
            }
        }
        state.telemetry.queue_depth.with_label_values(&[model]).set(rx.len() as i64);
        process(&mut *scorer, &mut monitor, items, state, model, batch_size);
        publish_window(state, model, &mut monitor);
    }
    state.telemetry.queue_depth.with_label_values(&[model]).set(0);
    tracing::info!("engine queue drained");
}

/// Scores `items` together; when that fails, each alone, so one bad input does not reject the others.
fn process(
    scorer: &mut dyn Scorer,
    monitor: &mut Monitor,
    items: Vec<Delivery>,
    state: &AppState,
    model: &str,
    batch_size: usize,
) {
    let joined = join(&items).context("joining the batch's inputs");
    let embed = monitor.wants_embeddings();
    let scored = match &joined {
        Ok(b) => score_chunks(scorer, b, batch_size, embed, state, model),
        Err(e) => Err(anyhow::anyhow!("{e:#}")),
    };
    match scored {
        Ok((all, z)) => {
            if let Ok(Payload::Dense(b)) = &joined {
                super::maps::observe(&state.maps, scorer, b.view());
            }
            let mut it = all.into_iter();
            let mut row = 0;
            for d in items {
                let n = d.batch.samples();
                let scores: Vec<_> = it.by_ref().take(n).collect();
                let zs = z.as_ref().map(|z| z.slice_axis(Axis(0), (row..row + n).into()));
                row += n;
                finish_scored(monitor, d, &scores, zs, state, model);
            }
        }
        Err(e) if items.len() > 1 => {
            tracing::warn!(error = %e, "batch failed; scoring its inputs one by one");
            for d in items {
                process(scorer, monitor, vec![d], state, model, batch_size);
            }
        }
        Err(e) => {
            let d = items.into_iter().next().expect("one item");
            let r = Rejection::new(RejectReason::Engine, &d.input, format!("{e:#}"));
            tracing::warn!(source = %d.source, reason = "engine", "rejected: {}", r.message);
            if let Err(e) = d.ack.finish(&Outcome::Rejected(r)) {
                tracing::error!(source = %d.source, error = %e, "cannot acknowledge a rejected input");
                state.telemetry.source_errors.with_label_values(&[&d.source, "io"]).inc();
            }
            state.telemetry.rejected(model, RejectReason::Engine);
        }
    }
}

/// The items' samples as one payload (a queue holds one model's inputs, so one kind).
fn join(items: &[Delivery]) -> anyhow::Result<Payload> {
    if let [only] = items {
        return Ok(only.batch.clone());
    }
    let mut dense = Vec::new();
    let mut tokens = Vec::new();
    for d in items {
        match &d.batch {
            Payload::Dense(a) => dense.push(a.view()),
            Payload::Tokens(t) => tokens.extend(t.iter().cloned()),
        }
    }
    match (dense.is_empty(), tokens.is_empty()) {
        (false, true) => Ok(Payload::Dense(concatenate(Axis(0), &dense)?)),
        (true, false) => Ok(Payload::Tokens(tokens)),
        _ => anyhow::bail!("dense and token inputs in one batch"),
    }
}

/// Scores a batch `batch_size` samples per engine run, timing each run; with `embed` (the window
/// keeps embeddings), also returns the `[n, D]` embeddings (`None` when the scorer gives none).
fn score_chunks(
    scorer: &mut dyn Scorer,
    batch: &Payload,
    batch_size: usize,
    embed: bool,
    state: &AppState,
    model: &str,
) -> anyhow::Result<(Vec<crate::engine::SampleScores>, Option<Array2<f32>>)> {
    let mut out = Vec::with_capacity(batch.samples());
    let mut zs: Vec<Array2<f32>> = Vec::new();
    let t = &state.telemetry;
    super::score_payload(scorer, batch, batch_size, embed, &mut |scores, secs, z| {
        t.inference_duration_seconds.with_label_values(&[model]).observe(secs);
        t.batch_size.with_label_values(&[model]).observe(scores.len() as f64);
        if let Some(z) = z {
            zs.push(z);
        }
        out.extend(scores);
        Ok(())
    })?;
    // Embeddings only when every run gave them (the scorer has them enabled for dense inputs).
    let z = if !zs.is_empty() && zs.iter().map(|z| z.nrows()).sum::<usize>() == out.len() {
        let views: Vec<_> = zs.iter().map(|z| z.view()).collect();
        Some(concatenate(Axis(0), &views).context("joining the batch's embeddings")?)
    } else {
        None
    };
    Ok((out, z))
}

/// Records an input's scores, then acknowledges it (durably), then counts it.
fn finish_scored(
    monitor: &mut Monitor,
    d: Delivery,
    scores: &[crate::engine::SampleScores],
    z: Option<ArrayView2<f32>>,
    state: &AppState,
    model: &str,
) {
    let now = Instant::now();
    let keys: Vec<(String, &'static str)> = {
        let snap = monitor.snapshot(now);
        snap.iter().map(|k| (k.layer.clone(), k.method.as_str())).collect()
    };
    let t = &state.telemetry;
    for (i, s) in scores.iter().enumerate() {
        let row = z.as_ref().map(|z| z.row(i).to_vec());
        monitor.record(now, s, row.as_deref());
        let ranks = monitor.ranks(s);
        for (((layer, method), v), [rn, rv]) in keys.iter().zip(&s.scores).zip(ranks) {
            let l = [model, layer.as_str(), method];
            t.noise_score_per_sample.with_label_values(&l).observe(v.noise_score);
            t.variance_score_per_sample.with_label_values(&l).observe(v.variance_score);
            if let Some(r) = rn {
                t.noise_score_rank.with_label_values(&l).observe(r);
            }
            if let Some(r) = rv {
                t.variance_score_rank.with_label_values(&l).observe(r);
            }
        }
    }
    let samples = scores.len() as u64;
    if let Err(e) = d.ack.finish(&Outcome::Scored { samples }) {
        tracing::error!(source = %d.source, input = %d.input, error = %e, "cannot acknowledge a scored input");
        state.telemetry.source_errors.with_label_values(&[&d.source, "io"]).inc();
    }
    state.telemetry.samples_scored.with_label_values(&[model]).inc_by(samples);
    state.telemetry.last_sample_timestamp_seconds.with_label_values(&[model]).set(unix_now());
    tracing::debug!(source = %d.source, input = %d.input, samples, "scored");
}
