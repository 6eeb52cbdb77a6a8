//! The `dealsync` binary: parse the command line, set up logging, run one command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = dealsync::cli::Cli::parse();
    init_logging();
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

/// Logs go to stderr; stdout is reserved for command output (the sandbox's JSON line, status).
/// `DEALSYNC_LOG` filters (default `info`); `DEALSYNC_LOG_FORMAT` picks `json` (one object per
/// line), `compact`, or `full`. Under systemd (`JOURNAL_STREAM` set) the default is compact
/// without timestamps or colours: journald stamps each line itself.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DEALSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = std::env::var("DEALSYNC_LOG_FORMAT").unwrap_or_else(|_| {
        if std::env::var_os("JOURNAL_STREAM").is_some() {
            "journald".into()
        } else {
            "full".into()
        }
    });
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format.as_str() {
        "json" => b.json().init(),
        "journald" => b.compact().without_time().with_ansi(false).init(),
        "compact" => b.compact().init(),
        _ => b.init(),
    }
}
