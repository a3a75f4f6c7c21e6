//! The `agent` command line: a thin dispatcher into the library's modules
//! (contract: `docs/spec/agent.md#command-line`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use agent::cli;

#[derive(Parser)]
#[command(
    name = "agent",
    version,
    about = "Monitors whether a model's learned representation still works on today's data"
)]
struct Cli {
    /// Configuration file; without a subcommand, runs the daemon (= `agent run --config FILE`).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args)]
struct ConfigArg {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run(ConfigArg),
    /// Validate the configuration, model, layers and baseline; exit 1 listing every problem.
    Check(ConfigArg),
    /// Compute a reference baseline with a progress bar (or one shard of it; `merge` combines shards).
    Baseline(cli::baseline::BaselineArgs),
    /// Write the attribution graph of a model.
    Compile(cli::compile::CompileArgs),
    /// Score input files once.
    Score(cli::score::ScoreArgs),
    /// Draw the attribution heat map of one input.
    Explain(cli::explain::ExplainArgs),
    /// List the tensors of a model that can be monitored (shape, layout, op, rule path).
    Layers(cli::layers::LayersArgs),
    /// Compare data with a reference: every embedding detector and the paper's scores.
    Report(cli::report::ReportArgs),
    /// The demo's producer: stream clean, then drifted digits into a watched directory.
    DemoFeed(cli::demo::DemoFeedArgs),
}

fn report(r: anyhow::Result<i32>) -> ExitCode {
    match r {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs of the file verbs go to stderr (stdout carries their results); `RUST_LOG` sets the level.
fn init_cli_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => match cli.config {
            Some(config) => report(agent::daemon::command(&config).map(|_| 0)),
            None => {
                eprintln!("error: --config FILE is required (or a subcommand; see --help)");
                ExitCode::from(2)
            }
        },
        Some(Command::Run(c)) => report(agent::daemon::command(&c.config).map(|_| 0)),
        Some(Command::Check(c)) => ExitCode::from(agent::daemon::check::command(&c.config) as u8),
        Some(Command::Baseline(a)) => report(cli::baseline::run(&a).map(|_| 0)),
        Some(Command::Compile(a)) => {
            init_cli_logging();
            report(cli::compile::run(&a).map(|_| 0))
        }
        Some(Command::Score(a)) => {
            init_cli_logging();
            report(cli::score::run(&a))
        }
        Some(Command::DemoFeed(a)) => report(cli::demo::run(&a).map(|_| 0)),
        Some(Command::Layers(a)) => {
            init_cli_logging();
            report(cli::layers::run(&a).map(|_| 0))
        }
        Some(Command::Explain(a)) => {
            init_cli_logging();
            report(cli::explain::run(&a).map(|_| 0))
        }
        Some(Command::Report(a)) => {
            init_cli_logging();
            report(cli::report::run(&a))
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every subcommand's flags are well formed (unique names, …): clap checks this only when a
    /// subcommand is parsed, so a clash in a flattened settings type would otherwise show up at run time.
    #[test]
    fn command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
