//! ONNX Runtime, loaded at run time.
//!
//! The shared library is the configured path if there is one, else `ORT_DYLIB_PATH` if set — an
//! explicit choice is the only candidate, so a broken one is an error, never silently replaced — else
//! the first that loads of the project-local installs made by `scripts/install-onnxruntime.sh`
//! (`.ort/gpu`, then `.ort/cpu`, searched from the working directory and from the executable's folder
//! upwards) and the system loader (`libonnxruntime.so` on the library path). One environment exists per process (an `ort` rule), so
//! it is created once and shared.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

/// The ONNX Runtime version this build targets (`ort`'s `api-31`).
pub const EXPECTED_VERSION: &str = "1.31";

/// Where a runtime library may come from, in the order they are tried.
pub fn candidate_libraries(configured: Option<&Path>) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    if let Some(p) = configured {
        return vec![("engine.onnxruntime_path in the configuration".to_string(), p.to_path_buf())];
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return vec![("ORT_DYLIB_PATH".to_string(), PathBuf::from(p))];
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        roots.extend(dir.ancestors().map(Path::to_path_buf));
    }
    let mut seen = std::collections::HashSet::new();
    for root in roots {
        for flavour in ["gpu", "cpu"] {
            let p = root.join(".ort").join(flavour).join("onnxruntime/capi/libonnxruntime.so.1.31.1");
            if seen.insert(p.clone()) && p.exists() {
                out.push((format!("project-local install ({flavour})"), p));
            }
        }
    }
    out.push(("the system library path".to_string(), PathBuf::from("libonnxruntime.so")));
    out
}

/// What was loaded, for logs and the build-info metric.
#[derive(Debug, Clone)]
pub struct LoadedRuntime {
    pub path: PathBuf,
    pub origin: String,
}

static RUNTIME: OnceLock<std::result::Result<(Environment, LoadedRuntime), String>> = OnceLock::new();

/// The install hint printed when no library loads.
pub const INSTALL_HINT: &str = "ONNX Runtime 1.31 was not found. Install it project-locally with \
`scripts/install-onnxruntime.sh` (CPU; add `--gpu` for CUDA), or point `ORT_DYLIB_PATH` or \
`engine.onnxruntime_path` at libonnxruntime.so.1.31.x (for example from `pip install onnxruntime==1.31.1`, \
file onnxruntime/capi/libonnxruntime.so.1.31.1).";

/// Loads ONNX Runtime (once per process) and returns the shared environment.
///
/// Later calls return the first result whatever path they pass: a process has one runtime.
pub fn environment(configured: Option<&Path>) -> Result<(&'static Environment, &'static LoadedRuntime)> {
    let loaded = RUNTIME.get_or_init(|| {
        let mut tried = Vec::new();
        for (origin, path) in candidate_libraries(configured) {
            let is_bare = path.components().count() == 1;
            if !is_bare && !path.exists() {
                tried.push(format!("  {origin}: {} (no such file)", path.display()));
                continue;
            }
            // `init_from` dlopens the library; a failure leaves nothing loaded, so the next may be tried.
            match ort::init_from(&path) {
                Ok(builder) => match builder.with_name("agent").build() {
                    Ok(env) => {
                        tracing::info!(path = %path.display(), %origin, "loaded ONNX Runtime");
                        return Ok((env, LoadedRuntime { path, origin }));
                    }
                    Err(e) => tried.push(format!("  {origin}: {}: {e}", path.display())),
                },
                Err(e) => tried.push(format!("  {origin}: {}: {e}", path.display())),
            }
        }
        Err(format!("{INSTALL_HINT}\nTried:\n{}", tried.join("\n")))
    });
    match loaded {
        Ok((env, rt)) => Ok((env, rt)),
        Err(msg) => Err(anyhow!("{msg}")),
    }
}

/// Which execution provider to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cuda,
    Cpu,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        }
    }
}

/// Session options the engine cares about.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Providers in order of preference; the first that registers is used.
    pub providers: Vec<Provider>,
    /// Intra-op threads (0 = ONNX Runtime's default).
    pub threads: usize,
    pub device_id: i32,
    /// ONNX Runtime's `session.intra_op.allow_spinning`.
    pub spinning: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self { providers: vec![Provider::Cpu], threads: 0, device_id: 0, spinning: false }
    }
}

/// Builds a session from model bytes with the first provider that registers.
///
/// Returns the session and the provider that actually runs it. CUDA is registered with
/// `error_on_failure`, so a missing CUDA provider or driver is seen here, logged, and answered with
/// the next provider instead of a silent fallback inside ONNX Runtime.
pub fn session(env: &Environment, model: &[u8], opts: &SessionOptions) -> Result<(Session, Provider)> {
    let mut errors = Vec::new();
    for &provider in &opts.providers {
        let mut builder = Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(ort::Error::<()>::from)?;
        if opts.threads > 0 {
            builder = builder.with_intra_threads(opts.threads).map_err(ort::Error::<()>::from)?;
        }
        builder = builder.with_intra_op_spinning(opts.spinning).map_err(ort::Error::<()>::from)?;
        if provider == Provider::Cuda {
            let cuda = ort::ep::CUDA::default().with_device_id(opts.device_id).build().error_on_failure();
            match builder.with_execution_providers([cuda]) {
                Ok(b) => builder = b,
                Err(e) => {
                    tracing::warn!(error = %e, "CUDA execution provider unavailable");
                    errors.push(format!("cuda: {e}"));
                    continue;
                }
            }
        }
        match builder.commit_from_memory(model) {
            Ok(s) => return Ok((s, provider)),
            Err(e) => errors.push(format!("{}: {e}", provider.as_str())),
        }
    }
    if opts.providers.is_empty() {
        bail!("no execution provider configured");
    }
    Err(anyhow!("could not create an ONNX Runtime session: {}", errors.join("; ")))
}

/// Loads the runtime with default options and builds a CPU session: the common path of tests and tools.
pub fn cpu_session(model: &[u8]) -> Result<Session> {
    let (env, _) = environment(None)?;
    let (s, _) = session(env, model, &SessionOptions::default()).context("building a CPU session")?;
    Ok(s)
}
