//! The landing page's heat maps: inline SVG (one `rect` per cell), so the page needs no script and
//! no network. Reference and window share one sequential scale (the same colour means the same value
//! in both); the difference has a diverging scale symmetric around 0. Each scale has a legend with
//! its value range.

use super::maps::{KeyMaps, MapsView};

/// Cells per side beyond which a map is drawn from block means (the API keeps the full grid).
const MAX_CELLS: usize = 64;
/// Pixels of the longer side of a drawn map.
const SIDE_PX: f64 = 168.0;

/// Stops of the sequential scale (low → high): dark blue, teal, green, yellow.
const SEQUENTIAL: [[f64; 3]; 5] = [
    [13.0, 8.0, 135.0],
    [46.0, 90.0, 160.0],
    [33.0, 145.0, 140.0],
    [94.0, 201.0, 98.0],
    [253.0, 231.0, 37.0],
];
/// Stops of the diverging scale (−span → +span): blue, white, red.
const DIVERGING: [[f64; 3]; 3] = [[33.0, 102.0, 172.0], [247.0, 247.0, 247.0], [178.0, 24.0, 43.0]];

fn ramp(stops: &[[f64; 3]], x: f64) -> [u8; 3] {
    let x = if x.is_finite() { x.clamp(0.0, 1.0) } else { 0.5 };
    let pos = x * (stops.len() - 1) as f64;
    let i = (pos.floor() as usize).min(stops.len() - 2);
    let f = pos - i as f64;
    let c = |k: usize| (stops[i][k] + f * (stops[i + 1][k] - stops[i][k])).round() as u8;
    [c(0), c(1), c(2)]
}

/// The colour of `v` on the sequential scale over `[lo, hi]`.
pub fn sequential(v: f64, lo: f64, hi: f64) -> [u8; 3] {
    ramp(&SEQUENTIAL, if hi > lo { (v - lo) / (hi - lo) } else { 0.5 })
}

/// The colour of `v` on the diverging scale over `[−span, span]` (white at 0).
pub fn diverging(v: f64, span: f64) -> [u8; 3] {
    ramp(&DIVERGING, if span > 0.0 { 0.5 + 0.5 * v / span } else { 0.5 })
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// A value for a legend: fixed-point when readable, else scientific.
pub fn label(v: f64) -> String {
    // Adding 0.0 turns −0 into +0, so a span of zero is not labelled "-0.0000".
    let (v, a) = (v + 0.0, v.abs());
    if a == 0.0 || (0.01..10_000.0).contains(&a) { format!("{v:.4}") } else { format!("{v:.3e}") }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Block means down to at most [`MAX_CELLS`] per side.
fn shrink(m: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let (h, w) = (m.len(), m.first().map_or(0, |r| r.len()));
    let f = h.max(w).div_ceil(MAX_CELLS).max(1);
    if f == 1 {
        return m.to_vec();
    }
    (0..h.div_ceil(f))
        .map(|bi| {
            (0..w.div_ceil(f))
                .map(|bj| {
                    let cells: Vec<f64> = (bi * f..((bi + 1) * f).min(h))
                        .flat_map(|i| (bj * f..((bj + 1) * f).min(w)).map(move |j| (i, j)))
                        .map(|(i, j)| m[i][j])
                        .collect();
                    cells.iter().sum::<f64>() / cells.len() as f64
                })
                .collect()
        })
        .collect()
}

/// One map as an SVG: a `rect` per (drawn) cell, coloured by `colour`.
fn svg(k: &KeyMaps, kind: &str, m: &[Vec<f64>], colour: &dyn Fn(f64) -> [u8; 3]) -> String {
    let m = shrink(m);
    let (h, w) = (m.len(), m.first().map_or(0, |r| r.len()));
    let px = SIDE_PX / h.max(w).max(1) as f64;
    let mut out = format!(
        "<svg class=\"map\" data-layer=\"{}\" data-method=\"{}\" data-kind=\"{kind}\" data-cells=\"{h}x{w}\" \
         viewBox=\"0 0 {w} {h}\" width=\"{:.0}\" height=\"{:.0}\" shape-rendering=\"crispEdges\" \
         xmlns=\"http://www.w3.org/2000/svg\">",
        esc(&k.layer),
        k.method.as_str(),
        w as f64 * px,
        h as f64 * px
    );
    for (i, row) in m.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out.push_str(&format!(
                "<rect x=\"{j}\" y=\"{i}\" width=\"1\" height=\"1\" fill=\"{}\"/>",
                hex(colour(v))
            ));
        }
    }
    out.push_str("</svg>");
    out
}

/// A horizontal colour bar from `lo` to `hi` with both ends labelled.
fn legend(id: &str, stops: &[[f64; 3]], lo: f64, hi: f64) -> String {
    let mut grad = String::new();
    for (i, s) in stops.iter().enumerate() {
        let c = [s[0] as u8, s[1] as u8, s[2] as u8];
        grad.push_str(&format!(
            "<stop offset=\"{:.3}\" stop-color=\"{}\"/>",
            i as f64 / (stops.len() - 1) as f64,
            hex(c)
        ));
    }
    format!(
        "<svg class=\"legend\" width=\"{w}\" height=\"30\" xmlns=\"http://www.w3.org/2000/svg\">\
         <defs><linearGradient id=\"{id}\">{grad}</linearGradient></defs>\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"12\" fill=\"url(#{id})\" stroke=\"#888\"/>\
         <text x=\"0\" y=\"26\" font-size=\"11\">{lo}</text>\
         <text x=\"{w}\" y=\"26\" font-size=\"11\" text-anchor=\"end\">{hi}</text></svg>",
        w = SIDE_PX as u32,
        lo = label(lo),
        hi = label(hi),
    )
}

fn range(maps: &[&Vec<Vec<f64>>]) -> Option<(f64, f64)> {
    let vals = maps.iter().flat_map(|m| m.iter().flatten()).copied().filter(|v| v.is_finite());
    vals.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// The page section: per (layer, method) a row of reference, window and difference, with legends.
pub fn section(v: &MapsView) -> String {
    let mut out = String::from(
        "<h2>Where it drifted: mean attribution maps</h2>\n\
         <style>table.maps td { vertical-align: top; padding: 4px; }</style>\n",
    );
    if !v.enabled {
        out.push_str("<p>Maps are off (<code>maps.enabled = false</code>).</p>\n");
        return out;
    }
    out.push_str(&format!(
        "<p>Mean embedding-aggregated map per layer and method, on the layer's grid: reference ({} samples{}), \
         window ({} maps; {}), and window − reference. Model input shape {:?}.</p>\n",
        v.reference_samples,
        v.reference_stride.filter(|&s| s > 1).map(|s| format!(", one in {s}")).unwrap_or_default(),
        v.window_maps,
        if v.every == 1 { "every scored sample mapped".to_string() } else { format!("one scored sample in {} mapped", v.every) },
        v.input_shape
    ));
    if let Some(note) = &v.reference_note {
        out.push_str(&format!("<p class=\"note\"><b>Reference:</b> {}</p>\n", esc(note)));
    }
    if let Some(e) = &v.error {
        out.push_str(&format!("<p class=\"note\"><b>Window maps:</b> {}</p>\n", esc(e)));
    }
    out.push_str("<table class=\"maps\">\n<tr><th>layer / method</th><th>reference</th><th>window</th><th>window − reference</th></tr>\n");
    for (n, k) in v.maps.iter().enumerate() {
        let present: Vec<&Vec<Vec<f64>>> = [&k.reference, &k.window].into_iter().flatten().collect();
        let (lo, hi) = range(&present).unwrap_or((0.0, 0.0));
        let seq = |kind: &str, m: &Option<Vec<Vec<f64>>>, count: String| match m {
            Some(m) => format!("<td>{}<br>{count}</td>", svg(k, kind, m, &|x| sequential(x, lo, hi))),
            None if kind == "window" => "<td class=\"empty\">no map in the window yet</td>".to_string(),
            None => "<td class=\"empty\">no reference map</td>".to_string(),
        };
        out.push_str(&format!(
            "<tr><td><b>{}</b><br>{}<br>{}</td>",
            esc(&k.layer),
            k.method.as_str(),
            k.shape.map(|s| format!("{} × {}", s[0], s[1])).unwrap_or_default()
        ));
        out.push_str(&seq("reference", &k.reference, format!("{} samples", k.reference_samples)));
        out.push_str(&seq("window", &k.window, format!("{} samples", k.window_samples)));
        match &k.difference {
            Some(d) => {
                let span = range(&[d]).map_or(0.0, |(a, b)| a.abs().max(b.abs()));
                out.push_str(&format!(
                    "<td>{}<br>{}</td></tr>\n",
                    svg(k, "difference", d, &|x| diverging(x, span)),
                    legend(&format!("div{n}"), &DIVERGING, -span, span)
                ));
            }
            None => out.push_str("<td class=\"empty\">needs both maps</td></tr>\n"),
        }
        if !present.is_empty() {
            out.push_str(&format!(
                "<tr><td></td><td colspan=\"2\">{}</td><td></td></tr>\n",
                legend(&format!("seq{n}"), &SEQUENTIAL, lo, hi)
            ));
        }
    }
    out.push_str("</table>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_hit_their_stops() {
        assert_eq!(sequential(0.0, 0.0, 2.0), [13, 8, 135]);
        assert_eq!(sequential(2.0, 0.0, 2.0), [253, 231, 37]);
        // Halfway: the middle stop exactly.
        assert_eq!(sequential(1.0, 0.0, 2.0), [33, 145, 140]);
        assert_eq!(diverging(0.0, 3.0), [247, 247, 247]);
        assert_eq!(diverging(-3.0, 3.0), [33, 102, 172]);
        assert_eq!(diverging(9.0, 3.0), [178, 24, 43]);
        assert_eq!(diverging(1.0, 0.0), [247, 247, 247]);
        assert_eq!(label(0.5), "0.5000");
        assert_eq!(label(-0.00012), "-1.200e-4");
        assert_eq!(label(-0.0), "0.0000");
    }

    #[test]
    fn large_maps_are_drawn_from_block_means() {
        let m: Vec<Vec<f64>> = (0..130).map(|i| (0..3).map(|j| (i * 3 + j) as f64).collect()).collect();
        let s = shrink(&m);
        // 130 rows → blocks of 3 → 44 rows (the last of one row), 3 columns → 1.
        assert_eq!((s.len(), s[0].len()), (44, 1));
        assert_eq!(s[0][0], (0..9).sum::<usize>() as f64 / 9.0);
        assert_eq!(s[43][0], (387 + 388 + 389) as f64 / 3.0);
    }
}
