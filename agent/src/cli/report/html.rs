//! The HTML form of `agent report`: one file that opens with no network — inline CSS, pictures as PNG
//! data URIs — so it can be mailed or attached to a ticket as is.
//!
//! Per detector, a bar of the statistic against its threshold (the threshold is the dark tick at the
//! bar's midpoint; past it the bar turns red). Per (layer, method), the mean embedding-aggregated map
//! of the reference, of the current data, and their difference: where in the input the
//! representation's response moved, which none of the embedding tests can show.

use std::fmt::Write as _;

use anyhow::Result;
use ndarray::Array2;

use super::Row;
use crate::engine::ScoreKey;

pub struct Page<'a> {
    pub reference: String,
    pub current: String,
    pub reference_samples: usize,
    pub current_samples: usize,
    pub alpha: f64,
    pub rows: &'a [Row],
    pub keys: &'a [ScoreKey],
    pub reference_maps: &'a [Array2<f64>],
    pub current_maps: &'a [Array2<f64>],
    pub map_samples: (usize, usize),
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}\
td.num{text-align:right;font-variant-numeric:tabular-nums}.drift{color:#b00020;font-weight:bold}\
.maps{display:flex;flex-wrap:wrap;gap:24px}.maps figure{margin:0}figcaption{font-size:90%}\
img.map{image-rendering:pixelated;width:168px;height:168px;border:1px solid #ccc}";

pub fn render(p: &Page) -> Result<String> {
    let mut h = String::new();
    let drifted = p.rows.iter().filter(|r| r.drift).count();
    write!(
        h,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>agent report</title><style>{STYLE}</style></head><body>\
         <h1>Drift report</h1><p>Reference <code>{}</code> ({} samples) against current <code>{}</code> ({} samples); \
         α = {}. <b>{drifted} of {} detectors report drift.</b></p>",
        escape(&p.reference),
        p.reference_samples,
        escape(&p.current),
        p.current_samples,
        p.alpha,
        p.rows.len()
    )?;
    h.push_str(
        "<h2>Detectors</h2><table><tr><th>detector</th><th>layer</th><th>method</th><th>statistic</th>\
         <th>p-value</th><th>threshold</th><th>Δ (ref − cur)/ref</th><th>drift</th><th>statistic vs threshold</th></tr>",
    );
    for r in p.rows {
        let bar = png_data_uri(&bar_image(r.statistic, r.threshold))?;
        write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=num>{:.5}</td><td class=num>{}</td><td class=num>{:.5}</td>\
             <td class=num>{}</td><td class=\"{}\">{}</td><td><img alt=\"statistic {:.4} against threshold {:.4}\" src=\"{bar}\"></td></tr>",
            escape(&r.name),
            escape(r.layer.as_deref().unwrap_or("")),
            escape(r.method.as_deref().unwrap_or("")),
            r.statistic,
            r.p_value.map(|v| format!("{v:.3e}")).unwrap_or_else(|| "—".into()),
            r.threshold,
            r.relative_drift.map(|v| format!("{v:+.3}")).unwrap_or_default(),
            if r.drift { "drift" } else { "" },
            if r.drift { "drift" } else { "no" },
            r.statistic,
            r.threshold
        )?;
    }
    h.push_str("</table>");
    write!(
        h,
        "<h2>Where it moved: mean attribution maps</h2><p>Mean embedding-aggregated map over {} reference and {} \
         current samples, per layer and method. Reference and current share one colour scale (dark: low, \
         bright: high); the difference is current − reference (blue: lower, red: higher, white: unchanged).</p>",
        p.map_samples.0, p.map_samples.1
    )?;
    for (i, key) in p.keys.iter().enumerate() {
        let (Some(r), Some(c)) = (p.reference_maps.get(i), p.current_maps.get(i)) else { continue };
        let lo = r.iter().chain(c.iter()).copied().fold(f64::INFINITY, f64::min);
        let hi = r.iter().chain(c.iter()).copied().fold(f64::NEG_INFINITY, f64::max);
        let diff = c - r;
        let span = diff.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        write!(
            h,
            "<h3>{} · {}</h3><div class=maps>{}{}{}</div>",
            escape(&key.layer),
            key.method.as_str(),
            figure("reference", &heat_image(r, lo, hi))?,
            figure("current", &heat_image(c, lo, hi))?,
            figure(&format!("difference (max |Δ| = {span:.3e})"), &diverging_image(&diff, span))?,
        )?;
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

fn figure(caption: &str, img: &image::RgbImage) -> Result<String> {
    Ok(format!(
        "<figure><img class=map alt=\"{0}\" src=\"{1}\"><figcaption>{0}</figcaption></figure>",
        escape(caption),
        png_data_uri(img)?
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A 200 × 14 bar: the threshold sits at the midpoint, so the bar's length is `statistic/threshold`
/// on a scale up to 2× the threshold (longer values are clipped and drawn to the end).
fn bar_image(statistic: f64, threshold: f64) -> image::RgbImage {
    let (w, hgt) = (200u32, 14u32);
    let ratio = if threshold > 0.0 {
        statistic / threshold
    } else if statistic > threshold {
        2.0
    } else {
        0.0
    };
    let filled = ((ratio.clamp(0.0, 2.0) / 2.0) * f64::from(w)).round() as u32;
    let colour = if ratio > 1.0 { [200, 40, 50] } else { [70, 130, 180] };
    let mut img = image::RgbImage::from_pixel(w, hgt, image::Rgb([238, 238, 238]));
    for x in 0..filled.min(w) {
        for y in 2..hgt - 2 {
            img.put_pixel(x, y, image::Rgb(colour));
        }
    }
    for y in 0..hgt {
        img.put_pixel(w / 2, y, image::Rgb([20, 20, 20]));
    }
    img
}

/// A dark-to-bright ramp (near black, violet, orange, pale yellow), one image pixel per map pixel.
fn heat_image(m: &Array2<f64>, lo: f64, hi: f64) -> image::RgbImage {
    const RAMP: [[f64; 3]; 4] = [[0.02, 0.02, 0.08], [0.45, 0.1, 0.5], [0.95, 0.5, 0.1], [1.0, 0.98, 0.7]];
    to_image(m, |v| {
        let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.0 };
        let t = t.clamp(0.0, 1.0) * (RAMP.len() - 1) as f64;
        let i = (t.floor() as usize).min(RAMP.len() - 2);
        let f = t - i as f64;
        [0, 1, 2].map(|c| RAMP[i][c] * (1.0 - f) + RAMP[i + 1][c] * f)
    })
}

/// Blue (negative) – white (0) – red (positive), symmetric around 0 with `span` as full colour.
fn diverging_image(m: &Array2<f64>, span: f64) -> image::RgbImage {
    to_image(m, |v| {
        let t = if span > 0.0 { (v / span).clamp(-1.0, 1.0) } else { 0.0 };
        if t >= 0.0 { [1.0, 1.0 - 0.8 * t, 1.0 - 0.8 * t] } else { [1.0 + 0.8 * t, 1.0 + 0.8 * t, 1.0] }
    })
}

fn to_image(m: &Array2<f64>, colour: impl Fn(f64) -> [f64; 3]) -> image::RgbImage {
    let (h, w) = m.dim();
    image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        image::Rgb(colour(m[[y as usize, x as usize]]).map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8))
    })
}

fn png_data_uri(img: &image::RgbImage) -> Result<String> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    Ok(format!("data:image/png;base64,{}", base64(&bytes)))
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn bar_turns_red_past_the_threshold() {
        let below = bar_image(0.5, 1.0);
        let above = bar_image(1.5, 1.0);
        assert_eq!(below.get_pixel(10, 7).0, [70, 130, 180]);
        assert_eq!(above.get_pixel(10, 7).0, [200, 40, 50]);
        assert_eq!(below.get_pixel(150, 7).0, [238, 238, 238]);
        assert_eq!(above.get_pixel(140, 7).0, [200, 40, 50]);
    }
}
