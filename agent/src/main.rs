//! The `agent` command line: a thin dispatcher into the library's modules.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "agent",
    version,
    about = "Monitors whether a model's learned representation still works on today's data"
)]
struct Cli {
    /// Configuration file; without a subcommand, runs the daemon (= `agent run --config FILE`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run,
    /// Validate the configuration, model, layers and baseline; exit 1 listing every problem.
    Check,
    /// Compute a reference baseline with a progress bar.
    Baseline {
        /// Reference data: a directory of .npy/.npz files, or one batch file.
        #[arg(long)]
        reference: PathBuf,
        /// Where to write the baseline.
        #[arg(long)]
        out: PathBuf,
    },
}

fn need_config(c: &Option<PathBuf>) -> Result<PathBuf, ExitCode> {
    c.clone().ok_or_else(|| {
        eprintln!("error: --config FILE is required");
        ExitCode::from(2)
    })
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Each arm asks for what it needs, so verbs without a configuration fit in beside these.
    let config = need_config(&cli.config);
    match (cli.command, config) {
        (_, Err(code)) => code,
        (None | Some(Command::Run), Ok(config)) => report(agent::daemon::command(&config)),
        (Some(Command::Check), Ok(config)) => ExitCode::from(agent::daemon::check::command(&config) as u8),
        (Some(Command::Baseline { reference, out }), Ok(config)) => {
            report(agent::daemon::baseline::command(&config, &reference, &out))
        }
    }
}
