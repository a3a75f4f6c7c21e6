//! The agent library: attribution graphs, scores, drift, and the daemon around them.
//!
//! Data flows sources → decoders (crate `plugins`) → engine → scores → drift windows → telemetry;
//! see ARCHITECTURE.md for the map.

// No `unsafe` anywhere in the crate; ndarray's `s![]` macro expands to an `unsafe` block, so slices are
// taken with `slice_axis` instead.
#![forbid(unsafe_code)]

pub mod cli;
pub mod compiler;
pub mod config;
pub mod daemon;
pub mod detectors;
pub mod drift;
pub mod engine;
pub mod onnx;
pub mod runtime;
pub mod scores;
pub mod telemetry;

/// The dependency rule of ARCHITECTURE.md ("Invariants"), checked on the source: `scores` uses
/// nothing else of the crate, `drift` nothing but `scores`. Read from the files, so a new `use` that
/// breaks the rule fails here, not in review.
#[cfg(test)]
mod layers {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Every `crate::<module>` a folder's sources name (imports and paths alike), comments included:
    /// a doc link to another layer is a dependency of the reader too.
    fn crate_modules(dir: &Path) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.extend(crate_modules(&path));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, _) in text.match_indices("crate::") {
                // `agent::crate::x` does not exist; skip `$crate::` in macros.
                if text[..i].ends_with('$') {
                    continue;
                }
                let rest = &text[i + "crate::".len()..];
                let name: String =
                    rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
        found
    }

    #[test]
    fn scores_and_drift_depend_on_nothing_else() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let scores = crate_modules(&src.join("scores"));
        assert!(scores.iter().all(|m| m == "scores"), "scores/ uses {scores:?}");
        let drift = crate_modules(&src.join("drift"));
        assert!(drift.iter().all(|m| m == "scores" || m == "drift"), "drift/ uses {drift:?}");
        // The check sees what it must: the engine names the scores.
        assert!(crate_modules(&src.join("engine")).contains("scores"));
    }
}
