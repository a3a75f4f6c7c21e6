//! `agent baseline`: build a reference baseline in one process, or one shard of it per worker
//! (`--shard I/N`), and `agent baseline merge` to combine the shards' partials.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::drift::Shard;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BaselineArgs {
    #[command(subcommand)]
    pub action: Option<BaselineAction>,
    /// Configuration file (TOML).
    #[arg(long, required = true)]
    pub config: Option<PathBuf>,
    /// Reference data: a directory of .npy/.npz/.png/.jpg files, or one batch file.
    #[arg(long, required = true)]
    pub reference: Option<PathBuf>,
    /// Where to write the baseline (with --shard: the partial).
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// Score only shard I of N (the reference samples whose index is I mod N) and write a partial
    /// baseline, to be combined with `agent baseline merge`.
    #[arg(long, value_name = "I/N", value_parser = Shard::parse)]
    pub shard: Option<Shard>,
}

#[derive(Debug, Subcommand)]
pub enum BaselineAction {
    /// Combine the partials of `agent baseline --shard I/N` (all N of them) into one baseline.
    Merge {
        /// The partial baselines, in any order.
        #[arg(required = true, value_name = "PARTIAL")]
        partials: Vec<PathBuf>,
        /// Where to write the merged baseline.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(a: &BaselineArgs) -> Result<()> {
    match &a.action {
        Some(BaselineAction::Merge { partials, out }) => {
            crate::daemon::baseline::merge_command(partials, out)
        }
        None => {
            let (Some(config), Some(reference), Some(out)) = (&a.config, &a.reference, &a.out) else {
                anyhow::bail!("give --config FILE --reference DIR --out BASELINE");
            };
            crate::daemon::baseline::command(config, reference, out, a.shard)
        }
    }
}
