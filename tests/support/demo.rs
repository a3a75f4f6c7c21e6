//! The demo digit encoder's configuration, written once for every test that runs the agent on it:
//! each test fills in only what it varies.

use std::path::{Path, PathBuf};

use super::{MODEL, repo_root};

/// The encoder's two monitored layers: (label, tensor).
pub const DEMO_LAYERS: [(&str, &str); 2] =
    [("conv2_in", "/pool1/MaxPool_output_0"), ("block2", "/pool2/MaxPool_output_0")];

/// A configuration of `models/digits/encoder.onnx` (model label [`MODEL`], embedding `embedding`).
/// Each field is the body of its section as TOML lines; [`DemoConfig::toml`] assembles them.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub layers: Vec<(&'static str, &'static str)>,
    /// `[model]` keys after name, path, embedding and layers (methods, smoothing, …).
    pub model: String,
    /// `[model.preprocessing]`, when not empty.
    pub preprocessing: String,
    /// `[engine]`; by default the CPU alone.
    pub engine: String,
    /// `[baseline]`; by default built from the shipped reference digits, kept in memory.
    pub baseline: String,
    /// `[window]`, when not empty.
    pub window: String,
    /// Everything after: `[[sources]]`, `[server]`, `[logging]`.
    pub rest: String,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            layers: DEMO_LAYERS.to_vec(),
            model: String::new(),
            preprocessing: String::new(),
            engine: "providers = [\"cpu\"]".into(),
            baseline: format!(
                "reference_dir = \"{}\"",
                repo_root().join("models/digits/reference.npy").display()
            ),
            window: String::new(),
            rest: String::new(),
        }
    }
}

impl DemoConfig {
    pub fn toml(&self) -> String {
        let layers: Vec<String> =
            self.layers.iter().map(|(n, t)| format!("{{ name = \"{n}\", tensor = \"{t}\" }}")).collect();
        let mut out = format!(
            "[model]\nname = \"{MODEL}\"\npath = \"{}\"\nembedding = \"embedding\"\nlayers = [{}]\n{}\n",
            repo_root().join("models/digits/encoder.onnx").display(),
            layers.join(", "),
            self.model
        );
        for (section, body) in [
            ("model.preprocessing", &self.preprocessing),
            ("engine", &self.engine),
            ("baseline", &self.baseline),
            ("window", &self.window),
        ] {
            if !body.is_empty() {
                out.push_str(&format!("\n[{section}]\n{body}\n"));
            }
        }
        out.push('\n');
        out.push_str(&self.rest);
        out
    }

    /// Writes `dir/agent.toml` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let p = dir.join("agent.toml");
        std::fs::write(&p, self.toml()).unwrap();
        p
    }
}
