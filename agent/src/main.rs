//! `agent`: the daemon and the command-line verbs (spec `shared/spec/agent.md`, "Command line").

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use agent::cli;

#[derive(Parser)]
#[command(name = "agent", version, about = "Representation-drift monitoring for ONNX models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the attribution graph of a model.
    Compile(cli::compile::CompileArgs),
    /// Score input files once.
    Score(cli::score::ScoreArgs),
    /// Draw the attribution heat map of one input.
    Explain(cli::explain::ExplainArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    let result = match &cli.command {
        Command::Compile(a) => cli::compile::run(a).map(|_| 0),
        Command::Score(a) => cli::score::run(a),
        Command::Explain(a) => cli::explain::run(a).map(|_| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
