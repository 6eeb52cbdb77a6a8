//! The sandbox as HubSpot's OAuth server: authorization code with PKCE, token exchange and
//! refresh, introspection, revocation, a portal uninstalling the app, expiry, rotation and
//! injected token-endpoint faults.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{eventually, Answer};
use dealsync::sandbox::{OAuthApp, SandboxConfig, SandboxHandle};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const REDIRECT: &str = "http://127.0.0.1:9/oauth/callback?app=dealsync";
const VERIFIER: &str = "dBjftJeZ4CVP-mJ92K9-9yqFo3b3u1u0ZkQ6a3Bn2Xg-plenty-of-entropy";
const DEALS: &str = "/crm/objects/2026-09/deals";

fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier))
}

/// A client of one sandbox's OAuth app that never follows redirects.
struct App {
    base: String,
    creds: OAuthApp,
    http: reqwest::Client,
}

impl App {
    fn of(sb: &SandboxHandle) -> App {
        App {
            base: sb.base_url.clone(),
            creds: sb.oauth_app(),
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
        }
    }

    async fn answer(rb: reqwest::RequestBuilder) -> Answer {
        let resp = rb.send().await.expect("request reaches the sandbox");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    /// `GET /oauth/authorize` as a browser would send it, with the portal picked.
    async fn authorize(&self, portal: &str, extra: &[(&str, &str)]) -> Answer {
        let ch = challenge(VERIFIER);
        let mut q = vec![
            ("client_id", self.creds.client_id.as_str()),
            ("redirect_uri", REDIRECT),
            ("scope", "crm.objects.deals.read crm.objects.deals.write"),
            ("state", "st=1&x y"),
            ("code_challenge", ch.as_str()),
            ("code_challenge_method", "S256"),
            ("portal", portal),
        ];
        for (k, v) in extra {
            q.retain(|(qk, _)| qk != k);
            q.push((k, v));
        }
        let url = format!("{}/oauth/authorize", self.base);
        Self::answer(self.http.get(url).query(&q)).await
    }

    /// A code for `portal`, read from the redirect's `Location`.
    async fn code(&self, portal: &str) -> String {
        let a = self.authorize(portal, &[]).await;
        assert_eq!(a.status, 302, "authorize: {}", a.text);
        let loc = reqwest::Url::parse(a.header("location").expect("Location")).expect("URL");
        let q: Vec<(String, String)> = loc.query_pairs().into_owned().collect();
        assert_eq!(
            &loc.as_str()[..REDIRECT.len()],
            REDIRECT,
            "redirect keeps its query"
        );
        assert!(q.contains(&("app".into(), "dealsync".into())), "{loc}");
        assert!(q.contains(&("state".into(), "st=1&x y".into())), "{loc}");
        q.into_iter()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v)
            .expect("code in Location")
    }

    async fn form(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let url = format!("{}/oauth/2026-09/{path}", self.base);
        Self::answer(self.http.post(url).form(fields)).await
    }

    async fn exchange(&self, code: &str, verifier: &str) -> Answer {
        self.exchange_with(code, verifier, REDIRECT, &self.creds.client_secret)
            .await
    }

    async fn exchange_with(
        &self,
        code: &str,
        verifier: &str,
        redirect: &str,
        secret: &str,
    ) -> Answer {
        self.form(
            "token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", &self.creds.client_id),
                ("client_secret", secret),
                ("redirect_uri", redirect),
                ("code", code),
                ("code_verifier", verifier),
            ],
        )
        .await
    }

    /// Authorizes and exchanges; returns the token answer's body.
    async fn install(&self, portal: &str) -> Value {
        let code = self.code(portal).await;
        let a = self.exchange(&code, VERIFIER).await;
        assert_eq!(a.status, 200, "exchange: {}", a.text);
        a.body
    }

    async fn refresh(&self, refresh_token: &str) -> Answer {
        self.form(
            "token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", &self.creds.client_id),
                ("client_secret", &self.creds.client_secret),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }

    async fn introspect(&self, token: &str) -> Value {
        let a = self
            .form(
                "token/introspect",
                &[
                    ("client_id", &self.creds.client_id),
                    ("client_secret", &self.creds.client_secret),
                    ("token", token),
                ],
            )
            .await;
        assert_eq!(a.status, 200, "introspect: {}", a.text);
        a.body
    }

    async fn api_get(&self, token: &str, path: &str) -> Answer {
        let url = format!("{}{path}", self.base);
        Self::answer(self.http.get(url).bearer_auth(token)).await
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        let mut rb = self
            .http
            .request(method, format!("{}/_sandbox{path}", self.base));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        Self::answer(rb).await
    }
}

fn access(body: &Value) -> &str {
    body["access_token"].as_str().expect("access_token")
}

fn refresh_token(body: &Value) -> &str {
    body["refresh_token"].as_str().expect("refresh_token")
}

fn assert_oauth_error(a: &Answer, code: &str) {
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(a.body["status"], code, "{}", a.text);
    assert_eq!(a.body["category"], code, "{}", a.text);
    assert!(
        a.body["correlationId"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{}",
        a.text
    );
    assert!(
        a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        a.text
    );
}

async fn sandbox(ttl: Duration, rotate: bool) -> SandboxHandle {
    common::sandbox_with(SandboxConfig {
        oauth_token_ttl: ttl,
        oauth_rotate_refresh: rotate,
        ..SandboxConfig::default()
    })
    .await
}

#[tokio::test]
async fn pkce_flow_gives_a_token_that_acts_for_the_chosen_portal() {
    let sb = sandbox(Duration::from_secs(1800), false).await;
    let app = App::of(&sb);
    let partner = common::portal(&sb, "partner-a");
    let hubspot = common::portal(&sb, "hubspot");

    let token = app.install("partner-a").await;
    assert_eq!(token["token_type"], "bearer");
    assert_eq!(token["expires_in"], 1800);
    assert_eq!(token["hub_id"], partner.info.portal_id);
    assert_eq!(
        token["scopes"],
        json!(["crm.objects.deals.read", "crm.objects.deals.write"])
    );

    let created = App::answer(
        app.http
            .post(format!("{}{DEALS}", app.base))
            .bearer_auth(access(&token))
            .json(&json!({ "properties": { "dealname": "via OAuth" } })),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let path = format!("{DEALS}/{}", created.body["id"].as_str().expect("id"));
    assert_eq!(
        partner.get(&path).await.status,
        200,
        "the deal is partner-a's"
    );
    assert_eq!(hubspot.get(&path).await.status, 404, "not hubspot's");
    assert_eq!(
        partner.get(DEALS).await.status,
        200,
        "the static token still works"
    );

    let info = app.introspect(access(&token)).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["hub_id"], partner.info.portal_id);
    assert_eq!(info["client_id"], app.creds.client_id.as_str());
    assert_eq!(info["token_type"], "access_token");
    assert_eq!(
        info["scope"],
        "crm.objects.deals.read crm.objects.deals.write"
    );
    assert!(info["exp"]
        .as_i64()
        .is_some_and(|e| e > chrono::Utc::now().timestamp()));
    let info = app.introspect(refresh_token(&token)).await;
    assert_eq!(
        (info["active"].clone(), info["token_type"].clone()),
        (json!(true), json!("refresh_token"))
    );
    assert_eq!(app.introspect("nonsense").await, json!({ "active": false }));

    let summary = app.control(reqwest::Method::GET, "/oauth", None).await;
    assert_eq!(summary.body["exchanges"], 1);
    assert_eq!(summary.body["introspections"], 3);
    assert_eq!(summary.body["installs"][0]["portal"], "partner-a");
    assert_eq!(summary.body["installs"][0]["revoked"], false);
    assert!(
        !summary.text.contains(&app.creds.client_secret),
        "no secret in the summary"
    );
    assert!(
        !summary.text.contains(access(&token)),
        "no token in the summary"
    );

    let startup = serde_json::to_value(sb.startup()).expect("startup JSON");
    assert_eq!(startup["oauth"]["client_id"], app.creds.client_id.as_str());
    assert_eq!(
        startup["oauth"]["authorize_url"],
        format!("{}/oauth/authorize", sb.base_url)
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn bad_exchanges_are_refused_with_their_code() {
    let sb = sandbox(Duration::from_secs(1800), false).await;
    let app = App::of(&sb);

    let code = app.code("partner-b").await;
    assert_oauth_error(
        &app.exchange(&code, "not-the-verifier").await,
        "BAD_CODE_VERIFIER",
    );

    let code = app.code("partner-b").await;
    let other = "http://127.0.0.1:9/elsewhere";
    let a = app
        .exchange_with(&code, VERIFIER, other, &app.creds.client_secret)
        .await;
    assert_oauth_error(&a, "BAD_REDIRECT_URI");

    let code = app.code("partner-b").await;
    let a = app
        .exchange_with(&code, VERIFIER, REDIRECT, "wrong-secret")
        .await;
    assert_oauth_error(&a, "BAD_CLIENT_SECRET");
    assert_eq!(
        app.exchange(&code, VERIFIER).await.status,
        200,
        "a refused secret leaves the code"
    );
    assert_oauth_error(&app.exchange(&code, VERIFIER).await, "BAD_AUTH_CODE");

    let a = app.form("token", &[("grant_type", "password")]).await;
    assert_oauth_error(&a, "BAD_GRANT_TYPE");
    let a = app
        .form(
            "token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "someone-else"),
            ],
        )
        .await;
    assert_oauth_error(&a, "BAD_CLIENT_ID");
    assert_oauth_error(&app.refresh("oauth-rt-unknown").await, "BAD_REFRESH_TOKEN");

    let summary = app.control(reqwest::Method::GET, "/oauth", None).await;
    assert_eq!(summary.body["exchanges"], 1);
    assert_eq!(summary.body["failed"], 7);
    sb.shutdown().await;
}

#[tokio::test]
async fn authorize_refuses_what_a_consent_screen_would() {
    let sb = sandbox(Duration::from_secs(1800), false).await;
    let app = App::of(&sb);
    let cases: [(&[(&str, &str)], &str); 7] = [
        (&[("client_id", "unknown")], "BAD_CLIENT_ID"),
        (&[("portal", "nowhere")], "BAD_PORTAL"),
        (&[("portal", "")], "BAD_PORTAL"),
        (&[("code_challenge", "")], "BAD_CODE_CHALLENGE"),
        (&[("code_challenge_method", "plain")], "BAD_CODE_CHALLENGE"),
        (&[("redirect_uri", "")], "BAD_REDIRECT_URI"),
        (&[("scope", "")], "BAD_SCOPE"),
    ];
    for (extra, code) in cases {
        let a = app.authorize("partner-a", extra).await;
        assert_oauth_error(&a, code);
        assert!(a.header("location").is_none(), "{extra:?}");
    }

    let a = app
        .control(
            reqwest::Method::POST,
            "/oauth/authorize",
            Some(json!({
                "portal": "hubspot",
                "client_id": app.creds.client_id,
                "redirect_uri": REDIRECT,
                "scope": "oauth",
                "state": "s",
                "code_challenge": challenge(VERIFIER),
            })),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let code = a.body["code"].as_str().expect("code");
    assert!(a.body["location"]
        .as_str()
        .is_some_and(|l| l.contains(code)));
    let token = app.exchange(code, VERIFIER).await;
    assert_eq!(token.body["hub_id"], sb.portal("hubspot").portal_id);
    sb.shutdown().await;
}

#[tokio::test]
async fn an_expired_access_token_is_refused_until_refreshed() {
    let sb = sandbox(Duration::from_secs(1), false).await;
    let app = App::of(&sb);
    let token = app.install("partner-a").await;
    assert_eq!(token["expires_in"], 1);
    assert_eq!(app.api_get(access(&token), DEALS).await.status, 200);

    let expired = eventually(
        "the access token expires",
        Duration::from_secs(10),
        || async {
            let a = app.api_get(access(&token), DEALS).await;
            (a.status == 401).then_some(a)
        },
    )
    .await;
    common::assert_error(&expired, 401, "EXPIRED_AUTHENTICATION");
    assert!(expired.body["message"]
        .as_str()
        .is_some_and(|m| m.contains("expired")));
    assert_eq!(
        app.introspect(access(&token)).await,
        json!({ "active": false })
    );

    let renewed = app.refresh(refresh_token(&token)).await;
    assert_eq!(renewed.status, 200, "{}", renewed.text);
    assert_eq!(
        refresh_token(&renewed.body),
        refresh_token(&token),
        "HubSpot keeps the refresh token"
    );
    assert_ne!(access(&renewed.body), access(&token));
    assert_eq!(app.api_get(access(&renewed.body), DEALS).await.status, 200);
    sb.shutdown().await;
}

#[tokio::test]
async fn rotation_retires_the_old_refresh_token() {
    let sb = sandbox(Duration::from_secs(1800), true).await;
    let app = App::of(&sb);
    let first = app.install("partner-a").await;
    let second = app.refresh(refresh_token(&first)).await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_ne!(refresh_token(&second.body), refresh_token(&first));
    assert_oauth_error(
        &app.refresh(refresh_token(&first)).await,
        "BAD_REFRESH_TOKEN",
    );
    let third = app.refresh(refresh_token(&second.body)).await;
    assert_eq!(third.status, 200, "{}", third.text);
    assert_eq!(
        app.api_get(access(&first), DEALS).await.status,
        200,
        "access tokens live on"
    );

    // Revoking the current refresh token also kills access tokens issued before the rotation.
    let revoked = app
        .form(
            "token/revoke",
            &[
                ("client_id", &app.creds.client_id),
                ("client_secret", &app.creds.client_secret),
                ("token", refresh_token(&third.body)),
            ],
        )
        .await;
    assert_eq!((revoked.status, revoked.body.clone()), (200, json!({})));
    for t in [&first, &second.body, &third.body] {
        let a = app.api_get(access(t), DEALS).await;
        common::assert_error(&a, 401, "INVALID_AUTHENTICATION");
    }
    sb.shutdown().await;
}

#[tokio::test]
async fn uninstalling_stops_every_token_of_that_portal_only() {
    let sb = sandbox(Duration::from_secs(1800), false).await;
    let app = App::of(&sb);
    let a_token = app.install("partner-a").await;
    let b_token = app.install("partner-b").await;

    let r = app
        .control(
            reqwest::Method::POST,
            "/portals/partner-a/oauth/revoke",
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_oauth_error(
        &app.refresh(refresh_token(&a_token)).await,
        "BAD_REFRESH_TOKEN",
    );
    common::assert_error(
        &app.api_get(access(&a_token), DEALS).await,
        401,
        "INVALID_AUTHENTICATION",
    );
    assert_eq!(app.api_get(access(&b_token), DEALS).await.status, 200);
    assert_eq!(app.refresh(refresh_token(&b_token)).await.status, 200);

    let summary = app.control(reqwest::Method::GET, "/oauth", None).await;
    let installs = summary.body["installs"]
        .as_array()
        .expect("installs")
        .clone();
    let revoked: Vec<(Value, Value)> = installs
        .iter()
        .map(|i| (i["portal"].clone(), i["revoked"].clone()))
        .collect();
    assert_eq!(
        revoked,
        vec![
            (json!("partner-a"), json!(true)),
            (json!("partner-b"), json!(false))
        ]
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn token_faults_answer_an_outage_then_garbage_then_recover() {
    let sb = sandbox(Duration::from_secs(1800), false).await;
    let app = App::of(&sb);
    let token = app.install("partner-a").await;
    let set = app
        .control(
            reqwest::Method::PUT,
            "/oauth/faults",
            Some(json!({ "status": 503, "count": 1, "garbage": 1 })),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text);

    let outage = app.refresh(refresh_token(&token)).await;
    assert_eq!(outage.status, 503);
    assert!(outage.text.contains("<html>"), "{}", outage.text);
    let garbage = app.refresh(refresh_token(&token)).await;
    assert_eq!(garbage.status, 200);
    assert!(
        serde_json::from_str::<Value>(&garbage.text).is_err(),
        "{}",
        garbage.text
    );
    let ok = app.refresh(refresh_token(&token)).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert!(ok.body["access_token"].is_string());

    app.control(
        reqwest::Method::PUT,
        "/oauth/faults",
        Some(json!({ "status": 502, "count": 5 })),
    )
    .await;
    assert_eq!(
        app.control(reqwest::Method::DELETE, "/oauth/faults", None)
            .await
            .status,
        204
    );
    assert_eq!(
        app.refresh(refresh_token(&token)).await.status,
        200,
        "faults cleared"
    );
    let summary = app.control(reqwest::Method::GET, "/oauth", None).await;
    assert_eq!(
        (
            summary.body["faulted"].clone(),
            summary.body["refreshes"].clone()
        ),
        (json!(2), json!(2))
    );
    sb.shutdown().await;
}
