//! Deciding a layer's view: as configured, or auto-detected from its probed shape and the operators
//! that produce it (the rule is written out in `docs/spec/attribution-graph.md#layer-layouts`).
//! Shape alone is not trusted where it is ambiguous — a 1-D convolution's `[64, 100]` is not 64
//! tokens of an 8 × 8 grid — so the producing operators must say which axis holds the channels.

use std::collections::{HashMap, HashSet};

use anyhow::{Result, bail};

use super::layout::{LayerLayout, LayerView, LayoutRequest};
use super::registry;
use crate::onnx::proto::*;

/// The model input's spatial height and width, when the input looks like an image (`[C, H, W]` or
/// `[H, W, C]` with at most 4 channels, or `[H, W]`): auto-detection compares grids with its aspect.
pub fn input_hw(input_rest: &[i64]) -> Option<(i64, i64)> {
    match input_rest {
        [c, h, w] if *c <= 4 => Some((*h, *w)),
        [h, w, c] if *c <= 4 => Some((*h, *w)),
        [h, w] => Some((*h, *w)),
        _ => None,
    }
}

/// Decides a layer's view from the request, its probed dims `rest` and (for `auto`) the graph.
pub fn resolve(
    graph: &GraphProto,
    layer: &str,
    rest: &[i64],
    req: &LayoutRequest,
    input_hw: Option<(i64, i64)>,
) -> Result<LayerView> {
    if let Some(why) = req.problem() {
        bail!("layer {layer:?}: {why}");
    }
    let wants_tokens = req.layout == LayerLayout::Tokens
        || (req.layout == LayerLayout::Auto && (req.grid.is_some() || req.prefix_tokens.is_some()));
    let view = |layout, channels: i64, grid: [i64; 2], prefix, detected, reason: String| LayerView {
        layer: layer.to_string(),
        shape: rest.to_vec(),
        layout,
        channels: channels as usize,
        grid: [grid[0] as usize, grid[1] as usize],
        prefix_tokens: prefix,
        detected,
        reason,
    };
    if wants_tokens {
        let [t, c] = rest[..] else {
            bail!(
                "layer {layer:?}: layout tokens needs a [batch, T, C] layer; it has dims {rest:?} after the batch"
            );
        };
        let (prefix, grid, how) = token_grid(layer, t, req.grid, req.prefix_tokens, input_hw)?;
        return Ok(view(LayerLayout::Tokens, c, grid, prefix, false, format!("configured; {how}")));
    }
    let configured = "configured".to_string();
    Ok(match (req.layout, rest) {
        (_, [c]) => view(
            if req.layout == LayerLayout::Auto { LayerLayout::Nchw } else { req.layout },
            *c,
            [1, 1],
            0,
            req.layout == LayerLayout::Auto,
            if req.layout == LayerLayout::Auto { "[batch, C]: no map axes".into() } else { configured },
        ),
        (LayerLayout::Nchw, [c, l]) => view(LayerLayout::Nchw, *c, [*l, 1], 0, false, configured),
        (LayerLayout::Nchw, [c, h, w]) => view(LayerLayout::Nchw, *c, [*h, *w], 0, false, configured),
        (LayerLayout::Nhwc, [l, c]) => view(LayerLayout::Nhwc, *c, [*l, 1], 0, false, configured),
        (LayerLayout::Nhwc, [h, w, c]) => view(LayerLayout::Nhwc, *c, [*h, *w], 0, false, configured),
        (LayerLayout::Auto, _) => detect(graph, layer, rest, input_hw)?,
        _ => bail!(
            "layer {layer:?} must be [batch, C], [batch, C, L] or [batch, C, H, W] (or channels last); it has dims {rest:?} after the batch"
        ),
    })
}

/// Auto-detection (rule written out in `docs/spec/attribution-graph.md#layer-layouts`).
fn detect(graph: &GraphProto, layer: &str, rest: &[i64], input_hw: Option<(i64, i64)>) -> Result<LayerView> {
    let ev = evidence(graph, layer);
    let view = |layout, channels: i64, grid: [i64; 2], prefix, reason: String| LayerView {
        layer: layer.to_string(),
        shape: rest.to_vec(),
        layout,
        channels: channels as usize,
        grid: [grid[0] as usize, grid[1] as usize],
        prefix_tokens: prefix,
        detected: true,
        reason,
    };
    Ok(match (rest, &ev) {
        ([t, c], Some((Axis::Last, why))) => {
            let (prefix, grid, how) = token_grid(layer, *t, None, None, input_hw)?;
            view(LayerLayout::Tokens, *c, grid, prefix, format!("channels last ({why}); {how}"))
        }
        ([c, l], _) => {
            let why = match &ev {
                Some((Axis::First, why)) => format!("channels first ({why})"),
                _ => "no channels-last producer (LayerNormalization, MatMul, Transpose) found".into(),
            };
            view(LayerLayout::Nchw, *c, [*l, 1], 0, format!("{why}: read as [C, L]"))
        }
        ([a, b, c], _) => {
            let fits = |h: i64, w: i64| match input_hw {
                Some((ih, iw)) => h * iw == w * ih,
                None => h == w,
            };
            let against = match input_hw {
                Some((ih, iw)) => format!("the input's {ih}x{iw}"),
                None => "a square grid".into(),
            };
            let (first_fits, last_fits) = (fits(*b, *c), fits(*a, *b));
            match &ev {
                Some((Axis::Last, why)) if last_fits => view(
                    LayerLayout::Nhwc,
                    *c,
                    [*a, *b],
                    0,
                    format!("channels last ({why}); {a}x{b} grid matches {against}"),
                ),
                Some((Axis::First, why)) => {
                    view(LayerLayout::Nchw, *a, [*b, *c], 0, format!("channels first ({why})"))
                }
                None if last_fits && !first_fits => view(
                    LayerLayout::Nhwc,
                    *c,
                    [*a, *b],
                    0,
                    format!("only the channels-last reading ({a}x{b}) matches {against}"),
                ),
                None if first_fits && !last_fits => view(
                    LayerLayout::Nchw,
                    *a,
                    [*b, *c],
                    0,
                    format!("only the channels-first reading ({b}x{c}) matches {against}"),
                ),
                _ => view(
                    LayerLayout::Nchw,
                    *a,
                    [*b, *c],
                    0,
                    "ambiguous (no conclusive producer, grid readings tie): channels first assumed".into(),
                ),
            }
        }
        _ => bail!(
            "layer {layer:?} must be [batch, C], [batch, C, L], [batch, T, C], [batch, C, H, W] or [batch, H, W, C]; it has dims {rest:?} after the batch"
        ),
    })
}

/// Prefix tokens and grid of a `T`-token layer: as given, or the smallest prefix `p ≤ 16` whose
/// remaining `T − p` tokens fill a grid with the input's aspect ratio (a square when the input is
/// not an image). Without one the map is the `T` tokens as a `T × 1` strip.
fn token_grid(
    layer: &str,
    t: i64,
    grid: Option<[usize; 2]>,
    prefix: Option<usize>,
    input_hw: Option<(i64, i64)>,
) -> Result<(usize, [i64; 2], String)> {
    let fit = |n: i64| -> Option<[i64; 2]> {
        let (ih, iw) = input_hw.unwrap_or((1, 1));
        let gh = ((n * ih) as f64 / iw as f64).sqrt().round() as i64;
        (gh > 0 && n % gh == 0 && gh * iw == (n / gh) * ih).then_some([gh, n / gh])
    };
    match (grid, prefix) {
        (Some([gh, gw]), p) => {
            let n = (gh * gw) as i64;
            let p = p.unwrap_or((t - n).max(0) as usize);
            if p as i64 + n != t {
                bail!(
                    "layer {layer:?} has {t} tokens; grid {gh}x{gw} plus {p} prefix token(s) makes {}",
                    p as i64 + n
                );
            }
            Ok((p, [gh as i64, gw as i64], format!("grid {gh}x{gw} after {p} prefix token(s)")))
        }
        (None, Some(p)) => {
            if p as i64 >= t {
                bail!("layer {layer:?} has {t} tokens; prefix_tokens = {p} leaves none");
            }
            let n = t - p as i64;
            Ok(match fit(n) {
                Some(g) => (p, g, format!("{n} patch tokens as a {}x{} grid", g[0], g[1])),
                None => {
                    (p, [n, 1], format!("{n} patch tokens fit no grid of the input's aspect: a {n}x1 strip"))
                }
            })
        }
        (None, None) => {
            for p in 0..=16.min(t - 1) {
                if let Some(g) = fit(t - p) {
                    return Ok((p as usize, g, format!("{t} tokens = {p} prefix + {}x{} grid", g[0], g[1])));
                }
            }
            Ok((0, [t, 1], format!("no prefix 0..=16 leaves a grid for {t} tokens: a {t}x1 strip")))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Axis {
    First,
    Last,
}

/// Ops whose output is channels first by definition.
const CHANNELS_FIRST: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "MaxPool",
    "AveragePool",
    "LpPool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "BatchNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "LRN",
    "DepthToSpace",
    "SpaceToDepth",
];

/// Ops that end the walk without a verdict (the last axis means something else).
const OPAQUE: &[&str] = &["Softmax", "LogSoftmax", "Einsum", "Gather", "GatherElements", "ArgMax", "TopK"];

/// Which axis holds the channels, judged from the operators that produce the tensor: walks back
/// through shape-keeping ops (elementwise, reshapes, concatenations, reductions) to the first op that
/// says (a convolution or pool: first; LayerNormalization over the last axis: last; a
/// channel-moving Transpose; a MatMul keeps its first operand's reading, else last). Returns the
/// verdict and the node that gave it.
fn evidence(graph: &GraphProto, t: &str) -> Option<(Axis, String)> {
    let produced: HashMap<&str, &NodeProto> =
        graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    let consts: HashSet<&str> = graph
        .initializer
        .iter()
        .map(|i| i.name.as_str())
        .chain(
            graph
                .node
                .iter()
                .filter(|n| n.op_type == "Constant")
                .flat_map(|n| n.output.iter().map(String::as_str)),
        )
        .collect();
    let mut seen = HashSet::new();
    walk(&produced, &consts, t, &mut seen)
}

fn walk<'a>(
    produced: &HashMap<&'a str, &'a NodeProto>,
    consts: &HashSet<&str>,
    t: &'a str,
    seen: &mut HashSet<&'a str>,
) -> Option<(Axis, String)> {
    if seen.len() > 256 || !seen.insert(t) {
        return None;
    }
    let n = produced.get(t)?;
    let who = || format!("{} {}", n.op_type, n.display_name());
    let op = n.op_type.as_str();
    if CHANNELS_FIRST.contains(&op) {
        return Some((Axis::First, who()));
    }
    if OPAQUE.contains(&op) {
        return None;
    }
    match op {
        "LayerNormalization" | "SimplifiedLayerNormalization" => {
            return (n.attr_int("axis").unwrap_or(-1) == -1).then(|| (Axis::Last, who()));
        }
        // A MatMul mixes its first operand's last axis and keeps what the others mean: channels
        // stay last after a channel MLP, and a token-mixing MatMul on `[C, T]` stays channels first.
        // With nothing known upstream, its last axis is features.
        "MatMul" => {
            let upstream = n.input.first().and_then(|x| walk(produced, consts, x, seen));
            return Some(upstream.map_or(Axis::Last, |(a, _)| a)).map(|a| (a, who()));
        }
        "Gemm" => return Some((Axis::Last, who())),
        "Transpose" => {
            let perm = n.attr_ints("perm").unwrap_or(&[]);
            let mut upstream = || walk(produced, consts, n.input.first()?, seen);
            return match perm {
                [0, 2, 3, 1] => Some((Axis::Last, who())),
                [0, 3, 1, 2] => Some((Axis::First, who())),
                [0, 2, 1] => {
                    let flip = |a| if a == Axis::First { Axis::Last } else { Axis::First };
                    upstream().map(|(a, _)| (flip(a), who()))
                }
                // Other permutations (window partitions, attention heads) keep the verdict when they
                // keep the axis it names in place.
                _ => upstream().filter(|(a, _)| match a {
                    Axis::Last => perm.last().is_some_and(|&p| p as usize == perm.len() - 1),
                    Axis::First => perm.get(1) == Some(&1),
                }),
            };
        }
        _ if registry::NON_DIFFERENTIABLE.contains(&op) => return None,
        _ => {}
    }
    // Elementwise combinations and concatenations: any data operand may tell; every other op (reshapes,
    // slices, pads, reductions, unary functions): its data input 0, not its shape or index operands.
    let data: &[String] = if VARIADIC.contains(&op) { &n.input } else { &n.input[..n.input.len().min(1)] };
    data.iter()
        .filter(|x| !x.is_empty() && !consts.contains(x.as_str()))
        .find_map(|x| walk(produced, consts, x, seen))
}

/// Ops whose every input is data of the output's layout.
const VARIADIC: &[&str] = &["Add", "Sub", "Mul", "Div", "Sum", "Mean", "Max", "Min", "Concat", "Where"];

#[cfg(test)]
mod tests {
    use super::*;

    fn g() -> GraphProto {
        GraphProto::default()
    }

    #[test]
    fn prefix_is_the_smallest_that_leaves_a_square() {
        let v = |t| token_grid("l", t, None, None, Some((224, 224))).unwrap();
        assert_eq!((v(197).0, v(197).1), (1, [14, 14]));
        assert_eq!((v(261).0, v(261).1), (5, [16, 16]));
        assert_eq!((v(49).0, v(49).1), (0, [7, 7]));
        // 14 x 28 patches of a 224 x 448 input and a class token.
        let r = token_grid("l", 393, None, None, Some((224, 448))).unwrap();
        assert_eq!((r.0, r.1), (1, [14, 28]));
        // Nothing within 16: a strip.
        let r = token_grid("l", 99, None, None, Some((10, 10))).unwrap();
        assert_eq!((r.0, r.1), (0, [99, 1]));
    }

    #[test]
    fn given_grid_and_prefix_must_add_up() {
        assert_eq!(token_grid("l", 197, Some([14, 14]), None, None).unwrap().0, 1);
        let e = token_grid("l", 197, Some([14, 14]), Some(2), None).unwrap_err().to_string();
        assert!(e.contains("197 tokens") && e.contains("14x14"), "{e}");
        assert!(token_grid("l", 4, None, Some(4), None).is_err());
    }

    #[test]
    fn without_evidence_a_rank3_layer_stays_channels_first() {
        let req = LayoutRequest::default();
        let v = resolve(&g(), "x", &[64, 100], &req, Some((8, 8))).unwrap();
        assert_eq!((v.layout, v.channels, v.grid), (LayerLayout::Nchw, 64, [100, 1]));
        // A square channels-last reading decides a rank-4 layer when the other reading is not square.
        let v = resolve(&g(), "x", &[4, 4, 16], &req, Some((16, 16))).unwrap();
        assert_eq!((v.layout, v.channels, v.grid), (LayerLayout::Nhwc, 16, [4, 4]));
        let v = resolve(&g(), "x", &[8, 8, 8], &req, Some((16, 16))).unwrap();
        assert_eq!(v.layout, LayerLayout::Nchw);
        assert!(v.reason.contains("ambiguous"), "{}", v.reason);
    }
}
