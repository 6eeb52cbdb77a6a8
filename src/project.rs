//! The operator's HubSpot app as a developer-platform project, written by
//! `dealsync setup --project DIR`: `hsproject.json`, the app (`src/app/app-hsmeta.json`) and its
//! webhooks (`src/app/webhooks/webhooks-hsmeta.json`), ready for HubSpot's CLI
//! (`hs project upload`). New HubSpot customers can only create project-based apps, and only
//! those get webhooks (`../shared/HUBSPOT-API.md` §0).
//!
//! Sources (HubSpot developer docs):
//! * layout: "App configuration" (`/docs/apps/developer-platform/build-apps/app-configuration`):
//!   every component lives under `srcDir`, the app under `src/app/`, each feature in its own
//!   folder with one `*-hsmeta.json` (`uid`, `type`, `config`), uids unique in the project;
//! * `distribution` and `auth.type`: "Authentication overview"
//!   (`/docs/apps/developer-platform/build-apps/authentication/overview`) and "Manage apps in
//!   HubSpot" (`/docs/apps/developer-platform/build-apps/manage-apps-in-hubspot`), see
//!   [`distribution`];
//! * webhooks: "Configure webhooks" (`/docs/apps/developer-platform/add-features/configure-webhooks`):
//!   `settings.targetUrl`, `settings.maxConcurrentRequests`, `subscriptions.crmObjects` (generic
//!   `object.*` types with an `objectType`) and `subscriptions.legacyCrmObjects` (`deal.*`);
//! * the platform version: "Developer platform and API versioning"
//!   (`/docs/developer-tooling/platform/versioning`): a version every March and September; 2026.09
//!   ships with the 2026-09 APIs dealsync speaks (changelog "legacy private app creation
//!   sunset" points new apps at projects on 2026.09). HubSpot's own templates
//!   (HubSpot/hubspot-project-components) show the same shapes.
//!
//! The builders are pure: they read the config and return JSON. [`write`] is the only I/O and
//! never replaces a file the operator changed unless told to (`--force`): every file is
//! checked before any is written, so a refusal leaves the directory as it was.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::config::Config;

/// `hsproject.json`'s `platformVersion`: the current developer platform version.
pub const PLATFORM_VERSION: &str = "2026.09";
/// The project's (and the app's displayed) name.
pub const NAME: &str = "dealsync";
/// The app component's uid (unique in the project, ≤64 characters).
pub const APP_UID: &str = "dealsync_app";
/// The webhooks component's uid.
pub const WEBHOOKS_UID: &str = "dealsync_webhooks";
/// HubSpot's ceiling for concurrent deliveries per installed account.
const MAX_CONCURRENT: u32 = 10;
/// The listener's single target path: one app, one URL; each event names its `portalId`.
pub const WEBHOOK_PATH: &str = "/webhooks";

/// Why the project cannot be built or written.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("webhooks.public_url is not set: the app's webhook target must be the listener's public HTTPS URL (e.g. https://dealsync.example.com); set it, or remove [webhooks] to run on polling alone")]
    NoPublicUrl,
    #[error("{path} exists and differs from what dealsync would write; it was left alone and nothing was written. Move it away, or run setup again with --force to replace it")]
    Changed { path: PathBuf },
    #[error("cannot write the project file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One file of the project: where it goes (relative to the project directory) and its JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectFile {
    pub path: PathBuf,
    pub json: Value,
}

impl ProjectFile {
    /// The file's text: pretty JSON and a final newline, as HubSpot's templates are written.
    pub fn render(&self) -> String {
        // A Value always serializes; the fallback only keeps this infallible.
        let mut s = serde_json::to_string_pretty(&self.json).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// `hsproject.json`.
pub fn hsproject() -> Value {
    json!({ "name": NAME, "srcDir": "src", "platformVersion": PLATFORM_VERSION })
}

/// The app's `distribution`, from its auth type.
///
/// dealsync's app is installed in the operator's portal and in every partner's, by an install
/// link (`dealsync install-link`). With OAuth, `private` allows only allowlisted accounts, at
/// most 10 at a time ("Authentication overview"), which a partner program outgrows; so an
/// OAuth app is `marketplace`: installable by link in any account without being listed
/// (listing is a separate, reviewed step; an unlisted app's install cap, reported as 25, is
/// unconfirmed). A static-token app installs in one account and must be `private` (same page).
pub fn distribution(oauth: bool) -> &'static str {
    if oauth {
        "marketplace"
    } else {
        "private"
    }
}

/// The scopes the app requires: exactly what the install link asks for (`[oauth] scopes`,
/// which defaults to [`crate::oauth::SCOPES`]); HubSpot refuses an install whose authorize
/// URL asks for a scope the app does not declare. Without `[oauth]`, [`crate::oauth::SCOPES`].
pub fn required_scopes(config: &Config) -> Vec<String> {
    match &config.oauth {
        Some(app) => app.scopes.clone(),
        None => crate::oauth::SCOPES
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    }
}

/// `src/app/app-hsmeta.json`: OAuth (with the config's redirect URL) when the config has an
/// `[oauth]` section, otherwise a static token.
pub fn app(config: &Config) -> Value {
    let oauth = config.oauth.as_deref();
    let mut auth = json!({
        "type": if oauth.is_some() { "oauth" } else { "static" },
        "requiredScopes": required_scopes(config),
        "optionalScopes": [],
        "conditionallyRequiredScopes": [],
    });
    if let Some(app) = oauth {
        auth["redirectUrls"] = json!([app.redirect_url]);
    }
    json!({
        "uid": APP_UID,
        "type": "app",
        "config": {
            "name": NAME,
            "description": format!(
                "dealsync: shares partner deals, their fields and shared messages between {} and each partner's HubSpot portal.",
                config.hubspot.name
            ),
            "distribution": distribution(oauth.is_some()),
            "auth": auth,
        },
    })
}

/// Every deal property whose change the listener acts on, by either side's name (one app is
/// installed in every portal, so its subscriptions are the union): the synced fields, and what
/// `ingest::webhook` treats as relevant beside them — the lifecycle (exclusions, the stage),
/// invitations, registrations and quote requests, and the deal team. Sorted, each once;
/// `hs_lastmodifieddate` cannot be subscribed to.
pub fn deal_properties(config: &Config) -> Vec<String> {
    let mut v: Vec<String> = config
        .fields
        .iter()
        .flat_map(|f| [f.hubspot_property.clone(), f.partner_property.clone()])
        .collect();
    v.extend([
        crate::properties::EXCLUDED_PARTNERS.to_owned(),
        "dealstage".to_owned(),
    ]);
    v.extend(crate::invite::props());
    v.extend([
        crate::properties::REGISTER.to_owned(),
        crate::properties::QUOTE_REQUEST.to_owned(),
    ]);
    v.extend(crate::team::watched().iter().map(|s| (*s).to_owned()));
    subscribable(v)
}

/// Note properties whose change can matter to a synced message: what the engine reads of a
/// shared note (`engine::messages::content_props`). A note event only queues the link of a
/// message already synced; polling finds new ones.
pub fn note_properties() -> Vec<String> {
    subscribable(crate::engine::messages::content_props())
}

fn subscribable(mut v: Vec<String>) -> Vec<String> {
    v.retain(|p| p != "hs_lastmodifieddate" && !p.is_empty());
    v.sort();
    v.dedup();
    v
}

/// The webhook target: the listener's public URL + [`WEBHOOK_PATH`].
pub fn target_url(config: &Config) -> Result<Option<String>, ProjectError> {
    let Some(w) = &config.webhooks else {
        return Ok(None);
    };
    let base = w.public_url.as_deref().ok_or(ProjectError::NoPublicUrl)?;
    Ok(Some(format!(
        "{}{WEBHOOK_PATH}",
        base.trim_end_matches('/')
    )))
}

/// One webhook subscription the app needs, as HubSpot's app webhooks API lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subscription {
    /// `deal.creation`, `object.propertyChange`, …
    pub event_type: String,
    pub property: Option<String>,
    /// `0-46` for notes (the generic `object.*` events); `None` for `deal.*`.
    pub object_type_id: Option<&'static str>,
}

impl Subscription {
    fn new(event_type: &str, property: Option<String>, notes: bool) -> Subscription {
        Subscription {
            event_type: event_type.to_owned(),
            property,
            object_type_id: notes.then_some("0-46"),
        }
    }

    /// As the operator reads it: `deal.propertyChange (dealname)`, `object.creation (notes)`.
    pub fn label(&self) -> String {
        let mut inner: Vec<&str> = Vec::new();
        if self.object_type_id.is_some() {
            inner.push("notes");
        }
        if let Some(p) = &self.property {
            inner.push(p);
        }
        if inner.is_empty() {
            self.event_type.clone()
        } else {
            format!("{} ({})", self.event_type, inner.join(", "))
        }
    }
}

/// Every webhook subscription the app needs (see [`webhooks`]).
pub fn subscriptions(config: &Config) -> Vec<Subscription> {
    let mut v: Vec<Subscription> = [
        "deal.creation",
        "deal.deletion",
        "deal.restore",
        "deal.merge",
        "deal.associationChange",
    ]
    .iter()
    .map(|t| Subscription::new(t, None, false))
    .collect();
    v.extend(
        deal_properties(config)
            .into_iter()
            .map(|p| Subscription::new("deal.propertyChange", Some(p), false)),
    );
    v.extend(
        ["object.creation", "object.deletion"]
            .iter()
            .map(|t| Subscription::new(t, None, true)),
    );
    v.extend(
        note_properties()
            .into_iter()
            .map(|p| Subscription::new("object.propertyChange", Some(p), true)),
    );
    v
}

/// `src/app/webhooks/webhooks-hsmeta.json`, or `None` without `[webhooks]` (polling alone).
///
/// Deals use `legacyCrmObjects` (`deal.creation`, `deal.deletion`, `deal.restore`,
/// `deal.merge`, `deal.associationChange`, `deal.propertyChange` per property): the `deal.*`
/// events the listener classifies. Notes have no `note.*` types, so they use `crmObjects`
/// (`object.creation`, `object.deletion`, `object.propertyChange` per property, `objectType`
/// `note`; the docs' example names `contact`, so the singular name is assumed). Every
/// subscription is `active`: HubSpot starts new ones paused otherwise.
pub fn webhooks(config: &Config) -> Result<Option<Value>, ProjectError> {
    let Some(target) = target_url(config)? else {
        return Ok(None);
    };
    let (notes, deals): (Vec<Subscription>, Vec<Subscription>) = subscriptions(config)
        .into_iter()
        .partition(|s| s.object_type_id.is_some());
    let entry = |s: &Subscription| {
        let mut v = json!({ "subscriptionType": s.event_type, "active": true });
        if s.object_type_id.is_some() {
            v["objectType"] = json!("note");
        }
        if let Some(p) = &s.property {
            v["propertyName"] = json!(p);
        }
        v
    };
    let notes: Vec<Value> = notes.iter().map(entry).collect();
    let deals: Vec<Value> = deals.iter().map(entry).collect();
    Ok(Some(json!({
        "uid": WEBHOOKS_UID,
        "type": "webhooks",
        "config": {
            "settings": { "targetUrl": target, "maxConcurrentRequests": MAX_CONCURRENT },
            "subscriptions": { "crmObjects": notes, "legacyCrmObjects": deals },
        },
    })))
}

/// Every file of the project, in the order they are printed and written.
pub fn files(config: &Config) -> Result<Vec<ProjectFile>, ProjectError> {
    let mut v = vec![
        ProjectFile {
            path: PathBuf::from("hsproject.json"),
            json: hsproject(),
        },
        ProjectFile {
            path: ["src", "app", "app-hsmeta.json"].iter().collect(),
            json: app(config),
        },
    ];
    if let Some(w) = webhooks(config)? {
        v.push(ProjectFile {
            path: ["src", "app", "webhooks", "webhooks-hsmeta.json"]
                .iter()
                .collect(),
            json: w,
        });
    }
    Ok(v)
}

/// What [`write`] did with one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// Already there with the same JSON (formatting aside): left untouched.
    Unchanged,
    /// Differed and `force` was given.
    Replaced,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Created => "created",
            Outcome::Unchanged => "unchanged",
            Outcome::Replaced => "replaced",
        })
    }
}

/// Writes `files` under `dir`. A file that exists with the same JSON is left as it is (so a
/// second run changes nothing, not even modification times); one that differs — or is not
/// JSON — is refused with [`ProjectError::Changed`] before anything is written, unless
/// `force`.
pub async fn write(
    dir: &Path,
    files: &[ProjectFile],
    force: bool,
) -> Result<Vec<(PathBuf, Outcome)>, ProjectError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ProjectError::Io { path, source }
    };
    let mut plan = Vec::new();
    for f in files {
        let path = dir.join(&f.path);
        let outcome = match tokio::fs::read(&path).await {
            Ok(bytes) => {
                let same = serde_json::from_slice::<Value>(&bytes).is_ok_and(|v| v == f.json);
                match (same, force) {
                    (true, _) => Outcome::Unchanged,
                    (false, true) => Outcome::Replaced,
                    (false, false) => return Err(ProjectError::Changed { path }),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Created,
            Err(e) => return Err(io(&path)(e)),
        };
        plan.push((path, outcome, f.render()));
    }
    let mut done = Vec::new();
    for (path, outcome, text) in plan {
        if outcome != Outcome::Unchanged {
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(io(parent))?;
            }
            tokio::fs::write(&path, text).await.map_err(io(&path))?;
        }
        done.push((path, outcome));
    }
    Ok(done)
}

/// What the operator does next, as lines: upload with HubSpot's CLI, then install.
pub fn next_steps(dir: &Path, config_path: &Path, config: &Config) -> Vec<String> {
    let mut out = vec![format!(
        "next: upload the app with HubSpot's CLI (npm install -g @hubspot/cli; hs account auth): cd {} && hs project upload",
        dir.display()
    )];
    if config.oauth.is_some() {
        out.push("then: copy the app's client id and secret from its Auth tab into [oauth] (client_id, client_secret_*) if they are not there yet".into());
        let portals =
            std::iter::once(&config.hubspot).chain(config.partners.iter().map(|p| &p.portal));
        for p in portals {
            let link = format!(
                "dealsync install-link --config {} --portal {}",
                config_path.display(),
                p.name
            );
            out.push(match p.auth {
                crate::config::PortalAuth::OAuth => format!(
                    "then: install it in {}: {link}, and give the link to that portal's admin",
                    p.name
                ),
                // Migrating from a private-app token: the install link only means something
                // once the portal authenticates through the app.
                crate::config::PortalAuth::Static(_) => format!(
                    "then: {} still uses a token: set auth = \"oauth\" there (without token_*), restart dealsync, then {link}",
                    p.name
                ),
            });
        }
    } else {
        out.push("then: install the app in the portal and put its access token in the portal's token_* setting".into());
    }
    if config.webhooks.is_none() {
        out.push("note: no [webhooks] section, so the app has no webhooks and dealsync runs on polling alone".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const BASE: &str = r#"
[store]
path = "/tmp/dealsync-project-test.db"
dead_letter_path = "/tmp/dealsync-project-test.jsonl"

[hubspot]
base_url = "http://127.0.0.1:1"
token_env = "HT"
webhook_secret_env = "WS"

[[partners]]
name = "partner-a"
base_url = "http://127.0.0.1:1"
token_env = "PT"

[partners.stage_map]
appointmentscheduled = "appointmentscheduled"

[fields.dealname]
partner_property = "dealname"
hubspot_property = "dealname"

[fields.amount]
partner_property = "partner_amount"
hubspot_property = "amount"

[webhooks]
listen = "127.0.0.1:0"
public_url = "https://dealsync.example.com/"
"#;

    const OAUTH: &str = r#"
[oauth]
client_id = "cid"
client_secret_env = "CS"
redirect_url = "https://dealsync.example.com/oauth/callback"
"#;

    fn load(text: &str) -> Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dealsync.toml");
        std::fs::write(&path, text).expect("write config");
        let env: HashMap<String, String> = ["HT", "PT", "WS", "CS"]
            .iter()
            .map(|k| ((*k).to_owned(), "x".to_owned()))
            .collect();
        Config::load_with(&path, &env).expect("config")
    }

    fn subs<'a>(w: &'a Value, list: &str) -> &'a [Value] {
        w["config"]["subscriptions"][list]
            .as_array()
            .map_or(&[], Vec::as_slice)
    }

    #[test]
    fn scopes_are_the_ones_dealsync_asks_for() {
        for text in [BASE.to_owned(), format!("{BASE}{OAUTH}")] {
            let a = app(&load(&text));
            let scopes: Vec<&str> = a["config"]["auth"]["requiredScopes"]
                .as_array()
                .expect("scopes")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(scopes, crate::oauth::SCOPES);
        }
    }

    #[test]
    fn auth_and_distribution_follow_the_config() {
        let a = app(&load(BASE));
        assert_eq!(a["config"]["auth"]["type"], "static");
        assert_eq!(a["config"]["distribution"], "private");
        assert!(a["config"]["auth"].get("redirectUrls").is_none());

        let a = app(&load(&format!("{BASE}{OAUTH}")));
        assert_eq!(a["config"]["auth"]["type"], "oauth");
        assert_eq!(a["config"]["distribution"], "marketplace");
        assert_eq!(
            a["config"]["auth"]["redirectUrls"],
            json!(["https://dealsync.example.com/oauth/callback"])
        );
        assert_eq!(a["uid"], APP_UID);
        assert_eq!(a["type"], "app");
    }

    #[test]
    fn subscriptions_cover_every_synced_property_and_the_deal_events() {
        let config = load(BASE);
        let w = webhooks(&config).expect("webhooks").expect("configured");
        assert_eq!(
            w["config"]["settings"]["targetUrl"],
            "https://dealsync.example.com/webhooks"
        );
        let deals = subs(&w, "legacyCrmObjects");
        for t in [
            "deal.creation",
            "deal.deletion",
            "deal.restore",
            "deal.merge",
            "deal.associationChange",
        ] {
            assert!(
                deals.iter().any(|s| s["subscriptionType"] == t),
                "{t} missing"
            );
        }
        let watched: Vec<&str> = deals
            .iter()
            .filter(|s| s["subscriptionType"] == "deal.propertyChange")
            .filter_map(|s| s["propertyName"].as_str())
            .collect();
        let mut wanted: Vec<String> = config
            .fields
            .iter()
            .flat_map(|f| [f.hubspot_property.clone(), f.partner_property.clone()])
            .collect();
        wanted.extend([
            crate::properties::EXCLUDED_PARTNERS.into(),
            "dealstage".into(),
            crate::properties::REGISTER.into(),
            crate::properties::QUOTE_REQUEST.into(),
            crate::properties::ADD_PARTNER.into(),
            crate::properties::TEAM_ADD.into(),
            "hubspot_owner_id".into(),
        ]);
        for p in &wanted {
            assert!(watched.contains(&p.as_str()), "{p} is not subscribed");
        }
        assert!(watched.contains(&"partner_amount") && watched.contains(&"amount"));
        let mut once = watched.clone();
        once.dedup();
        assert_eq!(once, watched, "each property once, sorted");
        assert!(!watched.contains(&"hs_lastmodifieddate"));
        assert!(
            deals
                .iter()
                .chain(subs(&w, "crmObjects"))
                .all(|s| s["active"] == true),
            "every subscription starts active"
        );

        let notes = subs(&w, "crmObjects");
        assert!(notes.iter().all(|s| s["objectType"] == "note"));
        for t in ["object.creation", "object.deletion"] {
            assert!(notes.iter().any(|s| s["subscriptionType"] == t), "{t}");
        }
        for p in ["hs_note_body", crate::properties::VISIBILITY] {
            assert!(
                notes.iter().any(|s| s["propertyName"] == p),
                "note property {p}"
            );
        }
    }

    #[test]
    fn no_listener_means_no_webhooks_and_a_listener_needs_its_public_url() {
        let polling = BASE
            .split("[webhooks]")
            .next()
            .expect("base")
            .replace("webhook_secret_env = \"WS\"\n", "");
        let config = load(&polling);
        assert!(webhooks(&config).expect("ok").is_none());
        assert_eq!(files(&config).expect("files").len(), 2);

        let no_public = BASE.replace("public_url = \"https://dealsync.example.com/\"\n", "");
        let err = files(&load(&no_public)).expect_err("needs public_url");
        assert!(matches!(err, ProjectError::NoPublicUrl));
        assert!(err.to_string().contains("webhooks.public_url"), "{err}");
    }

    #[test]
    fn the_layout_is_the_platforms() {
        let fs = files(&load(BASE)).expect("files");
        let paths: Vec<String> = fs
            .iter()
            .map(|f| f.path.to_string_lossy().replace('\\', "/"))
            .collect();
        assert_eq!(
            paths,
            [
                "hsproject.json",
                "src/app/app-hsmeta.json",
                "src/app/webhooks/webhooks-hsmeta.json"
            ]
        );
        assert_eq!(
            fs[0].json,
            json!({"name": "dealsync", "srcDir": "src", "platformVersion": PLATFORM_VERSION})
        );
        assert!(fs[0].render().ends_with("}\n"));
    }

    #[tokio::test]
    async fn writing_is_idempotent_and_never_clobbers_an_edit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = files(&load(BASE)).expect("files");
        let first = write(dir.path(), &fs, false).await.expect("write");
        assert!(first.iter().all(|(_, o)| *o == Outcome::Created));
        let again = write(dir.path(), &fs, false).await.expect("again");
        assert!(again.iter().all(|(_, o)| *o == Outcome::Unchanged));

        let app = dir.path().join("src/app/app-hsmeta.json");
        std::fs::write(&app, "{\"edited\": true}\n").expect("edit");
        std::fs::remove_file(dir.path().join("hsproject.json")).expect("remove");
        let err = write(dir.path(), &fs, false).await.expect_err("refused");
        assert!(
            matches!(&err, ProjectError::Changed { path } if *path == app),
            "{err}"
        );
        assert!(
            !dir.path().join("hsproject.json").exists(),
            "a refusal writes nothing"
        );
        assert_eq!(
            std::fs::read_to_string(&app).expect("read"),
            "{\"edited\": true}\n"
        );

        let forced = write(dir.path(), &fs, true).await.expect("forced");
        assert_eq!(forced[0].1, Outcome::Created);
        assert_eq!(forced[1].1, Outcome::Replaced);
        assert_eq!(forced[2].1, Outcome::Unchanged);
        assert_eq!(std::fs::read_to_string(&app).expect("read"), fs[1].render());
    }
}
