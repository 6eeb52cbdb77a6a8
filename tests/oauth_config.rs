//! `[oauth]` and `auth = "oauth"` in the config: what loads, and every bad combination refused
//! with the key and what to do (issue 15 item 3).

use std::collections::HashMap;

use dealsync::config::{Config, PortalAuth};

const BASE: &str = r#"
[store]
path = "/tmp/x.db"
dead_letter_path = "/tmp/x.jsonl"
[hubspot]
base_url = "http://127.0.0.1:1"
token_env = "HS"
[[partners]]
name = "p"
base_url = "http://127.0.0.1:1"
PARTNER_AUTH
[partners.stage_map]
a = "b"
"#;

const OAUTH: &str = r#"
[oauth]
client_id = "cid"
client_secret_env = "CS"
redirect_url = "https://sync.example.com/oauth/callback"
"#;

const WEBHOOKS: &str = r#"
[webhooks]
listen = "127.0.0.1:0"
public_url = "https://sync.example.com"
"#;

fn load(partner_auth: &str, extra: &str) -> Result<Config, String> {
    let text = format!("{}{extra}", BASE.replace("PARTNER_AUTH", partner_auth));
    let env = HashMap::from([
        ("HS".to_owned(), "hs-token".to_owned()),
        ("PT".to_owned(), "pt-token".to_owned()),
        ("CS".to_owned(), "client-secret-value".to_owned()),
    ]);
    Config::from_toml_str(&text, &env).map_err(|e| e.to_string())
}

#[test]
fn an_oauth_portal_loads_with_the_app_and_a_listener() {
    let c = load("auth = \"oauth\"", &format!("{OAUTH}{WEBHOOKS}")).expect("loads");
    assert!(matches!(c.partners[0].portal.auth, PortalAuth::OAuth));
    assert!(matches!(c.hubspot.auth, PortalAuth::Static(_)));
    let app = c.oauth.as_ref().expect("the app");
    assert_eq!(app.client_id, "cid");
    assert_eq!(app.client_secret.expose(), "client-secret-value");
    assert_eq!(app.callback_path(), "/oauth/callback");
    assert_eq!(app.scopes.len(), dealsync::oauth::SCOPES.len());
    // The daemon gets the app only for the portal that installs it.
    let parts = dealsync::daemon::DaemonParts::from_config(&c);
    assert!(parts.partners[0].oauth.is_some());
    assert!(parts.partners[0].token.is_empty());
    assert!(parts.hubspot.oauth.is_none());
    // The secret never shows in the config's Debug output.
    assert!(!format!("{c:?}").contains("client-secret-value"));
}

#[test]
fn bad_oauth_settings_name_the_key_and_the_fix() {
    let cases: [(&str, String, &[&str]); 5] = [
        (
            "auth = \"oauth\"\ntoken_env = \"PT\"",
            format!("{OAUTH}{WEBHOOKS}"),
            &["partners[0].auth", "keep one"],
        ),
        (
            "auth = \"oauth\"",
            String::new(),
            &["oauth", "no [oauth] section"],
        ),
        (
            "auth = \"oauth\"",
            OAUTH.to_owned(),
            &["oauth.redirect_url", "add [webhooks] listen"],
        ),
        (
            "auth = \"oauth\"",
            format!(
                "{}{WEBHOOKS}",
                OAUTH.replace("https://sync.example.com", "https://elsewhere.example.com")
            ),
            &["oauth.redirect_url", "public_url"],
        ),
        (
            "auth = \"magic\"\ntoken_env = \"PT\"",
            String::new(),
            &["partners[0].auth", "\"static\"", "\"oauth\""],
        ),
    ];
    for (auth, extra, want) in cases {
        let e = load(auth, &extra).expect_err(auth);
        for w in want {
            assert!(e.contains(w), "{auth} / {extra}: {e:?} lacks {w:?}");
        }
        assert!(!e.contains("client-secret-value"), "{e}");
    }
    let e = load("", "").expect_err("a partner without any auth");
    assert!(e.contains("partners[0].token_env"), "{e}");
    assert!(e.contains("auth = \"oauth\""), "{e}");
}
