//! `agent explain` for a text model: the sample's tokens coloured by their attribution, one row per
//! layer and method, as a self-contained HTML page (no script, no external file). A token's colour is
//! its value of the embedding-aggregated map `E` over the token axis, min-max scaled per row.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};

use super::ExplainArgs;
use crate::engine::{Engine, EngineSpec};
use plugins::decode::{DecodeOptions, Payload, decode_payload_file};

pub(super) fn run(
    args: &ExplainArgs,
    spec: &EngineSpec,
    engine: &mut Engine,
    opts: &DecodeOptions,
) -> Result<()> {
    let name = args.input.display().to_string();
    let samples = match decode_payload_file(&args.input, &name, opts)? {
        Payload::Tokens(t) => t,
        Payload::Dense(_) => bail!("{name}: a text model's input decoded as a dense array"),
    };
    let Some(sample) = samples.get(args.sample) else {
        bail!("{name} holds {} sample(s); --sample {} is out of range", samples.len(), args.sample);
    };
    let maps = engine.token_maps(std::slice::from_ref(sample))?.remove(0);
    let tokens = match opts.tokens.as_ref().and_then(|t| t.tokenizer.as_ref()) {
        Some(tok) => tok.tokens(&sample.ids),
        None => sample.ids.iter().map(|id| format!("[{id}]")).collect(),
    };
    let mut h = String::new();
    write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>agent explain: {}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         .row{{margin:1em 0}}.tok{{display:inline-block;padding:2px 4px;margin:1px;border-radius:3px;\
         font-family:ui-monospace,monospace}}.lbl{{font-weight:bold;margin-bottom:4px}}\
         </style></head><body><h1>{}</h1><p>sample {} ({} tokens); aggregation: channel {}, embedding {}; \
         colour: the token's attribution, scaled to the row's range (dark = low, bright = high)</p>",
        esc(&name),
        esc(&name),
        args.sample,
        sample.len(),
        spec.score.channel_agg().as_str(),
        spec.score.embedding_agg().as_str()
    )?;
    for (key, m) in engine.keys().iter().zip(&maps) {
        let values: Vec<f32> = m.iter().copied().collect();
        // Prefix tokens (if the layer has any) come first and have no map value.
        let offset = tokens.len().checked_sub(values.len()).context("a map longer than its sample")?;
        let (lo, hi) = values.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        write!(
            h,
            "<div class=\"row\"><div class=\"lbl\">{} / {}</div>",
            esc(&key.layer),
            key.method.as_str()
        )?;
        for (i, tok) in tokens.iter().enumerate() {
            let Some(&v) = i.checked_sub(offset).and_then(|j| values.get(j)) else {
                write!(h, "<span class=\"tok\" style=\"background:#eee\">{}</span>", esc(tok))?;
                continue;
            };
            let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.0 };
            let [r, g, b] = super::heat_colour(t).map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8);
            let fg = if t < 0.55 { "#fff" } else { "#000" };
            write!(
                h,
                "<span class=\"tok\" style=\"background:rgb({r},{g},{b});color:{fg}\" title=\"{v:.4e}\">{}</span>",
                esc(tok)
            )?;
        }
        h.push_str("</div>");
    }
    h.push_str("</body></html>\n");
    std::fs::write(&args.out, h).with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {} ({} tokens, {} rows)", args.out.display(), sample.len(), maps.len());
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
