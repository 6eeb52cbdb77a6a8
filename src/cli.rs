//! The command line: parses arguments with clap and runs one command. `main` only calls
//! [`run`] and turns its outcome into an exit code.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::sandbox::{self, PortalSpec, SandboxConfig};

/// Exit codes that tell an operator (or systemd) what kind of failure happened (sysexits.h).
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 64;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const CONFIG: u8 = 78;
}

#[derive(Debug, Parser)]
#[command(
    name = "dealsync",
    version,
    about = "Two-way sync of shared partner deals between HubSpot portals"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sync daemon: pollers, sweep and workers, until SIGTERM or SIGINT.
    Run(ConfigArgs),
    /// Validate a config file and the secrets it points to, without starting anything.
    CheckConfig(ConfigArgs),
    /// Create the custom properties dealsync needs in every configured portal (idempotent).
    Setup(SetupArgs),
    /// Serve local emulated HubSpot portals (for tests, rehearsals and the demo).
    Sandbox(SandboxArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The TOML config file (see config/example.toml).
    #[arg(long, env = "DEALSYNC_CONFIG")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Only print what would be created.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Portals to serve, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "hubspot,partner-a,partner-b"
    )]
    pub portals: Vec<String>,
    /// Where a portal's webhooks go, as PORTAL=URL (repeatable).
    #[arg(long = "webhook-target", value_parser = parse_target)]
    pub webhook_targets: Vec<(String, String)>,
    /// Requests per rolling 10 seconds per portal (HubSpot's default is 100); 0 turns the limit off.
    #[arg(long, default_value_t = 100)]
    pub rate_limit: u32,
    /// Requests per day per portal; 0 turns the limit off.
    #[arg(long, default_value_t = 250_000)]
    pub daily_limit: u64,
    /// Search requests per second per portal; 0 turns the limit off.
    #[arg(long, default_value_t = 4)]
    pub search_rate_limit: u32,
    /// Keep state in this JSON file across restarts (default: in memory only).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Seed for generated credentials and fault injection, for repeatable runs.
    #[arg(long)]
    pub seed: Option<u64>,
}

fn parse_target(s: &str) -> Result<(String, String), String> {
    let (portal, url) = s
        .split_once('=')
        .ok_or_else(|| format!("expected PORTAL=URL, got {s:?}"))?;
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url} must be an http or https URL"));
    }
    Ok((portal.to_owned(), url.to_owned()))
}

/// An error a command reports, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

/// Runs one parsed command to completion.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run(args) => run_daemon(args).await,
        Command::CheckConfig(args) => {
            let config = load_config(&args)?;
            println!(
                "config OK: {} partner portal(s), {} synced field(s), store {}",
                config.partners.len(),
                config.fields.len(),
                config.store_path.display()
            );
            Ok(())
        }
        Command::Setup(args) => run_setup(args).await,
        Command::Sandbox(args) => run_sandbox(args).await,
    }
}

fn load_config(args: &ConfigArgs) -> Result<crate::config::Config, CliError> {
    crate::config::Config::load(&args.config).map_err(|e| CliError {
        code: exit::CONFIG,
        message: format!("{e}\n(config file: {})", args.config.display()),
    })
}

async fn run_daemon(args: ConfigArgs) -> Result<(), CliError> {
    let config = load_config(&args)?;
    let handle = crate::daemon::DaemonHandle::start(config.daemon_parts())
        .await
        .map_err(|e| CliError {
            code: exit::UNAVAILABLE,
            message: e.to_string(),
        })?;
    shutdown_signal().await;
    tracing::info!("stopping: finishing in-flight work");
    handle.shutdown().await;
    Ok(())
}

async fn run_setup(args: SetupArgs) -> Result<(), CliError> {
    let config = load_config(&args.config)?;
    let parts = config.daemon_parts();
    let mut total = 0;
    for p in std::iter::once(&parts.hubspot).chain(parts.partners.iter()) {
        let client = crate::crm::Client::new(
            &p.name,
            &p.base_url,
            &p.token,
            std::sync::Arc::new(crate::crm::Budget::new(
                p.rate_limit_per_10s,
                p.search_per_s,
            )),
            parts.retry,
        )
        .map_err(|e| CliError {
            code: exit::UNAVAILABLE,
            message: e.to_string(),
        })?;
        let actions = crate::setup::ensure(&client, args.dry_run)
            .await
            .map_err(|e| CliError {
                code: exit::UNAVAILABLE,
                message: format!("{e}; nothing further was changed in {}", p.name),
            })?;
        for a in &actions {
            println!(
                "{}{}: {}",
                if args.dry_run { "would " } else { "" },
                a.portal,
                a.what
            );
        }
        total += actions.len();
    }
    if total == 0 {
        println!("nothing to do: every portal already has what dealsync needs");
    }
    for line in crate::setup::webhook_instructions(&config) {
        println!("{line}");
    }
    Ok(())
}

fn limit<T: PartialEq + Default>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

async fn run_sandbox(args: SandboxArgs) -> Result<(), CliError> {
    let config = SandboxConfig {
        listen: args.listen,
        portals: args
            .portals
            .iter()
            .map(|p| PortalSpec::named(p.trim()))
            .collect(),
        rate_limit_per_10s: limit(args.rate_limit),
        daily_limit: limit(args.daily_limit),
        search_per_s: limit(args.search_rate_limit),
        state_file: args.state,
        webhook_targets: args.webhook_targets,
        seed: args.seed,
        ..SandboxConfig::default()
    };
    let handle = sandbox::start(config).await.map_err(|e| CliError {
        code: match e {
            sandbox::SandboxError::Bind { .. } => exit::UNAVAILABLE,
            _ => exit::CONFIG,
        },
        message: e.to_string(),
    })?;
    // Exactly one line on stdout: scripts and tests read the credentials from it.
    let line = serde_json::to_string(&handle.startup()).map_err(|e| CliError {
        code: exit::SOFTWARE,
        message: e.to_string(),
    })?;
    println!("{line}");
    tracing::info!(base_url = %handle.base_url, "sandbox serving; Ctrl-C or SIGTERM stops it");
    shutdown_signal().await;
    tracing::info!("stopping sandbox");
    handle.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
