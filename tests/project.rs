//! `dealsync setup --project DIR` (issue 15 item 5) through the built binary, against a sandbox
//! started in this process: a dry run prints the HubSpot project (hsproject.json, the app, its
//! webhooks) and writes no file; a run writes exactly those files and ends with the upload
//! command; a second run changes nothing; a file the operator edited is refused, named, and
//! left alone (`--force` replaces it).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::process::Command;

const PUBLIC_URL: &str = "https://dealsync.example.com";

struct World {
    sb: dealsync::sandbox::SandboxHandle,
    dir: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        World {
            sb: common::unlimited_sandbox().await,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("dealsync.toml")
    }

    fn project(&self) -> PathBuf {
        self.dir.path().join("hubspot-app")
    }

    /// Static tokens for both portals (so today's property step reaches the sandbox), a
    /// listener with its public URL, and a synced field whose names differ per side.
    fn write_config(&self, extra: &str) {
        let text = format!(
            r#"[store]
path = "{db}"
dead_letter_path = "{dl}"

[hubspot]
base_url = "{base}"
token_env = "HS_TOKEN"
webhook_secret_env = "HS_SECRET"

[[partners]]
name = "partner-a"
base_url = "{base}"
token_env = "PA_TOKEN"

[partners.stage_map]
appointmentscheduled = "appointmentscheduled"

[fields.dealname]
partner_property = "dealname"
hubspot_property = "dealname"

[fields.dealstage]
partner_property = "dealstage"
hubspot_property = "dealstage"
kind = "stage"

[fields.pain]
partner_property = "partner_pain"
hubspot_property = "dealsync_specific_pain"

[webhooks]
listen = "127.0.0.1:0"
public_url = "{PUBLIC_URL}"
{extra}"#,
            db = self.dir.path().join("dealsync.db").display(),
            dl = self.dir.path().join("dead.jsonl").display(),
            base = self.sb.base_url,
        );
        std::fs::write(self.config_path(), text).expect("write config");
    }

    fn env(&self) -> HashMap<String, String> {
        HashMap::from([
            ("HS_TOKEN".into(), self.sb.portal("hubspot").token.clone()),
            ("PA_TOKEN".into(), self.sb.portal("partner-a").token.clone()),
            ("HS_SECRET".into(), "secret".into()),
            ("APP_SECRET".into(), "app-secret".into()),
        ])
    }

    async fn setup(&self, extra_args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_dealsync"))
            .arg("setup")
            .arg("--config")
            .arg(self.config_path())
            .arg("--project")
            .arg(self.project())
            .args(extra_args)
            .envs(self.env())
            .env("DEALSYNC_LOG", "warn")
            .output()
            .await
            .expect("run dealsync");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

const FILES: [&str; 3] = [
    "hsproject.json",
    "src/app/app-hsmeta.json",
    "src/app/webhooks/webhooks-hsmeta.json",
];

/// The JSON printed after `would write {path}:` on a dry run.
fn printed(stdout: &str, path: &Path) -> Value {
    let marker = format!("would write {}:\n", path.display());
    let at = stdout
        .find(&marker)
        .unwrap_or_else(|| panic!("{marker:?} not printed:\n{stdout}"));
    let rest = &stdout[at + marker.len()..];
    serde_json::Deserializer::from_str(rest)
        .into_iter::<Value>()
        .next()
        .expect("a JSON value follows")
        .expect("valid JSON")
}

fn on_disk(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("valid JSON")
}

fn property_subscriptions(webhooks: &Value) -> Vec<String> {
    webhooks["config"]["subscriptions"]["legacyCrmObjects"]
        .as_array()
        .expect("legacyCrmObjects")
        .iter()
        .filter(|s| s["subscriptionType"] == "deal.propertyChange")
        .filter_map(|s| s["propertyName"].as_str().map(str::to_owned))
        .collect()
}

fn last_lines(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[tokio::test]
async fn setup_writes_the_hubspot_project_once_and_never_clobbers_an_edit() {
    let w = World::new().await;
    w.write_config("");

    // Dry run: every file printed, none written.
    let (code, out, err) = w.setup(&["--dry-run"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!w.project().exists(), "a dry run writes no file");
    let project = printed(&out, &w.project().join("hsproject.json"));
    assert_eq!(project["srcDir"], "src");
    assert_eq!(
        project["platformVersion"],
        dealsync::project::PLATFORM_VERSION
    );
    let app = printed(&out, &w.project().join("src/app/app-hsmeta.json"));
    assert_eq!(app["type"], "app");
    assert_eq!(app["config"]["auth"]["type"], "static");
    assert_eq!(app["config"]["distribution"], "private");
    let scopes: Vec<&str> = app["config"]["auth"]["requiredScopes"]
        .as_array()
        .expect("scopes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(scopes, dealsync::oauth::SCOPES);
    let hooks = printed(
        &out,
        &w.project().join("src/app/webhooks/webhooks-hsmeta.json"),
    );
    assert_eq!(
        hooks["config"]["settings"]["targetUrl"],
        format!("{PUBLIC_URL}/webhooks")
    );
    let props = property_subscriptions(&hooks);
    for p in [
        "dealname",
        "dealstage",
        "partner_pain",
        dealsync::properties::SPECIFIC_PAIN,
    ] {
        assert!(
            props.iter().any(|s| s == p),
            "{p} not subscribed: {props:?}"
        );
    }
    assert!(
        out.contains("would hubspot: create deal property group dealsync"),
        "today's property step still runs: {out}"
    );
    let lines = last_lines(&out);
    assert!(
        lines.iter().any(|l| l.contains("hs project upload")),
        "{out}"
    );

    // A run writes exactly the printed files and ends with what to do next.
    let (code, out, err) = w.setup(&[]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    for f in FILES {
        let path = w.project().join(f);
        assert!(
            out.contains(&format!("created {}", path.display())),
            "{out}"
        );
    }
    assert_eq!(on_disk(&w.project().join(FILES[0])), project);
    assert_eq!(on_disk(&w.project().join(FILES[1])), app);
    assert_eq!(on_disk(&w.project().join(FILES[2])), hooks);
    let lines = last_lines(&out);
    let upload = lines
        .iter()
        .position(|l| l.contains("hs project upload"))
        .expect("upload command printed");
    assert!(
        lines[upload].contains(&w.project().display().to_string()),
        "the upload runs from DIR: {}",
        lines[upload]
    );
    assert!(
        upload + 3 >= lines.len(),
        "the output ends with the next steps: {out}"
    );

    // A second run changes nothing: not the files, not their modification times.
    let before: Vec<(String, std::time::SystemTime)> = FILES
        .iter()
        .map(|f| {
            let p = w.project().join(f);
            let m = std::fs::metadata(&p).expect("metadata");
            (
                std::fs::read_to_string(&p).expect("read"),
                m.modified().expect("mtime"),
            )
        })
        .collect();
    let (code, out, err) = w.setup(&[]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("nothing to do"), "{out}");
    for (f, (text, mtime)) in FILES.iter().zip(&before) {
        let p = w.project().join(f);
        assert!(out.contains(&format!("unchanged {}", p.display())), "{out}");
        assert_eq!(&std::fs::read_to_string(&p).expect("read"), text);
        assert_eq!(
            &std::fs::metadata(&p)
                .expect("meta")
                .modified()
                .expect("mtime"),
            mtime
        );
    }

    // An operator's edit is refused by name and left alone; --force replaces it.
    let app_path = w.project().join(FILES[1]);
    let edited = "{\"uid\": \"mine\"}\n";
    std::fs::write(&app_path, edited).expect("edit");
    let (code, out, err) = w.setup(&[]).await;
    assert_eq!(code, 65, "{out}\n{err}");
    assert!(err.contains(&app_path.display().to_string()), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&app_path).expect("read"), edited);
    let (code, out, err) = w.setup(&["--force"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!("replaced {}", app_path.display())),
        "{out}"
    );
    assert_eq!(on_disk(&app_path), app);
}

#[tokio::test]
async fn an_oauth_app_is_marketplace_distributed_with_the_configured_redirect() {
    let w = World::new().await;
    w.write_config(&format!(
        r#"
[oauth]
client_id = "client-id"
client_secret_env = "APP_SECRET"
redirect_url = "{PUBLIC_URL}/oauth/callback"
"#
    ));
    let (code, out, err) = w.setup(&["--dry-run"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let app = printed(&out, &w.project().join("src/app/app-hsmeta.json"));
    assert_eq!(app["config"]["auth"]["type"], "oauth");
    assert_eq!(app["config"]["distribution"], "marketplace");
    assert_eq!(
        app["config"]["auth"]["redirectUrls"],
        serde_json::json!([format!("{PUBLIC_URL}/oauth/callback")])
    );
    assert!(out.contains("hs project upload"), "{out}");
    let install = format!(
        "dealsync install-link --config {} --portal partner-a",
        w.config_path().display()
    );
    assert!(
        out.contains(&install),
        "the install link is the next step: {out}"
    );
}

#[tokio::test]
async fn a_listener_without_its_public_url_is_a_config_error() {
    let w = World::new().await;
    w.write_config("");
    let text = std::fs::read_to_string(w.config_path())
        .expect("read")
        .replace(&format!("public_url = \"{PUBLIC_URL}\"\n"), "");
    std::fs::write(w.config_path(), text).expect("write");
    let (code, out, err) = w.setup(&[]).await;
    assert_eq!(code, 78, "{out}\n{err}");
    assert!(err.contains("webhooks.public_url"), "{err}");
    assert!(!w.project().exists(), "nothing written");
}
