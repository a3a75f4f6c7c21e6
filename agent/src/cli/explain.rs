//! `agent explain`: the embedding-aggregated attribution map of one input, per layer, upscaled onto
//! the input (nearest neighbour, docs/spec/scores.md#embedding-aggregation) and drawn as a heat map over it —
//! the paper's figure 2 for the user's own model. Rows are methods; the first column is the input, then one
//! panel per layer.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use ndarray::{Array2, ArrayView2, ArrayViewD, Axis};

use super::ModelArgs;

mod text;
use crate::engine::Engine;

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input file (`.npy`, `.npz`, `.png`, `.jpg`; a text model's `.txt`, `.jsonl`, `.npz`); with a
    /// batch, `--sample` picks the sample.
    pub input: PathBuf,
    /// Which sample of a batch input to explain (0-based).
    #[arg(long, default_value_t = 0)]
    pub sample: usize,
    /// Where to write the PNG (a text model: a self-contained HTML page).
    #[arg(long)]
    pub out: PathBuf,
    /// Output pixels per input pixel (default: panels at least 160 pixels high).
    #[arg(long)]
    pub scale: Option<u32>,
}

pub fn run(args: &ExplainArgs) -> Result<()> {
    let spec = args.model.engine_spec()?;
    let mut engine = Engine::new(&spec)?;
    let image = args.model.image_options()?;
    if engine.text_model().is_some() {
        let opts = super::score::options(&engine, &image, args.model.token_options(&engine)?);
        return text::run(args, &spec, &mut engine, &opts);
    }
    let batch = super::score::decode(&engine, &image, &args.input)?;
    if args.sample >= batch.shape()[0] {
        bail!(
            "{} holds {} sample(s); --sample {} is out of range",
            args.input.display(),
            batch.shape()[0],
            args.sample
        );
    }
    let x = batch.index_axis(Axis(0), args.sample).to_owned();
    let one = x.clone().insert_axis(Axis(0));
    let maps = engine.embedding_maps(one.view())?.remove(0);
    let image = input_image(x.view())?;
    let (h, w) = image.dim();
    let scale = args.scale.unwrap_or_else(|| (160 / h.max(1) as u32).max(1));
    let methods: Vec<_> = {
        let mut m: Vec<_> = engine.keys().iter().map(|k| k.method).collect();
        m.dedup();
        m.sort();
        m.dedup();
        m
    };
    let layers: Vec<String> = spec.layers.iter().map(|l| l.name.clone()).collect();
    let (pw, ph) = (w as u32 * scale, h as u32 * scale);
    let gap = 4u32;
    let cols = 1 + layers.len() as u32;
    let rows = methods.len() as u32;
    let mut png = image::RgbImage::from_pixel(
        cols * (pw + gap) + gap,
        rows * (ph + gap) + gap,
        image::Rgb([255, 255, 255]),
    );
    for (r, method) in methods.iter().enumerate() {
        let oy = gap + r as u32 * (ph + gap);
        draw(&mut png, gap, oy, scale, &image, None);
        for (c, key) in engine.keys().iter().enumerate().filter(|(_, k)| k.method == *method) {
            let col = 1 + layers.iter().position(|l| *l == key.layer).unwrap_or(0) as u32;
            let heat = upscale(normalized(maps[c].view()).view(), h, w);
            draw(&mut png, gap + col * (pw + gap), oy, scale, &image, Some(&heat));
        }
    }
    png.save(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {} ({} × {} px)", args.out.display(), png.width(), png.height());
    println!("columns: input, {}", layers.join(", "));
    println!("rows: {}", methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "));
    println!(
        "aggregation: channel {}, embedding {}",
        spec.score.channel_agg().as_str(),
        spec.score.embedding_agg().as_str()
    );
    Ok(())
}

/// A grey image of the input: one channel as is, several averaged, min-max scaled to [0, 1].
fn input_image(x: ArrayViewD<f32>) -> Result<Array2<f32>> {
    let img = match x.ndim() {
        2 => x.into_dimensionality::<ndarray::Ix2>()?.to_owned(),
        3 => x.mean_axis(Axis(0)).context("empty input")?.into_dimensionality::<ndarray::Ix2>()?,
        n => bail!("explain draws [C, H, W] or [H, W] inputs; this one has rank {n}"),
    };
    Ok(normalized(img.view()))
}

fn normalized(m: ArrayView2<f32>) -> Array2<f32> {
    let (lo, hi) = m.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if hi > lo { m.mapv(|v| (v - lo) / (hi - lo)) } else { Array2::zeros(m.dim()) }
}

/// Nearest-neighbour upscaling of a low-resolution map onto `h × w`: each map pixel a block.
fn upscale(m: ArrayView2<f32>, h: usize, w: usize) -> Array2<f32> {
    let (mh, mw) = m.dim();
    Array2::from_shape_fn((h, w), |(y, x)| m[[y * mh / h, x * mw / w]])
}

/// A perceptually ordered dark-to-bright colour ramp (black, purple, red, orange, pale yellow).
pub(super) fn heat_colour(v: f32) -> [f32; 3] {
    const RAMP: [[f32; 3]; 5] =
        [[0.0, 0.0, 0.02], [0.34, 0.06, 0.43], [0.74, 0.22, 0.33], [0.98, 0.56, 0.04], [0.99, 1.0, 0.64]];
    let t = v.clamp(0.0, 1.0) * (RAMP.len() - 1) as f32;
    let i = (t.floor() as usize).min(RAMP.len() - 2);
    let f = t - i as f32;
    [0, 1, 2].map(|c| RAMP[i][c] * (1.0 - f) + RAMP[i + 1][c] * f)
}

fn draw(
    png: &mut image::RgbImage,
    ox: u32,
    oy: u32,
    scale: u32,
    img: &Array2<f32>,
    heat: Option<&Array2<f32>>,
) {
    let (h, w) = img.dim();
    for y in 0..h {
        for x in 0..w {
            let g = img[[y, x]];
            let rgb = match heat {
                None => [g; 3],
                Some(hm) => {
                    let v = hm[[y, x]];
                    let c = heat_colour(v);
                    let a = 0.35 + 0.6 * v;
                    [0, 1, 2].map(|k| (1.0 - a) * g + a * c[k])
                }
            };
            let px = image::Rgb(rgb.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8));
            for dy in 0..scale {
                for dx in 0..scale {
                    png.put_pixel(ox + x as u32 * scale + dx, oy + y as u32 * scale + dy, px);
                }
            }
        }
    }
}
