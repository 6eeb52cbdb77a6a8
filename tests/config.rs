//! Configuration loading and validation: the shipped files load, every bad input gets an
//! error naming the key, and secrets never show up in Debug output or errors.

use std::collections::HashMap;
use std::path::Path;

use dealsync::config::{Config, ConfigError};

const MARKER: &str = "sekrit-marker-7f3a";

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sandbox_env() -> HashMap<String, String> {
    let mut e = HashMap::new();
    e.insert(
        "DEALSYNC_SANDBOX_NOTIFY_SECRET".to_owned(),
        format!("{MARKER}-notify"),
    );
    for p in ["HUBSPOT", "PARTNER_A", "PARTNER_B"] {
        e.insert(
            format!("DEALSYNC_SANDBOX_{p}_TOKEN"),
            format!("{MARKER}-{p}"),
        );
        e.insert(
            format!("DEALSYNC_SANDBOX_{p}_WEBHOOK_SECRET"),
            format!("{MARKER}-wh-{p}"),
        );
    }
    e
}

const MINIMAL: &str = r#"
[store]
path = "/tmp/x.db"
dead_letter_path = "/tmp/x.jsonl"
[hubspot]
base_url = "http://127.0.0.1:1"
token_env = "HS"
[[partners]]
name = "p"
base_url = "http://127.0.0.1:1"
token_env = "PT"
[partners.stage_map]
a = "b"
"#;

fn minimal_env() -> HashMap<String, String> {
    env(&[("HS", MARKER), ("PT", MARKER)])
}

fn err(text: &str, e: &HashMap<String, String>) -> ConfigError {
    Config::from_toml_str(text, e).expect_err("config must be refused")
}

fn assert_names(e: &ConfigError, key: &str) {
    let s = e.to_string();
    assert!(s.contains(key), "error should name {key}: {s}");
    assert!(!s.contains(MARKER), "error leaks a secret: {s}");
}

#[test]
fn shipped_configs_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let c =
        Config::load_with(&root.join("config/sandbox.toml"), &sandbox_env()).expect("sandbox.toml");
    assert_eq!(c.partners.len(), 2);
    assert_eq!(c.fields.len(), 7, "built-in default fields");
    assert_eq!(c.poll_interval.as_millis(), 2000);
    let w = c.webhooks.as_ref().expect("sandbox.toml runs the listener");
    assert_eq!(w.listen.to_string(), "127.0.0.1:8991");
    assert_eq!(
        dealsync::daemon::DaemonParts::from_config(&c)
            .webhooks
            .unwrap()
            .secrets
            .len(),
        3
    );

    let creds = tempfile::tempdir().unwrap();
    for name in [
        "hubspot-token",
        "hubspot-webhook-secret",
        "acme-token",
        "acme-webhook-secret",
        "notify-webhook-secret",
        "smtp-password",
    ] {
        std::fs::write(creds.path().join(name), format!("{MARKER}-{name}\n")).unwrap();
    }
    let e = env(&[("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())]);
    let c = Config::load_with(&root.join("config/example.toml"), &e).expect("example.toml");
    assert_eq!(
        c.hubspot.token().expect("static token").expose(),
        format!("{MARKER}-hubspot-token"),
        "credential trimmed"
    );
    assert_eq!(c.fields.len(), 7);
    let p = c.partner("acme-partners").unwrap();
    assert_eq!(p.map_stage_to_hubspot("contractsent"), Some("contractsent"));
    assert_eq!(p.map_stage_to_partner("closedwon"), Some("closedwon"));
    assert!(
        !format!("{c:?}").contains(MARKER),
        "Debug must redact secrets"
    );
    // Notifications: signed webhook, email over STARTTLS, the partner lead.
    let n = &c.notify;
    assert!(n.enabled());
    let w = n.webhook.as_ref().expect("webhook");
    assert_eq!(w.url, "https://hooks.example.com/dealsync");
    assert_eq!(w.secret.expose(), format!("{MARKER}-notify-webhook-secret"));
    let smtp = n.smtp.as_ref().expect("smtp");
    assert_eq!((smtp.host.as_str(), smtp.port), ("smtp.example.com", 587));
    assert_eq!(
        n.partner_leads.get("acme-partners").map(String::as_str),
        Some("partner-lead@acme-partners.example")
    );
    assert_eq!(
        dealsync::daemon::DaemonParts::from_config(&c)
            .settings
            .notify
            .max_attempts,
        8,
        "the daemon gets them"
    );
    // setup tells the operator exactly what to configure in each app.
    let lines = dealsync::setup::webhook_instructions(&c).join("\n");
    assert!(
        lines.contains("hubspot: webhook target URL https://dealsync.example.com/webhooks/hubspot"),
        "{lines}"
    );
    assert!(
        lines.contains(
            "acme-partners: webhook target URL https://dealsync.example.com/webhooks/acme-partners"
        ),
        "{lines}"
    );
    assert!(
        lines.contains("deal.propertyChange (dealsync_product_interest)"),
        "{lines}"
    );
    assert!(!lines.contains(MARKER), "no secret in setup output");
    assert!(
        !format!(
            "{:?}",
            dealsync::daemon::DaemonParts::from_config(&c).webhooks
        )
        .contains(MARKER),
        "Debug of the listener settings must redact secrets"
    );
}

#[test]
fn minimal_config_gets_defaults_and_env_overrides() {
    let mut e = minimal_env();
    e.insert("DEALSYNC__SYNC__POLL_INTERVAL_MS".into(), "500".into());
    let c = Config::from_toml_str(MINIMAL, &e).unwrap();
    assert_eq!(c.poll_interval.as_millis(), 500);
    assert_eq!(c.batch_size, 100);
    assert_eq!(c.partners[0].default_pipeline, "default");
}

#[test]
fn secrets_in_the_file_are_refused() {
    let text = MINIMAL.replace("token_env = \"HS\"", &format!("token = \"{MARKER}\""));
    let e = err(&text, &minimal_env());
    assert!(matches!(e, ConfigError::Secret { .. }));
    assert_names(&e, "hubspot.token");
    assert!(e.to_string().contains("_env"), "says what to do: {e}");
}

#[test]
fn bad_inputs_name_their_key() {
    let e = minimal_env();
    let cases: Vec<(String, &str)> = vec![
        (MINIMAL.replace("[hubspot]", "[hubspot]\ncolour = \"red\""), "colour"),
        (MINIMAL.replace("http://127.0.0.1:1\"\ntoken_env = \"HS\"", "not a url\"\ntoken_env = \"HS\""), "hubspot.base_url"),
        (MINIMAL.replace("name = \"p\"", "name = \"Bad Name\""), "partners[0].name"),
        (MINIMAL.replace("[partners.stage_map]\na = \"b\"", ""), "partners[0].stage_map"),
        (format!("{MINIMAL}\n[sync]\nbatch_size = 0\n"), "sync.batch_size"),
        (format!("{MINIMAL}\n[sync]\nbatch_size = 101\n"), "sync.batch_size"),
        (format!("{MINIMAL}\n[sync]\npoll_interval_ms = 0\n"), "sync.poll_interval_ms"),
        (format!("{MINIMAL}\n[fields.owner]\npartner_property = \"hubspot_owner_id\"\nhubspot_property = \"hubspot_owner_id\"\n"), "fields.owner"),
        (format!("{MINIMAL}\n[fields.p]\npartner_property = \"pipeline\"\nhubspot_property = \"pipeline\"\n"), "fields.p"),
        (format!("{MINIMAL}\n[fields.s]\npartner_property = \"x\"\nhubspot_property = \"x\"\nkind = \"stage\"\n"), "fields.s"),
        (MINIMAL.replace("token_env = \"PT\"", "token_env = \"MISSING\""), "partners[0].token_env"),
        (format!("{MINIMAL}\n[webhooks]\nlisten = \"localhost\"\n"), "webhooks.listen"),
        (format!("\"a[9223372036854775806]\" = 1\n{MINIMAL}"), "a[9223372036854775806]"),
        (format!("{MINIMAL}\n[webhooks]\nlisten = \"127.0.0.1:0\"\n"), "webhook secret"),
        (format!("{MINIMAL}\n[webhooks]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://x.example/hooks\"\n"), "webhooks.public_url"),
        (MINIMAL.replace("token_env = \"PT\"", "token_file = \"/nonexistent/token\""), "partners[0].token_file"),
        (MINIMAL.replace("token_env = \"PT\"", "token_credential = \"t\""), "partners[0].token_credential"),
        (MINIMAL.replace("token_env = \"PT\"", "token_env = \"PT\"\ntoken_file = \"/x\""), "partners[0].token_"),
        (MINIMAL.replace("token_env = \"PT\"", "token_env = \"PT\"\nlead_email = \"nobody\""), "partners[0].lead_email"),
        (format!("{MINIMAL}\n[notifications]\nmax_attempts = 3\n"), "notifications"),
        (format!("{MINIMAL}\n[notifications]\nwebhook_url = \"https://h.example/x\"\n"), "notifications.webhook_secret_env"),
        (format!("{MINIMAL}\n[notifications]\nwebhook_secret_env = \"HS\"\n"), "notifications.webhook_url"),
        (format!("{MINIMAL}\n[notifications]\nwebhook_url = \"ftp://h.example\"\nwebhook_secret_env = \"HS\"\n"), "notifications.webhook_url"),
        (format!("{MINIMAL}\n[notifications.smtp]\nhost = \"smtp.example.com\"\nsecurity = \"none\"\nfrom = \"a@b.example\"\n"), "notifications.smtp.security"),
        (format!("{MINIMAL}\n[notifications.smtp]\nhost = \"smtp.example.com\"\nfrom = \"not an address\"\n"), "notifications.smtp.from"),
        (format!("{MINIMAL}\n[notifications.smtp]\nhost = \"smtp.example.com\"\nfrom = \"a@b.example\"\nusername = \"u\"\n"), "notifications.smtp"),
        (format!("{MINIMAL}\n[notifications.smtp]\nhost = \"smtp.example.com\"\nfrom = \"a@b.example\"\npassword = \"x\"\n"), "notifications.smtp.password"),
        (format!("{MINIMAL}\n[metrics]\nlisten = \"localhost\"\n"), "metrics.listen"),
        (format!("{MINIMAL}\n[messages]\ntag = \"\"\n"), "messages.tag"),
        (format!("{MINIMAL}\n[messages]\ntag = \"two words\"\n"), "messages.tag"),
        (format!("{MINIMAL}\n[messages]\nmarking = \"label\"\n"), "marking"),
        (format!("{}\n[webhooks]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n", MINIMAL.replace("token_env = \"HS\"", "token_env = \"HS\"\nwebhook_secret_env = \"HS\"")), "remove [metrics]"),
    ];
    for (text, key) in cases {
        assert_names(&err(&text, &e), key);
    }
    let dup = format!("{MINIMAL}\n[[partners]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:1\"\ntoken_env = \"PT\"\n[partners.stage_map]\na = \"b\"\n");
    assert_names(&err(&dup, &e), "partners[1].name");
}

#[test]
fn empty_secret_files_and_credentials_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty"), "  \n").unwrap();
    let text = MINIMAL.replace(
        "token_env = \"PT\"",
        &format!("token_file = \"{}\"", dir.path().join("empty").display()),
    );
    assert_names(&err(&text, &minimal_env()), "partners[0].token_file");
    std::fs::write(dir.path().join("t"), MARKER).unwrap();
    let text = MINIMAL.replace("token_env = \"PT\"", "token_credential = \"t\"");
    let mut e = minimal_env();
    e.insert(
        "CREDENTIALS_DIRECTORY".into(),
        dir.path().to_str().unwrap().into(),
    );
    let c = Config::from_toml_str(&text, &e).unwrap();
    assert_eq!(
        c.partners[0].portal.token().expect("static token").expose(),
        MARKER
    );
    assert_eq!(
        format!("{}", c.partners[0].portal.token().expect("static token")),
        "[redacted]"
    );
}

#[test]
fn metrics_without_webhooks_get_a_listener_that_takes_no_webhooks() {
    let text = format!("{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:9187\"\n");
    let c = Config::from_toml_str(&text, &minimal_env()).expect("config");
    assert!(c.webhooks.is_none());
    let w = dealsync::daemon::DaemonParts::from_config(&c)
        .webhooks
        .expect("a listener");
    assert_eq!(w.listen.to_string(), "127.0.0.1:9187");
    assert!(w.secrets.is_empty(), "no portal takes webhooks");
}
