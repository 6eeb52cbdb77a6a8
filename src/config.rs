//! Configuration: a TOML file layered with `DEALSYNC__SECTION__KEY` environment overrides,
//! validated into typed settings. Secrets (tokens, webhook secrets) never come from the file:
//! each is named by an environment variable (`token_env`), a file (`token_file`) or a systemd
//! credential (`token_credential`, read from `$CREDENTIALS_DIRECTORY`), and is held in a
//! [`Secret`] that prints as `[redacted]`.
//!
//! Every error names the key, why it is wrong and what to do. See `config/example.toml`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::crm::{ApiVersion, ApiVersions};
use crate::engine::{FieldKind, FieldSpec, StageMap};
use crate::oauth::OAuthApp;
use crate::rules::{ConflictPolicy, Direction, Rule};
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("config is not valid: {0}")]
    Parse(String),
    #[error("{key}: {why}")]
    Invalid { key: String, why: String },
    #[error("{key}: {why}")]
    Secret { key: String, why: String },
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    store: RawStore,
    hubspot: RawPortal,
    #[serde(default)]
    partners: Vec<RawPartner>,
    #[serde(default)]
    sync: RawSync,
    fields: Option<BTreeMap<String, RawField>>,
    webhooks: Option<RawWebhooks>,
    #[serde(default)]
    messages: RawMessages,
    notifications: Option<RawNotifications>,
    metrics: Option<RawMetrics>,
    oauth: Option<RawOAuth>,
    app: Option<RawApp>,
}

/// `[app]`: the project app as its developer account knows it; `dealsync probe` reads the
/// app's webhook subscriptions with these (HubSpot's app webhooks API takes only a developer
/// API key, never an app's token).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    id: String,
    developer_key_env: Option<String>,
    developer_key_file: Option<PathBuf>,
    developer_key_credential: Option<String>,
}

/// `[app]`, resolved.
#[derive(Debug, Clone)]
pub struct AppCredentials {
    /// The app id (the number in the app's URL in the developer account).
    pub id: String,
    pub developer_key: Secret,
}

/// `[oauth]`: the operator's project app, for portals with `auth = "oauth"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOAuth {
    client_id: String,
    client_secret_env: Option<String>,
    client_secret_file: Option<PathBuf>,
    client_secret_credential: Option<String>,
    redirect_url: String,
    #[serde(default = "d_authorize_url")]
    authorize_url: String,
    scopes: Option<Vec<String>>,
}

fn d_authorize_url() -> String {
    "https://app.hubspot.com/oauth/authorize".into()
}

/// `[metrics]`: where `/healthz`, `/readyz` and `/metrics` are served when there is no webhook
/// listener to serve them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

/// `[notifications]`: the outbound webhook and optional email (see [`crate::notify`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotifications {
    webhook_url: Option<String>,
    webhook_secret_env: Option<String>,
    webhook_secret_file: Option<PathBuf>,
    webhook_secret_credential: Option<String>,
    #[serde(default = "d_notify_attempts")]
    max_attempts: i64,
    #[serde(default = "d_notify_base")]
    retry_base_ms: u64,
    #[serde(default = "d_notify_max")]
    retry_max_ms: u64,
    #[serde(default = "d_notify_timeout")]
    timeout_ms: u64,
    smtp: Option<RawSmtp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: String,
    port: Option<u16>,
    #[serde(default = "d_smtp_security")]
    security: crate::notify::SmtpSecurity,
    from: String,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    password_credential: Option<String>,
}

fn d_notify_attempts() -> i64 {
    crate::notify::NotifySettings::default().max_attempts
}
fn d_notify_base() -> u64 {
    crate::notify::NotifySettings::default()
        .retry_base
        .as_millis() as u64
}
fn d_notify_max() -> u64 {
    crate::notify::NotifySettings::default()
        .retry_max
        .as_millis() as u64
}
fn d_notify_timeout() -> u64 {
    crate::notify::NotifySettings::default().timeout.as_millis() as u64
}
fn d_smtp_security() -> crate::notify::SmtpSecurity {
    crate::notify::SmtpSecurity::Starttls
}

/// `[messages]`: shared messages, comments and attachments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMessages {
    enabled: bool,
    max_attachment_bytes: u64,
    attachment_folder: String,
    marking: crate::engine::marking::MarkingChoice,
    tag: String,
    search_settle_ms: u64,
}

impl Default for RawMessages {
    fn default() -> Self {
        let d = crate::engine::messages::MessageSettings::default();
        RawMessages {
            enabled: d.enabled,
            max_attachment_bytes: d.max_attachment_bytes,
            attachment_folder: d.folder,
            marking: d.marking,
            tag: d.tag.as_str().to_owned(),
            search_settle_ms: d.search_settle.as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    listen: String,
    public_url: Option<String>,
    #[serde(default = "d_max_body")]
    max_body_bytes: usize,
    #[serde(default = "d_healthy_poll")]
    healthy_poll_interval_ms: u64,
    #[serde(default = "d_quiet_after")]
    quiet_after_ms: u64,
}

fn d_max_body() -> usize {
    crate::ingest::webhook::DEFAULT_MAX_BODY
}
fn d_healthy_poll() -> u64 {
    300_000
}
fn d_quiet_after() -> u64 {
    600_000
}

/// The webhook listener, resolved.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub listen: std::net::SocketAddr,
    pub public_url: Option<String>,
    pub max_body: usize,
    pub healthy_poll_interval: Duration,
    pub quiet_after: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: PathBuf,
    dead_letter_path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortal {
    base_url: String,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    token_credential: Option<String>,
    webhook_secret_env: Option<String>,
    webhook_secret_file: Option<PathBuf>,
    webhook_secret_credential: Option<String>,
    rate_limit_per_10s: Option<u32>,
    #[serde(default = "d_search")]
    search_per_s: u32,
    #[serde(default = "d_pipeline")]
    pipeline: String,
    api_version: Option<String>,
    #[serde(default)]
    api_versions: BTreeMap<String, String>,
    auth: Option<String>,
    portal_id: Option<u64>,
    /// HubSpot owner id of the rep who gets registrations whose lead has no owner.
    default_owner_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartner {
    name: String,
    #[serde(flatten)]
    portal: RawPortalFlat,
    default_pipeline: Option<String>,
    #[serde(default = "d_capacity")]
    capacity: u32,
    #[serde(default)]
    stage_map: BTreeMap<String, String>,
    /// Who at the partner hears about every shared deal of this partner.
    lead_email: Option<String>,
}

/// `RawPortal` for flattening (serde cannot combine flatten with deny_unknown_fields on the
/// inner struct); the outer struct still refuses unknown keys.
#[derive(Debug, Deserialize)]
struct RawPortalFlat {
    base_url: String,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    token_credential: Option<String>,
    webhook_secret_env: Option<String>,
    webhook_secret_file: Option<PathBuf>,
    webhook_secret_credential: Option<String>,
    /// Defaults to [`d_rate`], or [`D_RATE_OAUTH`] with `auth = "oauth"`.
    rate_limit_per_10s: Option<u32>,
    #[serde(default = "d_search")]
    search_per_s: u32,
    #[serde(default = "d_pipeline")]
    pipeline: String,
    /// `2026-09` (default), `2026-03` or `legacy` (the v3/v4 paths, for a migration window).
    api_version: Option<String>,
    /// Per-surface overrides: `{ files = "2026-03", associations = "legacy" }`.
    #[serde(default)]
    api_versions: BTreeMap<String, String>,
    /// `static` (default: `token_*`) or `oauth` (the `[oauth]` app's install).
    auth: Option<String>,
    /// The HubSpot portal id of a static-token portal, which routes the app's single webhook
    /// target (`POST /webhooks`) to it; an OAuth portal's id is learned at install.
    portal_id: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSync {
    poll_interval_ms: u64,
    poll_overlap_ms: u64,
    sweep_interval_ms: u64,
    workers: usize,
    batch_size: usize,
    max_attempts: i64,
    retry_base_ms: u64,
    retry_max_ms: u64,
    request_timeout_ms: u64,
    drain_ms: u64,
    mass_deletion_share: f64,
    mass_deletion_min: i64,
    mass_deletion_window_ms: u64,
}

impl Default for RawSync {
    fn default() -> Self {
        RawSync {
            poll_interval_ms: 30_000,
            poll_overlap_ms: 60_000,
            sweep_interval_ms: 900_000,
            workers: 4,
            batch_size: 100,
            max_attempts: 8,
            retry_base_ms: 500,
            retry_max_ms: 60_000,
            request_timeout_ms: 30_000,
            drain_ms: 20_000,
            mass_deletion_share: 0.2,
            mass_deletion_min: 10,
            mass_deletion_window_ms: 900_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    partner_property: String,
    hubspot_property: String,
    #[serde(default)]
    kind: RawKind,
    #[serde(default)]
    direction: Direction,
    #[serde(default)]
    conflict: ConflictPolicy,
    #[serde(default)]
    unless_blank: bool,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawKind {
    #[default]
    Text,
    MultiSelect,
    Stage,
}

fn d_rate() -> u32 {
    100
}
/// HubSpot's burst limit for a public OAuth app, per installing account (HUBSPOT-API.md §3).
const D_RATE_OAUTH: u32 = 110;
/// HubSpot's CRM search limit: 5 requests per second per account (HubSpot's search guide,
/// see HUBSPOT-API.md §0; older pages said 4 per token).
fn d_search() -> u32 {
    5
}
fn d_pipeline() -> String {
    "default".into()
}
fn d_capacity() -> u32 {
    100
}

impl PortalConfig {
    /// The static token, when the portal uses one.
    pub fn token(&self) -> Option<&Secret> {
        match &self.auth {
            PortalAuth::Static(t) => Some(t),
            PortalAuth::OAuth => None,
        }
    }
}

/// How a portal authenticates.
#[derive(Debug, Clone)]
pub enum PortalAuth {
    /// A static token: a static-auth app installed in one account, or a service key (no
    /// webhooks) for a polling-only portal.
    Static(Secret),
    /// The `[oauth]` app's install in this portal (its refresh token lives in the store).
    OAuth,
}

/// One portal, resolved.
#[derive(Debug, Clone)]
pub struct PortalConfig {
    pub name: String,
    pub base_url: String,
    pub auth: PortalAuth,
    pub webhook_secret: Option<Secret>,
    pub rate_limit_per_10s: u32,
    pub search_per_s: u32,
    pub pipeline: String,
    /// The API version each surface is called at.
    pub api: ApiVersions,
    /// The HubSpot portal id of a static-token portal, when configured (routes the app's
    /// single webhook target to it).
    pub portal_id: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct PartnerConfig {
    pub portal: PortalConfig,
    /// Where new shared deals land on the partner side.
    pub default_pipeline: String,
    pub capacity: u32,
    /// Partner stage id -> HubSpot stage id.
    pub stage_map: BTreeMap<String, String>,
    /// The partner lead told of every shared deal's notifications.
    pub lead_email: Option<String>,
}

impl PartnerConfig {
    pub fn name(&self) -> &str {
        &self.portal.name
    }

    pub fn map_stage_to_hubspot(&self, stage: &str) -> Option<&str> {
        self.stage_map.get(stage).map(String::as_str)
    }

    /// HubSpot stage -> partner stage. When several partner stages map to one HubSpot stage,
    /// the first in sorted order is used.
    pub fn map_stage_to_partner(&self, stage: &str) -> Option<&str> {
        self.stage_map
            .iter()
            .find(|(_, h)| *h == stage)
            .map(|(p, _)| p.as_str())
    }

    pub fn stage_maps(&self) -> StageMap {
        let mut m = StageMap::default();
        for (p, h) in &self.stage_map {
            m.to_hubspot.insert(p.clone(), h.clone());
            m.to_partner.entry(h.clone()).or_insert_with(|| p.clone());
        }
        m
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub store_path: PathBuf,
    pub dead_letter_path: PathBuf,
    pub hubspot: PortalConfig,
    pub partners: Vec<PartnerConfig>,
    pub fields: Vec<FieldSpec>,
    pub poll_interval: Duration,
    pub poll_overlap: Duration,
    pub sweep_interval: Duration,
    pub workers: usize,
    pub batch_size: usize,
    pub max_attempts: i64,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub request_timeout: Duration,
    pub drain: Duration,
    pub webhooks: Option<WebhookConfig>,
    pub mass_deletion: crate::store::DeletionLimits,
    pub messages: crate::engine::messages::MessageSettings,
    /// The rep who gets registrations whose lead has no owner in HubSpot's portal.
    pub default_owner_id: Option<String>,
    /// `[notifications]`; disabled when absent.
    pub notify: crate::notify::NotifySettings,
    /// `[metrics] listen`: health and metrics without webhooks.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[oauth]`: the project app installed in the portals with `auth = "oauth"`.
    pub oauth: Option<Arc<OAuthApp>>,
    /// `[app]`: what `probe` reads the app's webhook subscriptions with.
    pub app: Option<AppCredentials>,
}

/// The fields synced when the config names none.
pub fn default_fields() -> Vec<FieldSpec> {
    use ConflictPolicy::*;
    use Direction::*;
    let f = |name: &str, prop: &str, kind, direction, conflict| FieldSpec {
        name: name.into(),
        partner_property: prop.into(),
        hubspot_property: prop.into(),
        kind,
        rule: Rule {
            direction,
            conflict,
            unless_blank: false,
        },
    };
    vec![
        f("dealname", "dealname", FieldKind::Text, Both, LatestWins),
        f("dealstage", "dealstage", FieldKind::Stage, Both, LatestWins),
        f(
            "product_interest",
            crate::properties::PRODUCT_INTEREST,
            FieldKind::MultiSelect,
            Both,
            LatestWins,
        ),
        f(
            "intro_note",
            crate::properties::INTRO_NOTE,
            FieldKind::Text,
            ToHubspot,
            PartnerWins,
        ),
        f(
            "specific_pain",
            crate::properties::SPECIFIC_PAIN,
            FieldKind::Text,
            ToHubspot,
            PartnerWins,
        ),
        f(
            "next_steps",
            crate::properties::NEXT_STEPS,
            FieldKind::Text,
            ToHubspot,
            PartnerWins,
        ),
        f(
            "compensation_eligible",
            crate::properties::COMPENSATION_ELIGIBLE,
            FieldKind::Text,
            ToPartner,
            HubspotWins,
        ),
    ]
}

/// The first key (as a dotted path) that contains a bracket.
fn bracketed_key(t: &toml::Table, path: &str) -> Option<String> {
    t.iter().find_map(|(k, v)| {
        let here = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        if k.contains(['[', ']']) {
            return Some(here);
        }
        match v {
            toml::Value::Table(t) => bracketed_key(t, &here),
            toml::Value::Array(a) => a.iter().enumerate().find_map(|(i, v)| match v {
                toml::Value::Table(t) => bracketed_key(t, &format!("{here}[{i}]")),
                _ => None,
            }),
            _ => None,
        }
    })
}

/// Keys that would put a secret in the file.
const SECRET_KEYS: &[&str] = &["token", "webhook_secret", "secret", "password", "api_key"];

fn find_secret_key(v: &serde_json::Value, path: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => m.iter().find_map(|(k, v)| {
            let here = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if SECRET_KEYS.contains(&k.as_str()) {
                Some(here)
            } else {
                find_secret_key(v, &here)
            }
        }),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_secret_key(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

impl Config {
    /// Loads the file with overrides and secrets from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_with(path, &env)
    }

    /// Loads the file with overrides and secrets from `env`.
    pub fn load_with(path: &Path, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            why: format!("{e}; pass the file with --config"),
        })?;
        Self::from_toml_str(&text, env)
    }

    /// Parses TOML text with overrides and secrets from `env`.
    pub fn from_toml_str(text: &str, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        // The `config` crate reads `a[9]` in a key as an array index and allocates up to it;
        // a hostile key would exhaust memory. Keys and override names are checked first.
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        if let Some(key) = bracketed_key(&table, "") {
            return Err(invalid(
                key,
                "keys may not contain [ or ]; write tables as [section] headers",
            ));
        }
        let mut overrides: config::Map<String, String> = config::Map::new();
        for (k, v) in env.iter().filter(|(k, _)| k.starts_with("DEALSYNC__")) {
            if !k
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(invalid(
                    k.as_str(),
                    "an override is DEALSYNC__SECTION__KEY in capitals, digits and underscores",
                ));
            }
            overrides.insert(k.clone(), v.clone());
        }
        let built = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("DEALSYNC")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(overrides)),
            )
            .build()
            .map_err(|e| ConfigError::Parse(format!("{e}")))?;
        let tree: serde_json::Value = built
            .clone()
            .try_deserialize()
            .map_err(|e| ConfigError::Parse(format!("{e}")))?;
        if let Some(key) = find_secret_key(&tree, "") {
            return Err(ConfigError::Secret {
                key,
                why: "secrets never go in the config file; name them with *_env, *_file or *_credential (systemd LoadCredential=)".into(),
            });
        }
        let raw: Raw = built.try_deserialize().map_err(|e| {
            ConfigError::Parse(format!("{e} (see config/example.toml for every key)"))
        })?;
        Self::validate(raw, env)
    }

    fn validate(raw: Raw, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let default_owner_id = raw.hubspot.default_owner_id.clone();
        let hubspot = portal(
            "hubspot",
            "hubspot",
            RawPortalFlat {
                base_url: raw.hubspot.base_url,
                token_env: raw.hubspot.token_env,
                token_file: raw.hubspot.token_file,
                token_credential: raw.hubspot.token_credential,
                webhook_secret_env: raw.hubspot.webhook_secret_env,
                webhook_secret_file: raw.hubspot.webhook_secret_file,
                webhook_secret_credential: raw.hubspot.webhook_secret_credential,
                rate_limit_per_10s: raw.hubspot.rate_limit_per_10s,
                search_per_s: raw.hubspot.search_per_s,
                pipeline: raw.hubspot.pipeline,
                api_version: raw.hubspot.api_version,
                api_versions: raw.hubspot.api_versions,
                auth: raw.hubspot.auth,
                portal_id: raw.hubspot.portal_id,
            },
            env,
        )?;
        if raw.partners.is_empty() {
            return Err(invalid(
                "partners",
                "at least one [[partners]] entry is needed",
            ));
        }
        let mut partners: Vec<PartnerConfig> = Vec::new();
        for (i, p) in raw.partners.into_iter().enumerate() {
            let key = format!("partners[{i}]");
            let valid = !p.name.is_empty()
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid {
                return Err(invalid(
                    format!("{key}.name"),
                    format!(
                        "{:?} must be non-empty and use only a-z, 0-9, '-' and '_'",
                        p.name
                    ),
                ));
            }
            if p.name == "hubspot" || partners.iter().any(|q| q.portal.name == p.name) {
                return Err(invalid(format!("{key}.name"), format!("{} is used twice (\"hubspot\" is reserved); give each partner its own name", p.name)));
            }
            if p.stage_map.is_empty() {
                return Err(invalid(
                    format!("{key}.stage_map"),
                    "must map at least one partner stage to a HubSpot stage",
                ));
            }
            if let Some(e) = &p.lead_email {
                if !plausible_email(e) {
                    return Err(invalid(
                        format!("{key}.lead_email"),
                        format!("{e:?} is not an email address like lead@partner.example"),
                    ));
                }
            }
            let portal = portal(&key, &p.name, p.portal, env)?;
            // One id routes the app's webhook target to one portal.
            if let Some(id) = portal.portal_id {
                let taken = std::iter::once(&hubspot)
                    .chain(partners.iter().map(|q| &q.portal))
                    .find(|q| q.portal_id == Some(id));
                if let Some(q) = taken {
                    return Err(invalid(
                        format!("{key}.portal_id"),
                        format!(
                            "{id} is already {}'s portal id; each portal has its own",
                            q.name
                        ),
                    ));
                }
            }
            partners.push(PartnerConfig {
                default_pipeline: p
                    .default_pipeline
                    .unwrap_or_else(|| portal.pipeline.clone()),
                portal,
                capacity: p.capacity,
                stage_map: p.stage_map,
                lead_email: p.lead_email,
            });
        }
        let fields = match raw.fields {
            None => default_fields(),
            Some(map) => {
                let mut v = Vec::new();
                for (name, f) in map {
                    let key = format!("fields.{name}");
                    for prop in [&f.partner_property, &f.hubspot_property] {
                        if prop.is_empty() {
                            return Err(invalid(
                                &key,
                                "partner_property and hubspot_property must name properties",
                            ));
                        }
                        if prop == "pipeline" || prop == "hubspot_owner_id" {
                            return Err(invalid(&key, format!("{prop} never syncs: each portal keeps its own pipeline and deal owner")));
                        }
                    }
                    let kind = match f.kind {
                        RawKind::Text => FieldKind::Text,
                        RawKind::MultiSelect => FieldKind::MultiSelect,
                        RawKind::Stage => FieldKind::Stage,
                    };
                    if kind == FieldKind::Stage
                        && (f.partner_property != "dealstage" || f.hubspot_property != "dealstage")
                    {
                        return Err(invalid(
                            &key,
                            "a field of kind stage must map dealstage on both sides",
                        ));
                    }
                    v.push(FieldSpec {
                        name,
                        partner_property: f.partner_property,
                        hubspot_property: f.hubspot_property,
                        kind,
                        rule: Rule {
                            direction: f.direction,
                            conflict: f.conflict,
                            unless_blank: f.unless_blank,
                        },
                    });
                }
                if v.iter().filter(|f| f.kind == FieldKind::Stage).count() > 1 {
                    return Err(invalid("fields", "at most one field may be of kind stage"));
                }
                v
            }
        };
        let s = raw.sync;
        let positive = |k: &str, v: u64| {
            if v == 0 {
                Err(invalid(format!("sync.{k}"), "must be greater than 0"))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        if !(1..=100).contains(&s.batch_size) {
            return Err(invalid(
                "sync.batch_size",
                format!(
                    "{} is outside 1..=100 (HubSpot's batch limit)",
                    s.batch_size
                ),
            ));
        }
        if s.workers == 0 || s.workers > 64 {
            return Err(invalid("sync.workers", "must be between 1 and 64"));
        }
        if s.max_attempts < 1 {
            return Err(invalid("sync.max_attempts", "must be at least 1"));
        }
        if !(s.mass_deletion_share > 0.0 && s.mass_deletion_share <= 1.0) {
            return Err(invalid(
                "sync.mass_deletion_share",
                "must be a share of links above 0 and at most 1 (0.2 = 20%)",
            ));
        }
        if s.mass_deletion_min < 0 {
            return Err(invalid("sync.mass_deletion_min", "must not be negative"));
        }
        let mass_deletion = crate::store::DeletionLimits {
            share: s.mass_deletion_share,
            min: s.mass_deletion_min,
            window_ms: positive("mass_deletion_window_ms", s.mass_deletion_window_ms)?.as_millis()
                as i64,
        };
        let webhooks = match raw.webhooks {
            None => None,
            Some(w) => {
                let listen = w.listen.parse().map_err(|_| {
                    invalid(
                        "webhooks.listen",
                        format!("{:?} is not an address like 127.0.0.1:8787", w.listen),
                    )
                })?;
                if let Some(u) = &w.public_url {
                    let ok = reqwest::Url::parse(u)
                        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.path() == "/");
                    if !ok {
                        return Err(invalid(
                            "webhooks.public_url",
                            format!("{u:?} must be an http(s) URL without a path, e.g. https://dealsync.example.com"),
                        ));
                    }
                }
                if w.max_body_bytes < 1024 {
                    return Err(invalid(
                        "webhooks.max_body_bytes",
                        "must be at least 1024 (HubSpot sends up to 100 events per request)",
                    ));
                }
                let with_secret = std::iter::once(&hubspot)
                    .chain(partners.iter().map(|p| &p.portal))
                    .filter(|p| p.webhook_secret.is_some())
                    .count();
                // An OAuth app signs its deliveries with its client secret.
                if with_secret == 0 && raw.oauth.is_none() {
                    return Err(invalid(
                        "webhooks",
                        "the listener is configured but no portal has a webhook secret and there is no [oauth] app; set webhook_secret_env, webhook_secret_file or webhook_secret_credential on the portals whose app sends webhooks",
                    ));
                }
                let ms = |k: &str, v: u64| {
                    if v == 0 {
                        Err(invalid(format!("webhooks.{k}"), "must be greater than 0"))
                    } else {
                        Ok(Duration::from_millis(v))
                    }
                };
                Some(WebhookConfig {
                    listen,
                    public_url: w.public_url.map(|u| u.trim_end_matches('/').to_owned()),
                    max_body: w.max_body_bytes,
                    healthy_poll_interval: ms(
                        "healthy_poll_interval_ms",
                        w.healthy_poll_interval_ms,
                    )?,
                    quiet_after: ms("quiet_after_ms", w.quiet_after_ms)?,
                })
            }
        };
        let m = raw.messages;
        if m.max_attachment_bytes == 0 {
            return Err(invalid(
                "messages.max_attachment_bytes",
                "must be greater than 0 (set messages.enabled = false to sync no messages)",
            ));
        }
        if !m.attachment_folder.starts_with('/') {
            return Err(invalid(
                "messages.attachment_folder",
                "must be an absolute file-manager folder such as /dealsync",
            ));
        }
        let tag =
            crate::engine::marking::Tag::new(&m.tag).map_err(|why| invalid("messages.tag", why))?;
        let messages = crate::engine::messages::MessageSettings {
            enabled: m.enabled,
            max_attachment_bytes: m.max_attachment_bytes,
            folder: m.attachment_folder,
            marking: m.marking,
            tag,
            search_settle: Duration::from_millis(m.search_settle_ms),
            ..Default::default()
        };
        let notify = notifications(raw.notifications, &partners, env)?;
        let metrics_listen = match (raw.metrics, &webhooks) {
            (None, _) => None,
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "metrics",
                    "with [webhooks], /healthz, /readyz and /metrics are served on the webhook listener; remove [metrics]",
                ))
            }
            (Some(m), None) => Some(m.listen.parse().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("{:?} is not an address like 127.0.0.1:9187", m.listen),
                )
            })?),
        };
        let oauth = oauth_app(raw.oauth, &hubspot, &partners, webhooks.as_ref(), env)?;
        let app = match raw.app {
            None => None,
            Some(a) => {
                if a.id.is_empty() || !a.id.chars().all(|c| c.is_ascii_digit()) {
                    return Err(invalid(
                        "app.id",
                        "must be the app's numeric id (in the app's URL in your developer account)",
                    ));
                }
                let key = secret(
                    "app",
                    "developer_key",
                    a.developer_key_env,
                    a.developer_key_file,
                    a.developer_key_credential,
                    env,
                )?
                .ok_or_else(|| ConfigError::Secret {
                    key: "app.developer_key_env".into(),
                    why: "the developer account's API key is needed: set developer_key_env, developer_key_file or developer_key_credential".into(),
                })?;
                Some(AppCredentials {
                    id: a.id,
                    developer_key: key,
                })
            }
        };
        Ok(Config {
            oauth,
            app,
            notify,
            metrics_listen,
            store_path: raw.store.path,
            dead_letter_path: raw.store.dead_letter_path,
            hubspot,
            partners,
            fields,
            poll_interval: positive("poll_interval_ms", s.poll_interval_ms)?,
            poll_overlap: Duration::from_millis(s.poll_overlap_ms),
            sweep_interval: positive("sweep_interval_ms", s.sweep_interval_ms)?,
            workers: s.workers,
            batch_size: s.batch_size,
            max_attempts: s.max_attempts,
            retry_base: positive("retry_base_ms", s.retry_base_ms)?,
            retry_max: positive("retry_max_ms", s.retry_max_ms)?,
            request_timeout: positive("request_timeout_ms", s.request_timeout_ms)?,
            drain: positive("drain_ms", s.drain_ms)?,
            webhooks,
            mass_deletion,
            messages,
            default_owner_id,
        })
    }

    /// A portal by its name: "hubspot" or a partner's.
    pub fn portal(&self, name: &str) -> Option<&PortalConfig> {
        if name == self.hubspot.name {
            return Some(&self.hubspot);
        }
        self.partner(name).map(|p| &p.portal)
    }

    pub fn partner(&self, name: &str) -> Option<&PartnerConfig> {
        self.partners.iter().find(|p| p.portal.name == name)
    }
}

fn portal(
    key: &str,
    name: &str,
    p: RawPortalFlat,
    env: &HashMap<String, String>,
) -> Result<PortalConfig, ConfigError> {
    let url = reqwest::Url::parse(&p.base_url).map_err(|e| {
        invalid(
            format!("{key}.base_url"),
            format!("{:?} is not a URL ({e})", p.base_url),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            format!("{key}.base_url"),
            "must be an http or https URL",
        ));
    }
    let token = secret(
        key,
        "token",
        p.token_env,
        p.token_file,
        p.token_credential,
        env,
    )?;
    let auth = match (p.auth.as_deref(), token) {
        (None | Some("static"), Some(t)) => PortalAuth::Static(t),
        (None | Some("static"), None) => return Err(ConfigError::Secret {
            key: format!("{key}.token_env"),
            why: "the portal needs a static token (token_env, token_file or token_credential) or auth = \"oauth\" with an [oauth] app".into(),
        }),
        (Some("oauth"), None) => PortalAuth::OAuth,
        (Some("oauth"), Some(_)) => return Err(invalid(
            format!("{key}.auth"),
            "this portal has auth = \"oauth\" and a static token; keep one: remove token_* to use the OAuth install, or auth to use the token",
        )),
        (Some(other), _) => return Err(invalid(
            format!("{key}.auth"),
            format!("{other:?} is not a way to authenticate; use \"static\" (token_*) or \"oauth\""),
        )),
    };
    let webhook_secret = secret(
        key,
        "webhook_secret",
        p.webhook_secret_env,
        p.webhook_secret_file,
        p.webhook_secret_credential,
        env,
    )?;
    let rate_limit_per_10s = p.rate_limit_per_10s.unwrap_or(match auth {
        PortalAuth::OAuth => D_RATE_OAUTH,
        PortalAuth::Static(_) => d_rate(),
    });
    if matches!(auth, PortalAuth::OAuth) && p.portal_id.is_some() {
        return Err(invalid(
            format!("{key}.portal_id"),
            "an OAuth portal's id is learned when it installs the app; remove portal_id",
        ));
    }
    if p.portal_id == Some(0) {
        return Err(invalid(
            format!("{key}.portal_id"),
            "0 is not a HubSpot portal id (see Settings > Account details in the portal)",
        ));
    }
    if rate_limit_per_10s == 0 || p.search_per_s == 0 {
        return Err(invalid(
            format!("{key}.rate_limit_per_10s"),
            "rate budgets must be greater than 0",
        ));
    }
    let api = api_versions(key, p.api_version.as_deref(), &p.api_versions)?;
    Ok(PortalConfig {
        name: name.to_owned(),
        base_url: p.base_url.trim_end_matches('/').to_owned(),
        auth,
        webhook_secret,
        rate_limit_per_10s,
        search_per_s: p.search_per_s,
        pipeline: p.pipeline,
        api,
        portal_id: p.portal_id,
    })
}

/// `[oauth]`, checked against the portals that use it and the listener that must serve its
/// redirect URL.
fn oauth_app(
    raw: Option<RawOAuth>,
    hubspot: &PortalConfig,
    partners: &[PartnerConfig],
    webhooks: Option<&WebhookConfig>,
    env: &HashMap<String, String>,
) -> Result<Option<Arc<OAuthApp>>, ConfigError> {
    let users: Vec<&str> = std::iter::once(hubspot)
        .chain(partners.iter().map(|p| &p.portal))
        .filter(|p| matches!(p.auth, PortalAuth::OAuth))
        .map(|p| p.name.as_str())
        .collect();
    let Some(raw) = raw else {
        return match users.first() {
            Some(p) => Err(invalid(
                "oauth",
                format!("{p} has auth = \"oauth\" but there is no [oauth] section with the app's client_id, client_secret_* and redirect_url"),
            )),
            None => Ok(None),
        };
    };
    let secret = secret(
        "oauth",
        "client_secret",
        raw.client_secret_env,
        raw.client_secret_file,
        raw.client_secret_credential,
        env,
    )?
    .ok_or_else(|| ConfigError::Secret {
        key: "oauth.client_secret_env".into(),
        why: "the app's client secret is needed: set client_secret_env, client_secret_file or client_secret_credential".into(),
    })?;
    let redirect = reqwest::Url::parse(&raw.redirect_url).map_err(|e| {
        invalid(
            "oauth.redirect_url",
            format!("{:?} is not a URL ({e})", raw.redirect_url),
        )
    })?;
    if webhooks.is_none() {
        return Err(invalid(
            "oauth.redirect_url",
            "dealsync serves the OAuth redirect on its webhook listener; add [webhooks] listen (and public_url) so HubSpot can send installers back",
        ));
    }
    if let Some(public) = webhooks.and_then(|w| w.public_url.as_deref()) {
        let public = reqwest::Url::parse(public).ok();
        if public.as_ref().map(|u| u.origin()) != Some(redirect.origin()) {
            return Err(invalid(
                "oauth.redirect_url",
                format!("{} is not on the listener's public_url; the redirect must reach dealsync's listener", raw.redirect_url),
            ));
        }
    }
    if raw.client_id.trim().is_empty() {
        return Err(invalid("oauth.client_id", "the app's client id is empty"));
    }
    Ok(Some(Arc::new(OAuthApp {
        client_id: raw.client_id,
        client_secret: secret,
        redirect_url: raw.redirect_url,
        authorize_url: raw.authorize_url,
        token_base_url: hubspot.base_url.clone(),
        scopes: raw
            .scopes
            .unwrap_or_else(|| crate::oauth::SCOPES.iter().map(|s| s.to_string()).collect()),
    })))
}

/// A portal's `api_version` and `api_versions` settings, resolved per surface.
fn api_versions(
    key: &str,
    version: Option<&str>,
    overrides: &BTreeMap<String, String>,
) -> Result<ApiVersions, ConfigError> {
    let base = match version {
        None => ApiVersion::V2026_09,
        Some(text) => ApiVersion::parse(text).ok_or_else(|| {
            invalid(
                format!("{key}.api_version"),
                format!(
                    "unknown API version {text:?}; use 2026-09 (HubSpot's current version), 2026-03, or legacy (the v3/v4 paths HubSpot stops supporting in 2027)"
                ),
            )
        })?,
    };
    ApiVersions::resolve(base, overrides).map_err(|e| invalid(format!("{key}.{}", e.key), e.why))
}

fn secret(
    key: &str,
    what: &str,
    from_env: Option<String>,
    from_file: Option<PathBuf>,
    from_credential: Option<String>,
    env: &HashMap<String, String>,
) -> Result<Option<Secret>, ConfigError> {
    let given = [
        from_env.is_some(),
        from_file.is_some(),
        from_credential.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given > 1 {
        return Err(ConfigError::Secret {
            key: format!("{key}.{what}_*"),
            why: format!("give exactly one of {what}_env, {what}_file, {what}_credential"),
        });
    }
    let (source_key, value) = if let Some(var) = from_env {
        let k = format!("{key}.{what}_env");
        match env.get(&var) {
            Some(v) => (k, v.clone()),
            None => {
                return Err(ConfigError::Secret {
                    key: k,
                    why: format!("environment variable {var} is not set"),
                })
            }
        }
    } else if let Some(path) = from_file {
        let k = format!("{key}.{what}_file");
        match std::fs::read_to_string(&path) {
            Ok(v) => (k, v),
            Err(e) => {
                return Err(ConfigError::Secret {
                    key: k,
                    why: format!("cannot read {}: {e}", path.display()),
                })
            }
        }
    } else if let Some(name) = from_credential {
        let k = format!("{key}.{what}_credential");
        let Some(dir) = env.get("CREDENTIALS_DIRECTORY") else {
            return Err(ConfigError::Secret {
                key: k,
                why: "CREDENTIALS_DIRECTORY is not set; run under systemd with LoadCredential= or use *_env/*_file".into(),
            });
        };
        let path = Path::new(dir).join(&name);
        match std::fs::read_to_string(&path) {
            Ok(v) => (k, v),
            Err(e) => {
                return Err(ConfigError::Secret {
                    key: k,
                    why: format!("cannot read credential {name} in {dir}: {e}"),
                })
            }
        }
    } else {
        return Ok(None);
    };
    let v = value.trim();
    if v.is_empty() {
        return Err(ConfigError::Secret {
            key: source_key,
            why: "the secret is empty".into(),
        });
    }
    Ok(Some(Secret::new(v)))
}

fn plausible_email(e: &str) -> bool {
    matches!(e.split_once('@'), Some((user, host)) if !user.is_empty() && host.contains('.') && !e.contains(char::is_whitespace))
}

/// Resolves `[notifications]` and the partners' lead emails.
fn notifications(
    raw: Option<RawNotifications>,
    partners: &[PartnerConfig],
    env: &HashMap<String, String>,
) -> Result<crate::notify::NotifySettings, ConfigError> {
    use crate::notify::{NotifySettings, SmtpSecurity, SmtpTarget, WebhookTarget};
    let Some(n) = raw else {
        return Ok(NotifySettings::default());
    };
    let key = "notifications";
    let signing = secret(
        key,
        "webhook_secret",
        n.webhook_secret_env,
        n.webhook_secret_file,
        n.webhook_secret_credential,
        env,
    )?;
    let webhook = match (n.webhook_url, signing) {
        (None, None) => None,
        (Some(url), Some(secret)) => {
            let ok = reqwest::Url::parse(&url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                return Err(invalid(
                    "notifications.webhook_url",
                    "must be an http(s) URL, e.g. https://hooks.example.com/dealsync",
                ));
            }
            Some(WebhookTarget { url, secret })
        }
        (Some(_), None) => {
            return Err(ConfigError::Secret {
                key: "notifications.webhook_secret_env".into(),
                why: "notifications are signed: set webhook_secret_env, webhook_secret_file or webhook_secret_credential".into(),
            })
        }
        (None, Some(_)) => {
            return Err(invalid(
                "notifications.webhook_url",
                "a webhook secret is set but no webhook_url to send to",
            ))
        }
    };
    let smtp = match n.smtp {
        None => None,
        Some(s) => {
            let k = "notifications.smtp";
            if s.host.trim().is_empty() {
                return Err(invalid(
                    format!("{k}.host"),
                    "names the mail relay, e.g. smtp.example.com",
                ));
            }
            if s.security == SmtpSecurity::None
                && !matches!(s.host.as_str(), "localhost" | "127.0.0.1" | "::1")
            {
                return Err(invalid(
                    format!("{k}.security"),
                    "\"none\" sends mail and passwords in clear text: use it only with a relay on this machine (localhost), else \"starttls\" or \"tls\"",
                ));
            }
            if !plausible_email(&s.from) {
                return Err(invalid(
                    format!("{k}.from"),
                    format!(
                        "{:?} is not an email address like dealsync@example.com",
                        s.from
                    ),
                ));
            }
            let password = secret(
                k,
                "password",
                s.password_env,
                s.password_file,
                s.password_credential,
                env,
            )?;
            if s.username.is_some() != password.is_some() {
                return Err(invalid(
                    k,
                    "give both username and a password (password_env, password_file or password_credential), or neither",
                ));
            }
            Some(SmtpTarget {
                port: s.port.unwrap_or(match s.security {
                    SmtpSecurity::Tls => 465,
                    SmtpSecurity::Starttls => 587,
                    SmtpSecurity::None => 25,
                }),
                host: s.host,
                security: s.security,
                from: s.from,
                username: s.username,
                password,
            })
        }
    };
    if webhook.is_none() && smtp.is_none() {
        return Err(invalid(
            key,
            "the section is there but sends nothing: set webhook_url (with its secret) or [notifications.smtp], or remove the section",
        ));
    }
    if n.max_attempts < 1 {
        return Err(invalid("notifications.max_attempts", "must be at least 1"));
    }
    let ms = |k: &str, v: u64| {
        if v == 0 {
            Err(invalid(
                format!("notifications.{k}"),
                "must be greater than 0",
            ))
        } else {
            Ok(Duration::from_millis(v))
        }
    };
    Ok(NotifySettings {
        webhook,
        smtp,
        partner_leads: partners
            .iter()
            .filter_map(|p| p.lead_email.clone().map(|e| (p.portal.name.clone(), e)))
            .collect(),
        max_attempts: n.max_attempts,
        retry_base: ms("retry_base_ms", n.retry_base_ms)?,
        retry_max: ms("retry_max_ms", n.retry_max_ms)?,
        timeout: ms("timeout_ms", n.timeout_ms)?,
    })
}
