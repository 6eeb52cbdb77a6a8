//! The `dealsync` binary: parse the command line, set up logging, run one command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = dealsync::cli::Cli::parse();
    // Logs go to stderr; stdout is reserved for command output (the sandbox's JSON line).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DEALSYNC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dealsync: cannot start the async runtime: {e}");
            return ExitCode::from(dealsync::cli::exit::SOFTWARE);
        }
    };
    match runtime.block_on(dealsync::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dealsync: {e}");
            ExitCode::from(e.code)
        }
    }
}
