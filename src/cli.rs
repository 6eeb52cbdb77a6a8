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
    /// The input was refused on its merits (a registration that fails a condition).
    pub const DATAERR: u8 = 65;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const CANTCREAT: u8 = 73;
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
    /// Probes every portal first and stops, with the table, if one lacks what it needs.
    Setup(SetupArgs),
    /// Check each configured portal for every scope and feature dealsync relies on; exit 0
    /// only if the configured setup can run. Writes only an unassociated note, temporary
    /// properties and a small file, each archived or deleted at once.
    Probe(ProbeArgs),
    /// Show links, queue, portals, dead letters and conflicts (works while the daemon runs).
    Status(StatusArgs),
    /// Re-run dead-lettered jobs (after fixing their cause) and mark each entry's outcome.
    Replay(ReplayArgs),
    /// Release a portal held by the mass-deletion guard, after checking the portal and token.
    Resume(ResumeArgs),
    /// Print the link that installs the operator's OAuth app in a portal (send it to the
    /// partner's HubSpot admin; it works once, within a week).
    InstallLink(ResumeArgs),
    /// Register an existing partner deal as a shared deal (refused, with the reason, unless
    /// the partner is under capacity and the deal has a company and a contact).
    Register(RegisterArgs),
    /// Serve local emulated HubSpot portals (for tests, rehearsals and the demo).
    Sandbox(SandboxArgs),
    /// Run the sandbox and the daemon together and walk through a shared deal, verifying
    /// every step (needs nothing but this binary; nothing leaves 127.0.0.1).
    Demo,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The portal to release ("hubspot" or a partner's name).
    #[arg(long)]
    pub portal: String,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Probe only this portal ("hubspot" or a partner's name).
    #[arg(long)]
    pub portal: Option<String>,
    /// Print the checks as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print JSON (a stable, documented shape) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Show one deal's whole picture: a partner or HubSpot deal id.
    #[arg(long)]
    pub deal: Option<String>,
    /// With --deal: do not read the deal's current values from the portals.
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, Args)]
#[group(id = "which", required = true, multiple = false, args = ["all", "id", "class"])]
pub struct ReplayArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Every open entry (not yet replayed successfully).
    #[arg(long)]
    pub all: bool,
    /// These entries (repeatable).
    #[arg(long)]
    pub id: Vec<String>,
    /// Open entries of one class (e.g. unmapped_stage, exhausted, permanent).
    #[arg(long)]
    pub class: Option<String>,
    /// Only list what would be replayed.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The TOML config file (see config/example.toml).
    #[arg(long, env = "DEALSYNC_CONFIG")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("lead").required(true).args(["deal", "contact", "company"])))]
pub struct RegisterArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The partner (as named in the config).
    #[arg(long)]
    pub partner: String,
    /// An existing partner deal to convert.
    #[arg(long)]
    pub deal: Option<String>,
    /// Register a new deal from this partner contact.
    #[arg(long, requires = "name")]
    pub contact: Option<String>,
    /// Register a new deal from this partner company.
    #[arg(long, requires = "name")]
    pub company: Option<String>,
    /// The new deal's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Product interest, comma-separated (marketing_hub, sales_hub, service_hub, …).
    #[arg(long, value_delimiter = ',')]
    pub products: Vec<String>,
    /// Intro note.
    #[arg(long)]
    pub intro: Option<String>,
    /// Specific pain / opportunity.
    #[arg(long)]
    pub pain: Option<String>,
    /// Next steps.
    #[arg(long)]
    pub next_steps: Option<String>,
    /// Check and say what would happen; write nothing anywhere.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Only print what would be created (with --project: print the project's files).
    #[arg(long)]
    pub dry_run: bool,
    /// Also write the HubSpot developer project of the app (hsproject.json, the app and its
    /// webhooks) into DIR, for `hs project upload`.
    #[arg(long, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// With --project: replace project files that differ from what dealsync writes (by
    /// default such a file is refused and nothing is written).
    #[arg(long, requires = "project")]
    pub force: bool,
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
    /// Search requests per second per portal (account, as HubSpot counts it); 0 turns the limit off.
    #[arg(long, default_value_t = 5)]
    pub search_rate_limit: u32,
    /// Keep state in this JSON file across restarts (default: in memory only).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Seed for generated credentials and fault injection, for repeatable runs.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Lifetime of an OAuth access token in seconds (HubSpot's is 1800).
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    pub oauth_token_ttl_s: u64,
    /// Once listening, write `export DEALSYNC_SANDBOX_<PORTAL>_TOKEN=…` and `…_WEBHOOK_SECRET=…`
    /// lines to this file (owner-only: they are secrets), for a shell to source.
    #[arg(long)]
    pub env_file: Option<PathBuf>,
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
        Command::Probe(args) => run_probe(args).await,
        Command::Status(args) => run_status(args).await,
        Command::Replay(args) => run_replay(args).await,
        Command::Register(args) => run_register(args).await,
        Command::Resume(args) => {
            let config = load_config(&args.config)?;
            let store = crate::store::Store::open_alongside(&config.store_path)
                .await
                .map_err(unavailable)?;
            let portal = args.portal.clone();
            let was = store
                .call(move |c| crate::store::resume_portal(c, &portal))
                .await
                .map_err(unavailable)?;
            if was {
                println!(
                    "{}: mass-deletion guard released; deletions are acted on again",
                    args.portal
                );
            } else {
                println!(
                    "{}: the mass-deletion guard was not holding this portal",
                    args.portal
                );
            }
            Ok(())
        }
        Command::InstallLink(args) => run_install_link(args).await,
        Command::Sandbox(args) => run_sandbox(args).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "dealsync",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Demo => crate::demo::run().await.map_err(|e| CliError {
            code: exit::SOFTWARE,
            message: e.to_string(),
        }),
    }
}

fn usage(message: String) -> CliError {
    CliError {
        code: exit::USAGE,
        message,
    }
}

fn unavailable(e: impl std::fmt::Display) -> CliError {
    CliError {
        code: exit::UNAVAILABLE,
        message: e.to_string(),
    }
}

fn software(e: impl std::fmt::Display) -> CliError {
    CliError {
        code: exit::SOFTWARE,
        message: e.to_string(),
    }
}

async fn run_install_link(args: ResumeArgs) -> Result<(), CliError> {
    let config = load_config(&args.config)?;
    let portal = config.portal(&args.portal).ok_or_else(|| {
        usage(format!(
            "{}: no such portal in the config; use \"hubspot\" or a [[partners]] name",
            args.portal
        ))
    })?;
    let (crate::config::PortalAuth::OAuth, Some(app)) = (&portal.auth, &config.oauth) else {
        return Err(usage(format!(
            "{}: this portal uses a static token; set auth = \"oauth\" for it (and an [oauth] app) to install by OAuth",
            args.portal
        )));
    };
    let store = crate::store::Store::open_alongside(&config.store_path)
        .await
        .map_err(unavailable)?;
    let link = crate::oauth::install_link(app, &store, &args.portal)
        .await
        .map_err(unavailable)?;
    println!("{link}");
    eprintln!(
        "Send this link to {}'s HubSpot admin. It installs the app in the account they pick; dealsync binds that account to {} when HubSpot sends them back to {}.",
        args.portal, args.portal, app.redirect_url
    );
    Ok(())
}

/// A client for a portal; an OAuth portal reads its install from the store (beside a daemon
/// that may be running).
async fn client_for(
    p: &crate::daemon::PortalConn,
    retry: crate::crm::RetryPolicy,
    store_path: &std::path::Path,
) -> Result<crate::crm::Client, CliError> {
    let store = match p.oauth {
        Some(_) => Some(
            crate::store::Store::open_alongside(store_path)
                .await
                .map_err(unavailable)?,
        ),
        None => None,
    };
    p.client(retry, store.as_ref()).map_err(unavailable)
}

async fn run_status(args: StatusArgs) -> Result<(), CliError> {
    let config = load_config(&args.config)?;
    let (db, dl) = (config.store_path.clone(), config.dead_letter_path.clone());
    let quiet = config
        .webhooks
        .as_ref()
        .map_or(std::time::Duration::from_secs(600), |w| w.quiet_after);
    let deal = args.deal.clone();
    let fields: Vec<String> = config.fields.iter().map(|f| f.name.clone()).collect();
    let read = tokio::task::spawn_blocking(move || {
        let c = crate::status::open(&db)?;
        match deal {
            None => crate::status::overview(&c, &dl, quiet, crate::store::now_ms()).map(Ok),
            Some(d) => crate::status::deal(&c, &dl, &d, &fields).map(Err),
        }
    })
    .await
    .map_err(software)?
    .map_err(unavailable)?;
    match read {
        Ok(s) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&s).map_err(software)?);
            } else {
                print!("{}", crate::status::render(&s));
            }
        }
        Err(mut d) => {
            if !args.offline {
                fill_current_values(&config, &mut d).await;
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&d).map_err(software)?);
            } else {
                print!("{}", crate::status::render_deal(&d));
            }
        }
    }
    Ok(())
}

/// Reads the deal's current field values from both portals; failures are reported on stderr
/// and leave the values empty (status is for looking, it never fails on a portal).
async fn fill_current_values(config: &crate::config::Config, d: &mut crate::status::DealStatus) {
    let parts = crate::daemon::DaemonParts::from_config(config);
    let retry = crate::crm::RetryPolicy {
        max_retries: 1,
        timeout: std::time::Duration::from_secs(10),
        ..parts.retry
    };
    for l in &mut d.links {
        let specs: Vec<&crate::engine::FieldSpec> = config.fields.iter().collect();
        let sides = [
            (Some(&parts.hubspot), l.hubspot_deal_id.clone(), true),
            (
                parts.partners.iter().find(|p| p.name == l.partner),
                l.partner_deal_id.clone(),
                false,
            ),
        ];
        for (conn, id, hubspot) in sides {
            let Some(conn) = conn else { continue };
            let props: Vec<String> = specs
                .iter()
                .map(|f| {
                    if hubspot {
                        f.hubspot_property.clone()
                    } else {
                        f.partner_property.clone()
                    }
                })
                .collect();
            let rec = match client_for(conn, retry, &parts.store_path).await {
                Ok(c) => c.get("deals", &id, &props).await,
                Err(e) => {
                    eprintln!(
                        "cannot read current values from {}: {}",
                        conn.name, e.message
                    );
                    continue;
                }
            };
            match rec {
                Ok(Some(r)) => {
                    for f in &mut l.fields {
                        let Some(spec) = specs.iter().find(|s| s.name == f.field) else {
                            continue;
                        };
                        let prop = if hubspot {
                            &spec.hubspot_property
                        } else {
                            &spec.partner_property
                        };
                        let v = r.get(prop).map(str::to_owned);
                        if hubspot {
                            f.hubspot_value = v;
                        } else {
                            f.partner_value = v;
                        }
                    }
                }
                Ok(None) => eprintln!("deal {id} is archived or deleted in {}", conn.name),
                Err(e) => eprintln!("cannot read current values from {}: {e}", conn.name),
            }
        }
    }
}

async fn run_replay(args: ReplayArgs) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let config = load_config(&args.config)?;
    let path = config.dead_letter_path.clone();
    let p2 = path.clone();
    let file = tokio::task::spawn_blocking(move || crate::deadletter::read_all(&p2))
        .await
        .map_err(software)?
        .map_err(unavailable)?;
    for w in &file.warnings {
        eprintln!("warning: {w}");
    }
    let sel = if args.all {
        crate::replay::Selection::All
    } else if let Some(c) = args.class.clone() {
        crate::replay::Selection::Class(crate::deadletter::DeadClass::from_label(&c))
    } else {
        crate::replay::Selection::Ids(args.id.clone())
    };
    let entries = crate::replay::select(&file, &sel).map_err(|e| CliError {
        code: exit::USAGE,
        message: e.to_string(),
    })?;
    if entries.is_empty() {
        println!("nothing to replay: no open dead letters match");
        return Ok(());
    }
    if args.dry_run {
        for e in &entries {
            println!(
                "would replay {} ({}, link {}: {} deal {} <-> HubSpot deal {}): {}",
                e.id, e.class, e.link_id, e.partner, e.partner_deal_id, e.hubspot_deal_id, e.error
            );
        }
        return Ok(());
    }
    let parts = crate::daemon::DaemonParts::from_config(&config);
    let store = crate::store::Store::open_alongside(&parts.store_path)
        .await
        .map_err(unavailable)?;
    let mut partners = std::collections::HashMap::new();
    for p in &parts.partners {
        partners.insert(
            p.name.clone(),
            client_for(p, parts.retry, &parts.store_path).await?,
        );
    }
    let engine = crate::engine::Engine::new(
        store,
        crate::engine::Portals {
            hubspot: client_for(&parts.hubspot, parts.retry, &parts.store_path).await?,
            partners,
        },
        parts.settings.clone(),
        std::sync::Arc::new(tokio::sync::Notify::new()),
    );
    let tty = std::io::stderr().is_terminal();
    let outcomes = crate::replay::replay(&engine, &path, &entries, |done, total| {
        if tty {
            let width = 30;
            let filled = width * done / total.max(1);
            eprint!(
                "\r[{}{}] {done}/{total} links",
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
            if done == total {
                eprintln!();
            }
        }
    })
    .await
    .map_err(unavailable)?;
    // Keep the file bounded: entries replayed successfully are no longer needed.
    let p3 = path.clone();
    match tokio::task::spawn_blocking(move || {
        crate::deadletter::compact(&p3, crate::deadletter::COMPACT_ABOVE_BYTES)
    })
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("warning: {e}"),
        Err(e) => eprintln!("warning: compaction did not run: {e}"),
    }
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    for o in &outcomes {
        println!(
            "{} {} (link {}): {}",
            if o.ok { "replayed" } else { "FAILED" },
            o.entry_id,
            o.link_id,
            o.outcome
        );
    }
    println!(
        "{} replayed, {} failed; every entry is marked in {}",
        outcomes.len() - failed,
        failed,
        path.display()
    );
    if failed > 0 {
        return Err(CliError {
            code: exit::UNAVAILABLE,
            message: format!(
                "{failed} entr{} did not replay; see above, fix the cause and replay again",
                if failed == 1 { "y" } else { "ies" }
            ),
        });
    }
    Ok(())
}

fn load_config(args: &ConfigArgs) -> Result<crate::config::Config, CliError> {
    crate::config::Config::load(&args.config).map_err(|e| CliError {
        code: exit::CONFIG,
        message: format!("{e}\n(config file: {})", args.config.display()),
    })
}

async fn run_daemon(args: ConfigArgs) -> Result<(), CliError> {
    let config = load_config(&args)?;
    let handle =
        crate::daemon::DaemonHandle::start(crate::daemon::DaemonParts::from_config(&config))
            .await
            .map_err(|e| CliError {
                // A store newer than this binary will not fix itself: no restart loop.
                code: match e {
                    crate::daemon::DaemonError::Store(crate::store::StoreError::TooNew {
                        ..
                    }) => exit::CONFIG,
                    _ => exit::UNAVAILABLE,
                },
                message: e.to_string(),
            })?;
    // Under systemd (Type=notify): ready once the store is open, the listener bound and the
    // pollers started — which `start` has done.
    let ready = format!(
        "syncing {} partner portal(s){}",
        config.partners.len(),
        handle
            .webhook_addr
            .map_or(String::new(), |a| format!(", webhooks on {a}"))
    );
    if let Err(e) = crate::systemd::ready(&ready) {
        tracing::warn!(error = %e, "cannot tell systemd we are ready");
    }
    let watchdog = crate::systemd::watchdog_interval().map(|every| {
        let beats = handle.engine.heartbeat().clone();
        tokio::spawn(async move {
            // Pet only while workers make progress; a stuck worker loop gets us restarted.
            let mut last = beats.count();
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let now = beats.count();
                if now != last {
                    if let Err(e) = crate::systemd::watchdog() {
                        tracing::warn!(error = %e, "cannot send the watchdog keep-alive");
                    }
                } else {
                    tracing::warn!("no worker progress since the last watchdog tick");
                }
                last = now;
            }
        })
    });
    shutdown_signal().await;
    let _ = crate::systemd::stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    tracing::info!("stopping: finishing in-flight work");
    handle.shutdown().await;
    Ok(())
}

async fn run_register(args: RegisterArgs) -> Result<(), CliError> {
    let config = load_config(&args.config)?;
    let Some(partner) = config.partner(&args.partner) else {
        return Err(CliError {
            code: exit::USAGE,
            message: format!(
                "no partner named {:?} in the config; configured: {}",
                args.partner,
                config
                    .partners
                    .iter()
                    .map(|p| p.name().to_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    };
    let parts = crate::daemon::DaemonParts::from_config(&config);
    let hubspot = client_for(&parts.hubspot, parts.retry, &parts.store_path).await?;
    let Some(conn) = parts.partners.iter().find(|p| p.name == args.partner) else {
        return Err(CliError {
            code: exit::SOFTWARE,
            message: "the partner's connection is missing from the daemon parts".into(),
        });
    };
    let partner_client = client_for(conn, parts.retry, &parts.store_path).await?;
    let store = crate::store::Store::open_alongside(&config.store_path)
        .await
        .map_err(unavailable)?;
    let synced = parts.settings.registration.get(&args.partner);
    let registrar = crate::register::Registrar {
        synced: &synced.map(|r| r.synced.clone()).unwrap_or_default(),
        store: &store,
        hubspot: &hubspot,
        partner: &partner_client,
        capacity: partner.capacity,
        hubspot_pipeline: &config.hubspot.pipeline,
        partner_pipeline: &partner.default_pipeline,
        default_owner_id: config.default_owner_id.as_deref(),
    };
    let outcome = match &args.deal {
        Some(deal) => registrar.convert(deal, args.dry_run).await,
        None => {
            let lead = crate::register::NewLead {
                contact: args.contact.clone(),
                company: args.company.clone(),
                name: args.name.clone().unwrap_or_default(),
                products: args.products.clone(),
                intro: args.intro.clone(),
                pain: args.pain.clone(),
                next_steps: args.next_steps.clone(),
            };
            registrar.register_new(&lead, args.dry_run).await
        }
    };
    match outcome {
        Ok(r) => {
            match &r.hubspot_deal_id {
                Some(h) => println!(
                    "registered: {} deal {} ↔ HubSpot deal {h} ({}{})",
                    r.partner,
                    r.partner_deal_id,
                    r.deal_type,
                    r.owner_id
                        .as_ref()
                        .map_or(String::new(), |o| format!(", owner {o}"))
                ),
                None => println!(
                    "would register: {} deal {} as a {} deal{} (dry run: nothing written)",
                    r.partner,
                    r.partner_deal_id,
                    r.deal_type,
                    r.owner_id
                        .as_ref()
                        .map_or(String::new(), |o| format!(", owned by {o}"))
                ),
            }
            Ok(())
        }
        Err(crate::register::RegisterError::Refused(why)) => Err(CliError {
            code: exit::DATAERR,
            message: format!("registration refused: {why}"),
        }),
        Err(e) => Err(unavailable(e)),
    }
}

async fn run_probe(args: ProbeArgs) -> Result<(), CliError> {
    let config = load_config(&args.config)?;
    let report = probe_portals(&config, args.portal.as_deref()).await?;
    if args.json {
        let json = serde_json::json!({ "ready": report.ready(), "checks": report.checks });
        println!("{json:#}");
    } else {
        print!("{}", report.table());
    }
    probe_verdict(&report)
}

/// Probes every configured portal (or the one named), one after the other.
async fn probe_portals(
    config: &crate::config::Config,
    only: Option<&str>,
) -> Result<crate::probe::Report, CliError> {
    use crate::probe::Needs;
    use crate::store::Side;
    let parts = crate::daemon::DaemonParts::from_config(config);
    let portals: Vec<(&crate::daemon::PortalConn, Side)> =
        std::iter::once((&parts.hubspot, Side::Hubspot))
            .chain(parts.partners.iter().map(|p| (p, Side::Partner)))
            .filter(|(p, _)| only.is_none_or(|o| o == p.name))
            .collect();
    if portals.is_empty() {
        return Err(CliError {
            code: exit::USAGE,
            message: format!(
                "no portal named {} in the config; use \"hubspot\" or a partner's name",
                only.unwrap_or_default()
            ),
        });
    }
    let nonce = format!("{:x}", crate::store::now_ms());
    let mut report = crate::probe::Report::default();
    for (p, side) in portals {
        let client = client_for(p, parts.retry, &parts.store_path).await?;
        let needs = Needs {
            side,
            messages: config.messages.enabled,
            marking: config.messages.marking,
            tag: config.messages.tag.as_str().to_owned(),
            folder: config.messages.folder.clone(),
            per_10s: p.rate_limit_per_10s,
        };
        report
            .checks
            .extend(crate::probe::probe(&client, &needs, &nonce).await);
    }
    if only.is_none() {
        let wanted = if config.webhooks.is_some() {
            crate::project::subscriptions(config)
        } else {
            Vec::new()
        };
        report.checks.push(
            crate::probe::app_webhooks(&config.hubspot.base_url, config.app.as_ref(), &wanted)
                .await,
        );
    }
    Ok(report)
}

/// Exit 0 when the configured setup can run; otherwise say why, as an operator reads it.
fn probe_verdict(report: &crate::probe::Report) -> Result<(), CliError> {
    if report.ready() {
        return Ok(());
    }
    Err(if report.only_unanswered() {
        CliError {
            code: exit::UNAVAILABLE,
            message: "a portal did not answer every check (see the table); try again".into(),
        }
    } else {
        CliError {
            code: exit::CONFIG,
            message: "a portal lacks something the configured setup needs (see the table)".into(),
        }
    })
}

async fn run_setup(args: SetupArgs) -> Result<(), CliError> {
    let config = load_config(&args.config)?;
    let Some(dir) = &args.project else {
        ensure_properties(&config, args.dry_run).await?;
        for line in crate::setup::webhook_instructions(&config) {
            println!("{line}");
        }
        return Ok(());
    };
    // The project first: it needs no portal, and an OAuth portal cannot be reached before the
    // app it describes is uploaded and installed. Its webhooks component carries the target
    // and subscriptions, so the per-portal webhook instructions are not printed; the next
    // steps are, even when a portal could not be reached.
    write_project(dir, &config, args.dry_run, args.force).await?;
    let properties = ensure_properties(&config, args.dry_run).await;
    for line in crate::project::next_steps(dir, &args.config.config, &config) {
        println!("{line}");
    }
    properties.map_err(|mut e| {
        if !args.dry_run {
            e.message.push_str(&format!(
                " (the project in {} was written: upload it and install the app, then run setup again)",
                dir.display()
            ));
        }
        e
    })
}

/// Today's setup: dealsync's property groups and properties in every portal.
/// Probes every portal first: one that lacks what the configuration needs stops setup with the
/// table before anything is created. (The probe writes and archives a little; a dry run
/// promises to write nothing, so it skips the probe.)
async fn ensure_properties(config: &crate::config::Config, dry_run: bool) -> Result<(), CliError> {
    let report = if dry_run {
        None
    } else {
        let report = probe_portals(config, None).await?;
        if !report.ready() {
            print!("{}", report.table());
            return probe_verdict(&report).map_err(|mut e| {
                e.message.push_str("; setup created nothing");
                e
            });
        }
        Some(report)
    };
    let parts = crate::daemon::DaemonParts::from_config(config);
    let mut total = 0;
    for p in std::iter::once(&parts.hubspot).chain(parts.partners.iter()) {
        let client = client_for(p, parts.retry, &parts.store_path).await?;
        // A dry run has not probed: it lists the note properties property marking would need.
        let notes = config.messages.enabled
            && report
                .as_ref()
                .is_none_or(|r| r.wants_note_properties(&p.name, config.messages.marking));
        if let Some(r) = &report {
            if let Some(c) = r.checks.iter().find(|c| {
                c.portal == p.name && c.capability == crate::probe::Capability::MessageMarking
            }) {
                println!("{}: shared messages: {}", p.name, c.seen);
            }
        }
        let actions = crate::setup::ensure(&client, dry_run, notes)
            .await
            .map_err(|e| CliError {
                code: exit::UNAVAILABLE,
                message: format!("{e}; nothing further was changed in {}", p.name),
            })?;
        for a in &actions {
            println!(
                "{}{}: {}",
                if dry_run { "would " } else { "" },
                a.portal,
                a.what
            );
        }
        total += actions.len();
    }
    if total == 0 {
        println!("nothing to do: every portal already has what dealsync needs");
    }
    Ok(())
}

/// `setup --project DIR`: prints the files on a dry run, otherwise writes them (idempotently,
/// refusing to replace an edited file without `--force`) and says what happened to each.
async fn write_project(
    dir: &std::path::Path,
    config: &crate::config::Config,
    dry_run: bool,
    force: bool,
) -> Result<(), CliError> {
    use crate::project::ProjectError;
    let failed = |e: ProjectError| CliError {
        code: match e {
            ProjectError::NoPublicUrl => exit::CONFIG,
            // The operator's own edit: refused on its merits, not a fault to retry.
            ProjectError::Changed { .. } => exit::DATAERR,
            ProjectError::Io { .. } => exit::UNAVAILABLE,
        },
        message: e.to_string(),
    };
    let files = crate::project::files(config).map_err(failed)?;
    if dry_run {
        for f in &files {
            println!("would write {}:", dir.join(&f.path).display());
            print!("{}", f.render());
        }
        return Ok(());
    }
    for (path, outcome) in crate::project::write(dir, &files, force)
        .await
        .map_err(failed)?
    {
        println!("{outcome} {}", path.display());
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
        oauth_token_ttl: std::time::Duration::from_secs(args.oauth_token_ttl_s),
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
    if let Some(path) = &args.env_file {
        if let Err(e) = write_env_file(path, &handle.startup()) {
            handle.shutdown().await;
            return Err(CliError {
                code: exit::CANTCREAT,
                message: format!(
                    "cannot write the sandbox's env file {}: {e}; pick a writable path for --env-file",
                    path.display()
                ),
            });
        }
    }
    tracing::info!(base_url = %handle.base_url, "sandbox serving; Ctrl-C or SIGTERM stops it");
    shutdown_signal().await;
    tracing::info!("stopping sandbox");
    handle.shutdown().await;
    Ok(())
}

/// The shell lines that export each portal's token and webhook secret, named as
/// `config/sandbox.toml` expects (`partner-a` → `DEALSYNC_SANDBOX_PARTNER_A_TOKEN`).
pub fn sandbox_env(startup: &sandbox::Startup) -> String {
    let mut out = String::new();
    for p in &startup.portals {
        let name = env_name(&p.name);
        for (what, value) in [("TOKEN", &p.token), ("WEBHOOK_SECRET", &p.webhook_secret)] {
            let value = shell_quote(value);
            out.push_str(&format!("export DEALSYNC_SANDBOX_{name}_{what}={value}\n"));
        }
    }
    out
}

/// A portal name as part of a variable name: upper case, anything else than A-Z0-9 as `_`.
fn env_name(portal: &str) -> String {
    let keep = |c: char| c.is_ascii_alphanumeric();
    portal
        .chars()
        .map(|c| if keep(c) { c.to_ascii_uppercase() } else { '_' })
        .collect()
}

/// Single-quoted for POSIX shells; a `'` inside becomes `'\''`.
fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// Writes the env file owner-only and whole: into a temporary file beside it, renamed over
/// it, so a script waiting for the file never reads half of it or an earlier run's tokens.
fn write_env_file(path: &std::path::Path, startup: &sandbox::Startup) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut open = std::fs::OpenOptions::new();
    // create_new: a leftover file could carry a wider mode than ours.
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let written = open.open(&tmp).and_then(|mut f| {
        f.write_all(sandbox_env(startup).as_bytes())?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
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
