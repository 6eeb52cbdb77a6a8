use std::collections::HashMap;
use std::time::Duration;

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

fn env() -> HashMap<String, String> {
    [("HS", "x"), ("PT", "y")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn try_it<R: std::fmt::Debug>(what: &str, f: impl FnOnce() -> R + std::panic::UnwindSafe) {
    match std::panic::catch_unwind(f) {
        Ok(r) => println!("{what}: OK {:?}", r),
        Err(p) => println!(
            "{what}: PANIC {:?}",
            p.downcast_ref::<String>()
                .cloned()
                .or(p.downcast_ref::<&str>().map(|s| s.to_string()))
        ),
    }
}

#[test]
fn explore() {
    try_it("verify min", || {
        dealsync::signature::verify_v3(
            "s",
            "POST",
            "u",
            b"",
            Some("-9223372036854775808"),
            Some("x"),
            1_700_000_000_000,
        )
    });
    try_it("verify max", || {
        dealsync::signature::verify_v3(
            "s",
            "POST",
            "u",
            b"",
            Some("9223372036854775807"),
            Some("x"),
            1_700_000_000_000,
        )
    });
    try_it("verify now+min", || {
        dealsync::signature::verify_v3(
            "s",
            "POST",
            "u",
            b"",
            Some(&(1_700_000_000_000i64 + i64::MIN).to_string()),
            Some("x"),
            1_700_000_000_000,
        )
    });
    let cases: Vec<(String, HashMap<String,String>)> = vec![
        (format!("\"a[9223372036854775806]\" = 1\n{MINIMAL}"), env()),
        (MINIMAL.to_string(), { let mut e = env(); e.insert("DEALSYNC__A[9223372036854775806]".into(), "1".into()); e }),
        (MINIMAL.to_string(), { let mut e = env(); e.insert("DEALSYNC__PARTNERS[3]__NAME".into(), "1".into()); e }),
        (MINIMAL.to_string(), { let mut e = env(); e.insert("DEALSYNC__PARTNERS[0]__NAME".into(), "Bad".into()); e }),
        (MINIMAL.to_string(), { let mut e = env(); e.insert("DEALSYNC__SYNC__POLL_INTERVAL_MS".into(), "abc".into()); e }),
        (MINIMAL.to_string(), { let mut e = env(); e.insert("DEALSYNC__SYNC__POLL_INTERVAL_MS".into(), "true".into()); e }),
        (MINIMAL.to_string(), { let mut e = env(); e.insert("DEALSYNC__SYNC__POLL_INTERVAL_MS".into(), "1e400".into()); e }),
        (MINIMAL.to_string(), { let mut e = env(); e.insert("DEALSYNC__SYNC__POLL_INTERVAL_MS".into(), "-1".into()); e }),
        (MINIMAL.to_string(), { let mut e = env(); e.insert("DEALSYNC__SYNC__POLL_INTERVAL_MS".into(), "NaN".into()); e }),
        (MINIMAL.to_string(), { let mut e = env(); e.insert("DEALSYNC__".into(), "1".into()); e }),
        (MINIMAL.to_string(), { let mut e = env(); e.insert("DEALSYNC____".into(), "1".into()); e }),
        (MINIMAL.to_string(), { let mut e = env(); e.insert("DEALSYNC__SYNC".into(), "1".into()); e }),
        (format!("{MINIMAL}\n[sync]\npoll_interval_ms = 1e400\n"), env()),
        (format!("{MINIMAL}\n[sync]\npoll_interval_ms = 18446744073709551616\n"), env()),
        (format!("{MINIMAL}\n[sync]\npoll_interval_ms = 18446744073709551615\n"), env()),
        (format!("{MINIMAL}\n[sync]\npoll_interval_ms = 9223372036854775808\n"), env()),
        (format!("{MINIMAL}\n[sync]\npoll_interval_ms = 2.7\n"), env()),
        (format!("{MINIMAL}\n[sync]\npoll_interval_ms = inf\n"), env()),
        (format!("{MINIMAL}\n[sync]\npoll_interval_ms = nan\n"), env()),
        (format!("{MINIMAL}\n[sync]\npoll_interval_ms = \"yes\"\n"), env()),
        (format!("{MINIMAL}\n[sync]\npoll_interval_ms = [1]\n"), env()),
        (format!("{MINIMAL}\n[sync]\nworkers = -1\n"), env()),
        (format!("{MINIMAL}\n[sync]\nmax_attempts = 1e400\n"), env()),
        (format!("{MINIMAL}\n[webhooks]\nlisten = \"127.0.0.1:1\"\nquiet_after_ms = 9223372036854775807\n"), env()),
        (MINIMAL.replace("a = \"b\"", "a = 5"), env()),
        (MINIMAL.replace("name = \"p\"", "name = 5"), env()),
        (MINIMAL.replace("name = \"p\"", "name = []"), env()),
        (MINIMAL.replace("token_env = \"HS\"", "token_env = \"\""), env()),
        (MINIMAL.replace("token_env = \"HS\"", "token_env = 1e400"), env()),
        (MINIMAL.replace("path = \"/tmp/x.db\"", "path = 1979-05-27T07:32:00Z"), env()),
        (MINIMAL.replace("path = \"/tmp/x.db\"", "path = \"\""), env()),
        (MINIMAL.replace("path = \"/tmp/x.db\"", "path = \"\""), env()),
        (MINIMAL.replace("[store]\n", ""), env()),
        (MINIMAL.replace("[[partners]]\n", "[[partners]]\n[[partners]]\n"), env()),
        (MINIMAL.replace("[hubspot]\n", "[hubspot]\n[hubspot]\n"), env()),
        (MINIMAL.replace("base_url = \"http://127.0.0.1:1\"\ntoken_env = \"HS\"", "base_url = \"http://127.0.0.1:1\"\nbase_url = \"http://127.0.0.1:1\"\ntoken_env = \"HS\""), env()),
        (MINIMAL.replace("[hubspot]\n", "[hubspot]\nzzz = 1\n"), env()),
        (MINIMAL.replace("[[partners]]\n", "[[partners]]\nzzz = 1\n"), env()),
        (MINIMAL.replace("[partners.stage_map]\n", "[partners.stage_map]\nzzz = 1\n"), env()),
        (format!("{MINIMAL}\n[fields.x]\npartner_property = \"a\"\nhubspot_property = \"b\"\ndirection = {{both = 1}}\n"), env()),
        (format!("{MINIMAL}\n[fields.x]\npartner_property = \"a\"\nhubspot_property = \"b\"\ndirection = {{}}\n"), env()),
        (format!("{MINIMAL}\n[fields.x]\npartner_property = \"a\"\nhubspot_property = \"b\"\ndirection = {{a = 1, b = 2}}\n"), env()),
        (format!("{MINIMAL}\n[fields.x]\npartner_property = \"a\"\nhubspot_property = \"b\"\nkind = [\"stage\"]\n"), env()),
        (format!("{MINIMAL}\n[fields.x]\npartner_property = \"a\"\nhubspot_property = \"b\"\nkind = {{stage = [1]}}\n"), env()),
        (format!("{MINIMAL}\n[fields.x]\npartner_property = \"a\"\nhubspot_property = \"b\"\nkind = 5\n"), env()),
    ];
    for (i, (t, e)) in cases.into_iter().enumerate() {
        try_it(&format!("config {i}"), move || {
            dealsync::config::Config::from_toml_str(&t, &e)
                .map(|c| (c.poll_interval, c.workers, c.max_attempts))
                .map_err(|e| e.to_string())
        });
    }
    let h = dealsync::store::WebhookHealth {
        last_webhook: Some(1_700_000_000_000),
        last_poll_change: Some(1_700_000_000_001),
    };
    try_it("healthy", || {
        dealsync::ingest::poll::webhooks_healthy(&h, Duration::from_millis(i64::MAX as u64))
    });
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dl.jsonl");
    std::fs::write(&p, b"{\"a\":1}\n\xff\xfe\n").unwrap();
    try_it("dl", || {
        dealsync::deadletter::read_all(&p)
            .map(|f| f.warnings)
            .map_err(|e| e.to_string())
    });
}

#[tokio::test]
async fn explore_crm() {
    use axum::routing::any;
    let app = axum::Router::new().route(
        "/{*rest}",
        any(|| async {
            (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "18446744073709551615")],
                "",
            )
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let c = dealsync::crm::Client::new(
        "p",
        &format!("http://{addr}"),
        "tok",
        std::sync::Arc::new(dealsync::crm::Budget::new(100, 4)),
        dealsync::crm::RetryPolicy {
            max_retries: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let r = tokio::spawn(async move { c.get("deals", "1", &[]).await }).await;
    println!("crm retry-after huge: {:?}", r.map_err(|e| e.to_string()));
}
