//! `agent compile`: write the attribution graph of a model, for inspection or to ship as an artifact.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use crate::compiler::{self, CompileOptions};
use crate::engine::LayerSpec;
use crate::scores::{Aggregation, Method};

#[derive(Debug, Clone, Args)]
pub struct CompileArgs {
    /// The forward ONNX model.
    #[arg(long)]
    pub model: PathBuf,
    /// The rank-2 embedding output `[B, D]`.
    #[arg(long)]
    pub embedding: String,
    /// Intermediate tensor(s) to attribute to; repeat for several.
    #[arg(long = "layer", required = true)]
    pub layers: Vec<String>,
    /// Attribution method(s), repeatable: vanilla, actgrad, gradcam [default: vanilla].
    #[arg(long = "method", value_name = "METHOD")]
    pub methods: Vec<Method>,
    /// Channel aggregation in the graph (mean, abs, var), or `none` for raw `[B, K, C, H, W]` maps.
    #[arg(long, default_value = "abs")]
    pub channel_agg: String,
    /// Smoothing points per sample averaged inside the graph: the model's batch then holds this many
    /// consecutive points per sample (docs/spec/scores.md#smoothed-attributions).
    #[arg(long, visible_alias = "samples", value_name = "S", default_value_t = 1)]
    pub smoothing_points: usize,
    /// How a layer's axes are read: `TENSOR=auto|nchw|nhwc|tokens[,grid=GHxGW][,prefix=N]`
    /// (default auto); repeat per layer.
    #[arg(long = "layout", value_name = "TENSOR=LAYOUT")]
    pub layouts: Vec<String>,
    /// Where to write the attribution graph.
    #[arg(long)]
    pub out: PathBuf,
    /// Text models with a dynamic sequence length: the length the graph is compiled at.
    #[arg(long, value_name = "T", default_value_t = 128)]
    pub max_length: usize,
}

pub fn run(args: &CompileArgs) -> Result<()> {
    let channel_agg = match args.channel_agg.as_str() {
        "none" => None,
        s => Some(s.parse::<Aggregation>().map_err(anyhow::Error::msg)?),
    };
    let mut specs: Vec<LayerSpec> = args
        .layers
        .iter()
        .map(|t| LayerSpec { name: t.clone(), tensor: t.clone(), ..Default::default() })
        .collect();
    super::apply_layouts(&mut specs, &args.layouts)?;
    let opts = CompileOptions {
        embedding: args.embedding.clone(),
        layers: args.layers.clone(),
        methods: if args.methods.is_empty() { vec![Method::Vanilla] } else { args.methods.clone() },
        channel_agg,
        smoothing_samples: args.smoothing_points.max(1),
        layouts: specs.iter().map(LayerSpec::layout_request).collect(),
    };
    let bytes = std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let start = Instant::now();
    let model =
        crate::onnx::decode(&bytes).with_context(|| format!("{} is not ONNX", args.model.display()))?;
    // A text model is compiled at a fixed length; its inputs' roles are printed below.
    let model = compiler::inputs::with_dynamic_length_fixed(&model, args.max_length)?.unwrap_or(model);
    let graph = compiler::compile(&model, &compiler::sha256_hex(&bytes), &opts)
        .with_context(|| format!("compiling {}", args.model.display()))?;
    let elapsed = start.elapsed();
    let out = graph.to_bytes();
    std::fs::write(&args.out, &out).with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} ({} bytes) in {:.2} s: embedding {} (D = {}), inputs {} + {} [K, {}]",
        args.out.display(),
        out.len(),
        elapsed.as_secs_f64(),
        graph.embedding,
        graph.embedding_dim,
        graph.inputs.iter().map(|i| format!("{} [N, {:?}]", i.name, i.rest)).collect::<Vec<_>>().join(", "),
        compiler::COTANGENT,
        graph.embedding_dim
    );
    for o in &graph.outputs {
        let shape = if channel_agg.is_some() {
            format!("[N, K, {}, {}]", o.height, o.width)
        } else {
            format!("[N, K, {}, {}, {}]", o.channels, o.height, o.width)
        };
        println!("  output {:16} {shape:22} layer {} ({} channels)", o.name, o.layer, o.channels);
    }
    for v in &graph.views {
        println!("  layer {}: {}", v.layer, v.describe());
    }
    let declared: Vec<(String, i32)> = graph.inputs.iter().map(|i| (i.name.clone(), i.elem_type)).collect();
    if let Ok(roles) = compiler::decide_roles(&declared, &Default::default())
        && compiler::inputs::is_text(&roles)
    {
        for r in roles {
            println!("  input {}", r.describe());
        }
    }
    Ok(())
}
