//! The `dealsync` binary: parse the command line, set up logging, run one command.

use std::ffi::OsStr;
use std::io::IsTerminal;
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
/// without timestamps or colours: journald stamps each line itself. Colour only on a terminal
/// (see [`use_colour`]).
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
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_env_filter(filter);
    match format.as_str() {
        "json" => b.json().init(),
        "journald" => b.compact().without_time().with_ansi(false).init(),
        "compact" => b.compact().init(),
        _ => b.init(),
    }
}

/// Whether log lines carry ANSI colour: only for a person at a terminal, never in a file or a
/// pipe (`2>daemon.log`), and never when `NO_COLOR` has a value (https://no-color.org: any
/// non-empty value turns colour off; an empty one does not).
fn use_colour(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let set = Some(OsStr::new("1"));
        assert!(use_colour(true, None));
        assert!(
            use_colour(true, Some(OsStr::new(""))),
            "empty NO_COLOR is unset"
        );
        assert!(!use_colour(true, set));
        assert!(
            !use_colour(true, Some(OsStr::new("false"))),
            "any value counts"
        );
        assert!(!use_colour(false, None), "a file or a pipe");
        assert!(!use_colour(false, set));
    }
}
