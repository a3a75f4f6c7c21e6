//! Per-layer layouts: which axis of a layer holds the channels and which axes form the map.
//!
//! The scores need every layer as channels × spatial grid (`[C, H, W]`). Convolutional layers are
//! stored that way (`nchw`); transformer layers are `[T, C]` token sequences (`tokens`) and some
//! models keep their spatial stages channels-last (`nhwc`, e.g. timm's Swin `[H, W, C]`).
//!
//! The choice (spec: `docs/spec/attribution-graph.md#layer-layouts`): a layer is *viewed* as
//! `[C, gh, gw]` inside the attribution graph, right after the reverse pass — the gradient
//! `[B, K, T, C]` is transposed to `[B, K, C, T]`, the prefix tokens (class token, registers) are
//! sliced off and the patch tokens are reshaped to the grid, and the layer tensor itself gets the same
//! view for `actgrad`/`gradcam`. Every later step (channel aggregation, smoothing, the map's height
//! and width, scores, baselines, `agent explain`) then sees an ordinary channels-first map and is the
//! same code for every layout. A view costs one Transpose, one Slice and one Reshape per layer;
//! nothing in the reverse pass changes.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::builder::GraphBuilder;
pub use super::detect::{input_hw, resolve};

/// How a layer's axes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerLayout {
    /// Decided at compile time from the probed shape and the producing operators.
    #[default]
    Auto,
    /// Channels first: `[C]`, `[C, L]`, `[C, H, W]`.
    Nchw,
    /// Channels last: `[L, C]`, `[H, W, C]`.
    Nhwc,
    /// `[T, C]` tokens: the map is over the tokens after the prefix, on a grid.
    Tokens,
}

impl LayerLayout {
    pub fn as_str(self) -> &'static str {
        match self {
            LayerLayout::Auto => "auto",
            LayerLayout::Nchw => "nchw",
            LayerLayout::Nhwc => "nhwc",
            LayerLayout::Tokens => "tokens",
        }
    }
}

impl fmt::Display for LayerLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LayerLayout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(LayerLayout::Auto),
            "nchw" => Ok(LayerLayout::Nchw),
            "nhwc" => Ok(LayerLayout::Nhwc),
            "tokens" => Ok(LayerLayout::Tokens),
            _ => Err(format!("unknown layout {s:?} (expected auto, nchw, nhwc or tokens)")),
        }
    }
}

/// What the user asks for one layer. `grid` and `prefix_tokens` only make sense for tokens; given
/// with `auto` they mean tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutRequest {
    #[serde(default)]
    pub layout: LayerLayout,
    /// Patch-token grid `[gh, gw]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<[usize; 2]>,
    /// Tokens before the patch tokens (class token, registers), excluded from the map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_tokens: Option<usize>,
}

impl LayoutRequest {
    /// How every layer was read before layouts existed.
    pub const NCHW: LayoutRequest =
        LayoutRequest { layout: LayerLayout::Nchw, grid: None, prefix_tokens: None };

    /// A request that is wrong whatever the layer's shape, in words (for config validation).
    pub fn problem(&self) -> Option<String> {
        if (self.grid.is_some() || self.prefix_tokens.is_some())
            && matches!(self.layout, LayerLayout::Nchw | LayerLayout::Nhwc)
        {
            return Some(format!(
                "grid and prefix_tokens apply to token layers; layout {} takes neither",
                self.layout
            ));
        }
        if let Some([gh, gw]) = self.grid
            && (gh == 0 || gw == 0)
        {
            return Some(format!("grid [{gh}, {gw}] has an empty side"));
        }
        None
    }

    /// Parses the command line's `NAME=LAYOUT[,grid=GHxGW][,prefix=N]`; returns the name and the
    /// request. `NAME` may itself contain `=`: the split is at the `=` that a layout follows.
    pub fn parse_flag(s: &str) -> Result<(String, LayoutRequest), String> {
        let usage = "expected NAME=LAYOUT[,grid=GHxGW][,prefix=N], e.g. blocks.5=tokens,grid=14x14,prefix=1";
        let split = s.match_indices('=').map(|(i, _)| i).find(|&i| {
            let head = s[i + 1..].split(',').next().unwrap_or("");
            head.parse::<LayerLayout>().is_ok()
        });
        let Some(i) = split else { return Err(format!("--layout {s:?}: {usage}")) };
        let (name, spec) = (&s[..i], &s[i + 1..]);
        if name.is_empty() {
            return Err(format!("--layout {s:?}: no layer name; {usage}"));
        }
        let mut parts = spec.split(',');
        let mut req = LayoutRequest { layout: parts.next().unwrap_or("").parse()?, ..Default::default() };
        for p in parts {
            match p.split_once('=') {
                Some(("grid", g)) => {
                    let dims: Vec<usize> =
                        g.split(['x', '×']).filter_map(|d| d.trim().parse().ok()).collect();
                    let [gh, gw] = dims[..] else {
                        return Err(format!("--layout {s:?}: grid {g:?} is not GHxGW (e.g. 14x14)"));
                    };
                    req.grid = Some([gh, gw]);
                }
                Some(("prefix", n)) | Some(("prefix_tokens", n)) => {
                    req.prefix_tokens =
                        Some(n.parse().map_err(|_| format!("--layout {s:?}: prefix {n:?} is not a count"))?);
                }
                _ => return Err(format!("--layout {s:?}: unknown part {p:?}; {usage}")),
            }
        }
        if let Some(why) = req.problem() {
            return Err(format!("--layout {s:?}: {why}"));
        }
        Ok((name.to_string(), req))
    }
}

/// What the compiler decided for one layer: how its axes are read and the map that results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerView {
    pub layer: String,
    /// The layer's dims after the batch axis, as probed.
    pub shape: Vec<i64>,
    /// Never `auto`.
    pub layout: LayerLayout,
    pub channels: usize,
    /// Map height and width.
    pub grid: [usize; 2],
    pub prefix_tokens: usize,
    /// True when auto-detection decided.
    pub detected: bool,
    /// Why: "configured", or the evidence auto-detection used.
    pub reason: String,
}

impl LayerView {
    /// `[C, H, W]`-style dims after the view (the rank of the original channels-first reading is
    /// kept for `nchw`, so rank-2 and rank-3 layers compile exactly as before).
    pub fn viewed_rest(&self) -> Vec<i64> {
        match (self.layout, self.shape.len()) {
            (LayerLayout::Nchw, _) => self.shape.clone(),
            (_, 1) => self.shape.clone(),
            (LayerLayout::Nhwc, 2) => vec![self.shape[1], self.shape[0]],
            _ => vec![self.channels as i64, self.grid[0] as i64, self.grid[1] as i64],
        }
    }

    /// One line for people: `tokens [197, 768] → 768 channels × 14×14 map, 1 prefix token (auto: …)`.
    pub fn describe(&self) -> String {
        let dims = self.shape.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        let prefix = match self.prefix_tokens {
            0 if self.layout != LayerLayout::Tokens => String::new(),
            1 => ", 1 prefix token".to_string(),
            n => format!(", {n} prefix tokens"),
        };
        let how = if self.detected { format!("auto: {}", self.reason) } else { self.reason.clone() };
        format!(
            "{} [{dims}] -> {} channels x {}x{} map{prefix} ({how})",
            self.layout, self.channels, self.grid[0], self.grid[1]
        )
    }
}

/// Applies a layer's view to `x`, whose first `lead` axes are batch-like (`[B]` for the layer tensor,
/// `[B, K]` for its split-form gradient) followed by the layer's dims: the result is
/// `[lead…, C, H, W]` (`[lead…, C, L]` and `[lead…, C]` for `nchw` as before).
pub fn apply(b: &mut GraphBuilder, x: &str, lead: usize, v: &LayerView) -> String {
    let lead_axes: Vec<i64> = (0..lead as i64).collect();
    let perm = |tail: &[i64]| -> Vec<i64> {
        lead_axes.iter().copied().chain(tail.iter().map(|a| a + lead as i64)).collect()
    };
    match (v.layout, v.shape.len()) {
        (LayerLayout::Nchw | LayerLayout::Auto, _) | (_, 1) => x.to_string(),
        (LayerLayout::Nhwc, 2) => transpose(b, x, &perm(&[1, 0])),
        (LayerLayout::Nhwc, _) => transpose(b, x, &perm(&[2, 0, 1])),
        (LayerLayout::Tokens, _) => {
            let t = v.shape[0];
            let mut y = transpose(b, x, &perm(&[1, 0]));
            if v.prefix_tokens > 0 {
                let s = b.const_i64(&[v.prefix_tokens as i64]);
                let e = b.const_i64(&[t]);
                let a = b.const_i64(&[lead as i64 + 1]);
                y = b.op("Slice", &[&y, &s, &e, &a], vec![]);
            }
            let mut shape = vec![0; lead];
            shape.extend([v.channels as i64, v.grid[0] as i64, v.grid[1] as i64]);
            b.reshape_const(&y, &shape)
        }
    }
}

fn transpose(b: &mut GraphBuilder, x: &str, perm: &[i64]) -> String {
    b.op("Transpose", &[x], vec![crate::onnx::attr::ints("perm", perm)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let (n, r) = LayoutRequest::parse_flag("blocks.5=tokens,grid=14x14,prefix=1").unwrap();
        assert_eq!(n, "blocks.5");
        assert_eq!(
            r,
            LayoutRequest { layout: LayerLayout::Tokens, grid: Some([14, 14]), prefix_tokens: Some(1) }
        );
        let (n, r) = LayoutRequest::parse_flag("a=b=nhwc").unwrap();
        assert_eq!((n.as_str(), r.layout), ("a=b", LayerLayout::Nhwc));
        assert!(LayoutRequest::parse_flag("x=nchw,grid=2x2").unwrap_err().contains("grid"));
        assert!(LayoutRequest::parse_flag("x=rows").is_err());
        assert!(LayoutRequest::parse_flag("x=tokens,grid=14").is_err());
    }

    #[test]
    fn old_options_read_as_default() {
        let r: LayoutRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r, LayoutRequest::default());
    }
}
