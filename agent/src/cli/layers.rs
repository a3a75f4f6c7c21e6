//! `agent layers`: the tensors of a model that can be monitored, with their shape, layout, producing
//! operator and depth, and for each whether the gradient reaches it from the embedding (every operator
//! between them has a rule) or which node blocks it — so a user need not guess tensor names.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::compiler::layers;

#[derive(Debug, Clone, Args)]
pub struct LayersArgs {
    /// The ONNX model.
    #[arg(long)]
    pub model: PathBuf,
    /// The rank-2 embedding `[batch, D]` to check paths to (default: the model's first rank-2 output;
    /// the candidates are listed).
    #[arg(long)]
    pub embedding: Option<String>,
    /// Only tensors whose path to the embedding has a rule for every operator.
    #[arg(long)]
    pub monitorable: bool,
    /// One JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &LayersArgs) -> Result<()> {
    let bytes = std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let model = crate::onnx::decode(&bytes)
        .with_context(|| format!("{} is not a valid ONNX model", args.model.display()))?;
    let mut report = layers::list(&model, args.embedding.as_deref())
        .with_context(|| format!("listing the layers of {}", args.model.display()))?;
    if args.monitorable {
        report.tensors.retain(|t| t.monitorable);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    if report.embedding_chosen {
        writeln!(out, "embedding candidates ([batch, D] tensors; choose one with --embedding):")?;
        for c in &report.embedding_candidates {
            let tag = if c.graph_output { " (model output)" } else { "" };
            writeln!(out, "  {} [batch, {}]{tag}", c.name, c.dim)?;
        }
        writeln!(out, "checked against embedding {}", report.embedding)?;
    } else {
        writeln!(out, "embedding {}", report.embedding)?;
    }
    let name_w = report.tensors.iter().map(|t| t.name.len()).max().unwrap_or(6).clamp(6, 60);
    writeln!(
        out,
        "{:>5}  {:name_w$}  {:18} {:22} {:7} {:>12}  path to the embedding",
        "depth", "tensor", "op", "shape", "layout", "map"
    )?;
    for t in &report.tensors {
        let shape = format!("[{}]", t.shape.iter().map(i64::to_string).collect::<Vec<_>>().join(", "));
        let map = if t.prefix_tokens > 0 {
            format!("{}x{}+{}", t.grid[0], t.grid[1], t.prefix_tokens)
        } else {
            format!("{}x{}", t.grid[0], t.grid[1])
        };
        let path = match &t.blocked_by {
            None => "ok".to_string(),
            Some(b) => format!("blocked by {} ({}): {}", b.node, b.op, b.why),
        };
        writeln!(
            out,
            "{:>5}  {:name_w$}  {:18} {:22} {:7} {:>12}  {path}",
            t.depth, t.name, t.op, shape, t.layout, map
        )?;
    }
    let ok = report.tensors.iter().filter(|t| t.monitorable).count();
    writeln!(out, "{} tensor(s), {ok} monitorable", report.tensors.len())?;
    for s in &report.skipped {
        writeln!(out, "skipped: {s}")?;
    }
    Ok(())
}
