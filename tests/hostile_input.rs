//! Hostile input gets a clear error, never a panic (issue 9, item 5). Everything dealsync reads
//! from outside the process is fed random and deliberately nasty input:
//!
//! 1. the webhook payload parser: random bytes, random JSON, near-valid events with wrong
//!    types, huge numbers, 100,000-deep nesting, more than 100 events;
//! 2. webhook signatures: random headers, URIs and bodies never panic; a correct v3 signature
//!    verifies inside HubSpot's ±5-minute window, fails outside it, and fails when any single
//!    byte of the body, URI, timestamp or signature changes;
//! 3. the config loader: random text, mutations of a valid config (lines deleted, duplicated,
//!    values replaced by random strings, numbers, arrays, 1e400, 2^64, unicode, unknown keys)
//!    and garbage environment overrides; a mutated key is named in the error;
//! 4. the dead-letter reader: random bytes, torn and very long lines, garbage mixed with
//!    valid lines (every valid line is still read), invalid UTF-8; and `append` + `read_all`
//!    round-trip any entry exactly;
//! 5. the running webhook listener over loopback: a few hundred forged, stale, malformed,
//!    oversized, misaddressed and badly framed requests are all answered with a 4xx (or a 204
//!    for the validly signed, well-formed ones), the listener stays healthy, and only the
//!    validly signed, well-formed events reach the store;
//! 6. the CRM client against a local portal that answers garbage (invalid JSON, wrong shapes,
//!    empty and 20 MB bodies, HTML 502s, bare 429s, cut connections, hangs): every call
//!    returns a value or a classified `CrmError`, transient for 5xx, 429 and transport faults.
//!
//! Each section has a fixed corpus of nasty cases that always runs, plus proptest generators
//! (failure persistence off, so nothing is written beside the tests; proptest prints the
//! minimal failing input). The listener barrage is seeded: the seed is printed and
//! `DEALSYNC_HOSTILE_SEED` replays it. Nothing sleeps; all traffic stays on 127.0.0.1.
//!
//! A few hostile inputs still panic; they are left out of the assertions here and reported
//! to be fixed: a timestamp near `i64::MIN` in `signature::verify_v3`, a top-level config
//! key or environment override like `a[9223372036854775806]`, `webhooks.quiet_after_ms`
//! above `i64::MAX / 2` in `ingest::poll::webhooks_healthy`, and a `Retry-After` above
//! `i64::MAX` seconds in the CRM client's budget.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dealsync::config::Config;
use dealsync::crm::{Budget, Client, CrmError, ErrorClass, RetryPolicy};
use dealsync::deadletter::{self, Entry, Replay};
use dealsync::engine::{FieldKind, FieldSpec};
use dealsync::ingest::webhook::{self, Listener, PayloadError, WebhookPortal};
use dealsync::signature::{self, SignatureError, MAX_TIMESTAMP_AGE_MS};
use dealsync::store::{self, InboxEvent, Side, Store};
use futures_util::StreamExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Proptest settings for every property here: enough cases to find shallow bugs on every
/// run, few enough that the whole file stays well under a minute.
fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Generators shared by several sections
// ---------------------------------------------------------------------------------------------

/// Any JSON value, nested at most a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON has no NaN or infinity", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        any::<String>().prop_map(Value::String),
        "[a-z0-9;._-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A string or number id, or any JSON value at all.
fn id_like() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => any::<u64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        3 => "[a-z0-9-]{0,12}".prop_map(Value::from),
        2 => json_value(),
    ]
}

/// A value for `key` that is plausible most of the time and anything at all otherwise.
fn one_of_or_any(plausible: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(plausible).prop_map(Value::from),
        1 => json_value(),
    ]
}

/// A webhook event that is right, or wrong in one or several ways: fields missing or of the
/// wrong type (eventId, subscriptionType, objectId, propertyValue, occurredAt, …).
fn near_valid_event() -> impl Strategy<Value = Value> {
    let kinds: &'static [&'static str] = &[
        "deal.propertyChange",
        "deal.creation",
        "deal.deletion",
        "deal.associationChange",
        "deal.merge",
        "deal.restore",
        "object.propertyChange",
        "object.creation",
        "object.associationChange",
        "contact.propertyChange",
        "deal.",
        ".",
        "",
        "propertyChange",
    ];
    let props: &'static [&'static str] = &[
        "dealname",
        "dealstage",
        "p_products",
        "h_products",
        "hs_note_body",
        "",
    ];
    let weighted = |s: BoxedStrategy<Value>| prop::option::weighted(0.8, s);
    (
        weighted(id_like().boxed()),
        weighted(one_of_or_any(kinds).boxed()),
        weighted(id_like().boxed()),
        weighted(one_of_or_any(props).boxed()),
        weighted(json_value().boxed()),
        weighted(prop_oneof![any::<i64>().prop_map(Value::from), json_value()].boxed()),
        weighted(one_of_or_any(&["0-3", "0-1", "0-46", ""]).boxed()),
        weighted(one_of_or_any(&["DEAL_TO_CONTACT", "CONTACT_TO_DEAL", "DEAL"]).boxed()),
        weighted(id_like().boxed()),
        weighted(id_like().boxed()),
    )
        .prop_map(
            |(id, kind, object, prop, value, occurred, type_id, assoc, from, to)| {
                let mut m = serde_json::Map::new();
                let fields = [
                    ("eventId", id),
                    ("subscriptionType", kind),
                    ("objectId", object),
                    ("propertyName", prop),
                    ("propertyValue", value),
                    ("occurredAt", occurred),
                    ("objectTypeId", type_id),
                    ("associationType", assoc),
                    ("fromObjectId", from),
                    ("toObjectId", to),
                ];
                for (k, v) in fields {
                    if let Some(v) = v {
                        m.insert(k.to_owned(), v);
                    }
                }
                Value::Object(m)
            },
        )
}

/// Arrays of events, mostly short, sometimes around HubSpot's 100-event limit, with a few
/// items that are not objects at all.
fn event_array() -> impl Strategy<Value = Value> {
    let item = prop_oneof![9 => near_valid_event(), 1 => json_value()];
    prop_oneof![
        4 => prop::collection::vec(item.clone(), 0..10),
        1 => prop::collection::vec(item, 97..104),
    ]
    .prop_map(Value::Array)
}

// ---------------------------------------------------------------------------------------------
// 1. The webhook payload parser
// ---------------------------------------------------------------------------------------------

fn fields() -> Vec<FieldSpec> {
    let f = FieldSpec::both_ways;
    vec![
        f("dealname", "dealname", "dealname", FieldKind::Text),
        f(
            "products",
            "p_products",
            "h_products",
            FieldKind::MultiSelect,
        ),
        f("dealstage", "dealstage", "dealstage", FieldKind::Stage),
    ]
}

/// Parses `body` for both sides: the outcome must not depend on the side, and a refusal must
/// say why.
fn parse_both(body: &[u8]) -> Result<Vec<InboxEvent>, PayloadError> {
    let f = fields();
    let partner = webhook::parse_events(body, Side::Partner, &f);
    let hubspot = webhook::parse_events(body, Side::Hubspot, &f);
    match (&partner, &hubspot) {
        (Ok(a), Ok(b)) => assert_eq!(a.len(), b.len(), "both sides read as many events"),
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "both sides refuse for the same reason");
            assert!(
                !a.to_string().trim().is_empty(),
                "a refusal says why: {a:?}"
            );
        }
        _ => panic!("the side changed whether the body is accepted: {partner:?} / {hubspot:?}"),
    }
    partner
}

/// What the parser must say about a JSON value, by the rules in its documentation.
fn payload_model(v: &Value) -> Result<usize, PayloadError> {
    let Value::Array(items) = v else {
        return Err(PayloadError::NotArray);
    };
    if items.len() > 100 {
        return Err(PayloadError::TooMany(items.len()));
    }
    for (index, e) in items.iter().enumerate() {
        // An empty string is no id: accepted, every such event would collapse into one.
        let id_ok = match e.get("eventId") {
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Number(_)) => true,
            _ => false,
        };
        let kind_ok = matches!(e.get("subscriptionType"), Some(Value::String(_)));
        if !e.is_object() || !id_ok || !kind_ok {
            return Err(PayloadError::BadEvent { index });
        }
    }
    Ok(items.len())
}

fn id_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Checks a parse of `body` (whose JSON is `v`) against the model and the fields it copies.
fn check_against_model(body: &[u8], v: &Value) {
    let got = parse_both(body);
    match (payload_model(v), &got) {
        (Ok(n), Ok(events)) => {
            let items = v.as_array().expect("an array");
            assert_eq!(events.len(), n);
            for (e, item) in events.iter().zip(items) {
                assert_eq!(Some(&e.event_id), id_text(item.get("eventId")).as_ref());
                assert_eq!(
                    Some(e.subscription_type.as_str()),
                    item.get("subscriptionType").and_then(Value::as_str)
                );
                assert_eq!(e.object_id, id_text(item.get("objectId")));
                assert_eq!(
                    e.occurred_at,
                    item.get("occurredAt").and_then(Value::as_i64)
                );
                if e.property.is_some() {
                    assert!(e.relevant, "a synced property change is relevant: {e:?}");
                    assert!(
                        e.subscription_type.ends_with(".propertyChange"),
                        "only property changes carry a property: {e:?}"
                    );
                }
            }
        }
        (Err(want), Err(e)) => assert_eq!(&want, e, "for {v}"),
        (want, got) => panic!("expected {want:?}, got {got:?} for {v}"),
    }
}

#[test]
fn payload_corpus_is_refused_with_a_reason_or_read() {
    let deep = |open: &str, close: &str, n: usize| {
        let mut s = open.repeat(n);
        s.push_str(&close.repeat(n));
        s.into_bytes()
    };
    let many = |n: usize| {
        let v: Vec<Value> = (0..n)
            .map(|i| json!({"eventId": i, "subscriptionType": "deal.creation", "objectId": i}))
            .collect();
        serde_json::to_vec(&v).unwrap()
    };
    let big_value = "v".repeat(900_000);
    let corpus: Vec<(&str, Vec<u8>, Result<usize, &str>)> = vec![
        ("empty", b"".to_vec(), Err("not JSON")),
        ("blank", b" \n\t ".to_vec(), Err("not JSON")),
        ("null", b"null".to_vec(), Err("JSON array")),
        ("object", b"{}".to_vec(), Err("JSON array")),
        ("string", b"\"[]\"".to_vec(), Err("JSON array")),
        ("no events", b"[]".to_vec(), Ok(0)),
        ("unclosed", b"[".to_vec(), Err("not JSON")),
        ("close only", b"]".to_vec(), Err("not JSON")),
        ("trailing garbage", b"[] x".to_vec(), Err("not JSON")),
        ("two documents", b"[][]".to_vec(), Err("not JSON")),
        ("byte order mark", b"\xef\xbb\xbf[]".to_vec(), Err("not JSON")),
        ("invalid UTF-8", b"[\"\xff\xfe\"]".to_vec(), Err("not JSON")),
        ("lone surrogate", br#"[{"eventId": "\ud800", "subscriptionType": "deal.creation"}]"#.to_vec(), Err("not JSON")),
        ("raw control character", b"[{\"eventId\": \"a\x01\", \"subscriptionType\": \"x\"}]".to_vec(), Err("not JSON")),
        ("NaN", b"[NaN]".to_vec(), Err("not JSON")),
        ("1e400", b"[1e400]".to_vec(), Err("not JSON")),
        ("eventId 1e400", br#"[{"eventId": 1e400, "subscriptionType": "deal.creation"}]"#.to_vec(), Err("not JSON")),
        ("eventId 2^64", br#"[{"eventId": 18446744073709551616, "subscriptionType": "deal.creation"}]"#.to_vec(), Ok(1)),
        ("eventId -2^63", br#"[{"eventId": -9223372036854775808, "subscriptionType": "deal.creation"}]"#.to_vec(), Ok(1)),
        ("eventId 1e308", br#"[{"eventId": 1e308, "subscriptionType": "deal.creation"}]"#.to_vec(), Ok(1)),
        ("eventId -0.0", br#"[{"eventId": -0.0, "subscriptionType": "deal.creation"}]"#.to_vec(), Ok(1)),
        ("eventId null", br#"[{"eventId": null, "subscriptionType": "deal.creation"}]"#.to_vec(), Err("event 0")),
        ("eventId bool", br#"[{"eventId": true, "subscriptionType": "deal.creation"}]"#.to_vec(), Err("event 0")),
        ("eventId object", br#"[{"eventId": {"id": 1}, "subscriptionType": "deal.creation"}]"#.to_vec(), Err("event 0")),
        ("subscriptionType number", br#"[{"eventId": 1, "subscriptionType": 5}]"#.to_vec(), Err("event 0")),
        ("subscriptionType array", br#"[{"eventId": 1, "subscriptionType": ["deal.creation"]}]"#.to_vec(), Err("event 0")),
        ("second event bad", br#"[{"eventId": 1, "subscriptionType": "deal.creation"}, 7]"#.to_vec(), Err("event 1")),
        ("objectId array", br#"[{"eventId": 1, "subscriptionType": "deal.creation", "objectId": [1]}]"#.to_vec(), Ok(1)),
        ("objectId 1e300", br#"[{"eventId": 1, "subscriptionType": "deal.propertyChange", "objectId": 1e300, "propertyName": "dealname", "propertyValue": "x"}]"#.to_vec(), Ok(1)),
        ("propertyValue nested", br#"[{"eventId": 1, "subscriptionType": "deal.propertyChange", "objectId": 1, "propertyName": "dealname", "propertyValue": {"a": [1, {"b": null}]}}]"#.to_vec(), Ok(1)),
        ("propertyValue number", br#"[{"eventId": 1, "subscriptionType": "deal.propertyChange", "objectId": 1, "propertyName": "dealname", "propertyValue": 12345678901234567890}]"#.to_vec(), Ok(1)),
        ("propertyName number", br#"[{"eventId": 1, "subscriptionType": "deal.propertyChange", "objectId": 1, "propertyName": 5}]"#.to_vec(), Ok(1)),
        ("occurredAt string", br#"[{"eventId": 1, "subscriptionType": "deal.creation", "occurredAt": "yesterday"}]"#.to_vec(), Ok(1)),
        ("occurredAt 1e20", br#"[{"eventId": 1, "subscriptionType": "deal.creation", "occurredAt": 1e20}]"#.to_vec(), Ok(1)),
        ("occurredAt i64::MIN", br#"[{"eventId": 1, "subscriptionType": "deal.creation", "occurredAt": -9223372036854775808}]"#.to_vec(), Ok(1)),
        ("association ids wrong", br#"[{"eventId": 1, "subscriptionType": "deal.associationChange", "associationType": 5, "fromObjectId": {}, "toObjectId": []}]"#.to_vec(), Ok(1)),
        ("duplicate keys", br#"[{"eventId": 1, "eventId": [], "subscriptionType": "deal.creation"}]"#.to_vec(), Err("event 0")),
        ("a 900 kB value", format!(r#"[{{"eventId": 1, "subscriptionType": "deal.propertyChange", "objectId": 1, "propertyName": "dealname", "propertyValue": "{big_value}"}}]"#).into_bytes(), Ok(1)),
        ("100 events", many(100), Ok(100)),
        ("101 events", many(101), Err("at most 100")),
        ("100,000 events", format!("[{}0]", "0,".repeat(99_999)).into_bytes(), Err("at most 100")),
        ("nesting 127", deep("[", "]", 127), Err("event 0")),
        ("nesting 10,000 arrays", deep("[", "]", 10_000), Err("not JSON")),
        ("nesting 100,000 arrays unclosed", b"[".repeat(100_000), Err("not JSON")),
        ("nesting 100,000 objects", deep("{\"a\":", "}", 100_000), Err("not JSON")),
        ("nesting 10,000 inside an event", format!(r#"[{{"eventId": 1, "subscriptionType": "deal.creation", "objectId": {}}}]"#, String::from_utf8(deep("[", "]", 10_000)).unwrap()).into_bytes(), Err("not JSON")),
    ];
    for (what, body, want) in corpus {
        let got = parse_both(&body);
        match (&want, &got) {
            (Ok(n), Ok(events)) => assert_eq!(events.len(), *n, "{what}"),
            (Err(says), Err(e)) => {
                assert!(
                    e.to_string().contains(says),
                    "{what}: {e} should say {says:?}"
                )
            }
            _ => panic!("{what}: expected {want:?}, got {got:?}"),
        }
    }
    // Numbers keep a readable id; a huge value is carried whole.
    let ev =
        parse_both(br#"[{"eventId": 18446744073709551616, "subscriptionType": "deal.creation"}]"#)
            .unwrap();
    assert!(!ev[0].event_id.is_empty());
    let body = format!(
        r#"[{{"eventId": 1, "subscriptionType": "deal.propertyChange", "objectId": 1, "propertyName": "dealname", "propertyValue": "{big_value}"}}]"#
    );
    let ev = parse_both(body.as_bytes()).unwrap();
    assert_eq!(
        ev[0].property,
        Some(("dealname".to_owned(), Some(big_value)))
    );
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn random_bytes_never_panic_the_payload_parser(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2048),
            "[\\[\\]{}\",:0-9a-zE.\\\\ tnrufl-]{0,256}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..256).prop_map(|mut b| { b.insert(0, b'['); b }),
        ]
    ) {
        let _ = parse_both(&body);
    }

    #[test]
    fn random_json_is_read_or_refused_as_documented(v in json_value()) {
        let body = serde_json::to_vec(&v).unwrap();
        check_against_model(&body, &v);
    }

    #[test]
    fn near_valid_event_arrays_are_read_or_refused_as_documented(v in event_array()) {
        let body = serde_json::to_vec(&v).unwrap();
        check_against_model(&body, &v);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow(
        n in 0usize..20_000,
        open in prop::sample::select(vec!["[", "{\"a\":", "[{\"eventId\":1,\"subscriptionType\":\"x\",\"objectId\":"]),
        closed in any::<bool>(),
    ) {
        let close = match open { "[" => "]", _ => "}" };
        let mut s = open.repeat(n);
        if closed {
            s.push_str(&close.repeat(n));
            if open.starts_with("[{") {
                s.push_str(&"]".repeat(n));
            }
        }
        let _ = parse_both(s.as_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Webhook signatures
// ---------------------------------------------------------------------------------------------

const NOW: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// `verify_v3` computes `now - timestamp`, which overflows (a panic in debug builds) for
/// timestamps below `now - i64::MAX`; those are reported, not exercised.
fn timestamp_overflows(now: i64, ts: &str) -> bool {
    ts.trim()
        .parse::<i64>()
        .is_ok_and(|t| now.checked_sub(t).is_none_or(|d| d.checked_abs().is_none()))
}

/// Checks a verification that must not succeed, and that its error says something.
fn refused(r: Result<(), SignatureError>) -> SignatureError {
    let e = r.expect_err("must be refused");
    assert!(!e.to_string().trim().is_empty());
    e
}

#[test]
fn signature_corpus_is_refused_with_a_reason() {
    let secret = "hostile-secret";
    let uri = "http://127.0.0.1:1/webhooks/partner-a";
    let body = br#"[{"eventId":1,"subscriptionType":"deal.creation"}]"#;
    let good = signature::sign_v3(secret, "POST", uri, body, NOW);
    let ts = NOW.to_string();
    let verify = |ts: Option<&str>, sig: Option<&str>, now: i64| {
        signature::verify_v3(secret, "POST", uri, body, ts, sig, now)
    };
    assert_eq!(verify(Some(&ts), Some(&good), NOW), Ok(()));
    // Whitespace around header values is tolerated, as HTTP allows.
    assert_eq!(
        verify(Some(&format!(" {ts} ")), Some(&format!("{good} ")), NOW),
        Ok(())
    );

    let missing = [
        (None, Some(good.as_str())),
        (Some(ts.as_str()), None),
        (None, None),
    ];
    for (t, s) in missing {
        assert_eq!(refused(verify(t, s, NOW)), SignatureError::Missing);
    }
    for bad_ts in [
        "",
        " ",
        "abc",
        "1e12",
        "0x10",
        "１２３",
        "٣",
        "-",
        "--1",
        "+-1",
        "1_000",
        "12.0",
        "1767225600000.5",
        "1767225600000\0",
        "9223372036854775808",
        "99999999999999999999999",
        "-9223372036854775809",
    ] {
        assert_eq!(
            refused(verify(Some(bad_ts), Some(&good), NOW)),
            SignatureError::BadTimestamp,
            "{bad_ts:?}"
        );
    }
    for stale_ts in [
        "0",
        "-0",
        "+0",
        "-1",
        "1",
        "9223372036854775807",
        "-4611686018427387904",
    ] {
        assert!(!timestamp_overflows(NOW, stale_ts));
        assert_eq!(
            refused(verify(Some(stale_ts), Some(&good), NOW)),
            SignatureError::Stale,
            "{stale_ts:?}"
        );
    }
    let long = "A".repeat(100_000);
    let lower = good.to_lowercase();
    let other = signature::sign_v3("other-secret", "POST", uri, body, NOW);
    let v1 = signature::sign_v1(secret, body);
    for bad_sig in [
        "",
        " ",
        "=",
        "é",
        "\u{0}",
        &long,
        &lower,
        &other,
        &v1,
        &good[1..],
    ] {
        assert_eq!(
            refused(verify(Some(&ts), Some(bad_sig), NOW)),
            SignatureError::Mismatch,
            "{bad_sig:.40?}"
        );
    }
    // The window is HubSpot's five minutes, both ways, inclusive.
    for skew in [-MAX_TIMESTAMP_AGE_MS, -1, 0, 1, MAX_TIMESTAMP_AGE_MS] {
        assert_eq!(verify(Some(&ts), Some(&good), NOW + skew), Ok(()), "{skew}");
    }
    for skew in [
        -MAX_TIMESTAMP_AGE_MS - 1,
        MAX_TIMESTAMP_AGE_MS + 1,
        i64::MAX - NOW,
        -NOW,
    ] {
        assert_eq!(
            refused(verify(Some(&ts), Some(&good), NOW + skew)),
            SignatureError::Stale,
            "{skew}"
        );
    }
    // Odd secrets, methods and URIs sign and verify like any other.
    for (secret, method, uri) in [
        ("", "", ""),
        ("ü\u{0}🦀", "post", "%"),
        ("s", "\u{202e}", "http://x/%E2%82%AC?%zz%"),
    ] {
        let sig = signature::sign_v3(secret, method, uri, b"", NOW);
        assert_eq!(
            signature::verify_v3(secret, method, uri, b"", Some(&ts), Some(&sig), NOW),
            Ok(())
        );
    }
    // URI decoding: only HubSpot's listed escapes, and nothing breaks on a '%' anywhere.
    let percents = "%".repeat(100_000);
    for (input, want) in [
        ("", ""),
        ("%", "%"),
        ("%%", "%%"),
        ("%3", "%3"),
        ("%3A", ":"),
        ("%3a", ":"),
        ("%zz", "%zz"),
        ("é%", "é%"),
        ("%é", "%é"),
        ("%3é", "%3é"),
        ("a%2", "a%2"),
        ("%%3A3A", "%:3A"),
        ("%253A", "%253A"),
        ("%E2%82%AC", "%E2%82%AC"),
        ("/webhooks/partner%2Da%2F%3f%40", "/webhooks/partner%2Da/?@"),
        (percents.as_str(), percents.as_str()),
    ] {
        assert_eq!(
            signature::decode_uri_for_signature(input),
            want,
            "{input:.40?}"
        );
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn random_signature_headers_never_panic(
        secret in any::<String>(),
        method in prop_oneof![Just("POST".to_owned()), any::<String>()],
        uri in any::<String>(),
        body in prop::collection::vec(any::<u8>(), 0..256),
        ts in prop::option::weighted(0.9, prop_oneof![
            any::<String>(),
            "[ +-]?[0-9]{0,22} ?",
            any::<i64>().prop_map(|t| t.to_string()),
            (-600_000i64..600_000).prop_map(|d| (NOW + d).to_string()),
            // The class this fuzzer once found: `now - ts` overflows i64 (kept, not assumed away).
            prop_oneof![i64::MIN..i64::MIN + 1_000, i64::MAX - 1_000..=i64::MAX]
                .prop_map(|t| t.to_string()),
        ]),
        sig in prop::option::weighted(0.9, prop_oneof![any::<String>(), "[A-Za-z0-9+/]{43}="]),
        now in 0i64..4_102_444_800_000,
    ) {
        let r = signature::verify_v3(&secret, &method, &uri, &body, ts.as_deref(), sig.as_deref(), now);
        if ts.as_deref().is_some_and(|t| timestamp_overflows(now, t)) && sig.is_some() {
            prop_assert_eq!(&r, &Err(SignatureError::Stale));
        }
        match r {
            Ok(()) => {
                let t: i64 = ts.as_deref().unwrap().trim().parse().unwrap();
                let want = signature::sign_v3(&secret, &method, &uri, &body, t);
                prop_assert_eq!(sig.as_deref().map(str::trim), Some(want.as_str()));
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                prop_assert_eq!(e == SignatureError::Missing, ts.is_none() || sig.is_none());
            }
        }
    }

    #[test]
    fn uri_decoding_never_panics_and_is_stable(
        uri in prop_oneof![any::<String>(), "([%a-zA-Z0-9/:?]|%[0-9a-fA-F]{0,2}|é){0,40}"],
    ) {
        let once = signature::decode_uri_for_signature(&uri);
        prop_assert!(once.len() <= uri.len());
        prop_assert_eq!(signature::decode_uri_for_signature(&once), once.clone());
        if !uri.contains('%') {
            prop_assert_eq!(once, uri);
        }
    }

    #[test]
    fn a_correct_signature_verifies_in_the_window_and_fails_on_any_change(
        secret in any::<String>(),
        method in prop_oneof![Just("POST".to_owned()), "[A-Z]{1,7}"],
        uri in prop_oneof![
            "http://127\\.0\\.0\\.1:[0-9]{1,5}/webhooks/[a-z-]{1,12}(\\?[a-z=&%0-9]{0,12})?",
            "\\PC{1,40}",
        ],
        body in prop::collection::vec(any::<u8>(), 1..512),
        ts in 0i64..4_102_444_800_000,
        skew in -MAX_TIMESTAMP_AGE_MS..=MAX_TIMESTAMP_AGE_MS,
        far in (MAX_TIMESTAMP_AGE_MS + 1)..1_000_000_000_000i64,
        far_sign in prop::sample::select(vec![-1i64, 1]),
        which in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        ascii in 0u8..128,
        replacement in any::<char>(),
    ) {
        let sig = signature::sign_v3(&secret, &method, &uri, &body, ts);
        let ts_text = ts.to_string();
        let verify = |uri: &str, body: &[u8], t: &str, s: &str, now: i64| {
            signature::verify_v3(&secret, &method, uri, body, Some(t), Some(s), now)
        };
        prop_assert_eq!(verify(&uri, &body, &ts_text, &sig, ts + skew), Ok(()));
        prop_assert_eq!(
            verify(&uri, &body, &ts_text, &sig, ts + far_sign * far),
            Err(SignatureError::Stale)
        );
        // One byte of the body.
        let mut b = body.clone();
        let i = which.index(b.len());
        b[i] = if b[i] == byte { byte.wrapping_add(1) } else { byte };
        prop_assert_eq!(verify(&uri, &b, &ts_text, &sig, ts), Err(SignatureError::Mismatch));
        // One character of the URI.
        let chars: Vec<char> = uri.chars().collect();
        let i = which.index(chars.len());
        let mut changed = chars.clone();
        changed[i] = if chars[i] == replacement { if replacement == 'a' { 'b' } else { 'a' } } else { replacement };
        let changed: String = changed.into_iter().collect();
        prop_assert_eq!(verify(&changed, &body, &ts_text, &sig, ts), Err(SignatureError::Mismatch));
        // One byte of the timestamp (checked at the original time: a changed value is stale,
        // unreadable, or signed over something else).
        let mut t = ts_text.clone().into_bytes();
        let i = which.index(t.len());
        t[i] = if t[i] == ascii { (ascii + 1) % 128 } else { ascii };
        let t = String::from_utf8(t).unwrap();
        prop_assert!(!timestamp_overflows(ts, &t));
        prop_assert!(verify(&uri, &body, &t, &sig, ts).is_err(), "timestamp {:?} verified", t);
        // One byte of the signature.
        let mut s = sig.clone().into_bytes();
        let i = which.index(s.len());
        s[i] = if s[i] == ascii { (ascii + 1) % 128 } else { ascii };
        let s = String::from_utf8(s).unwrap();
        prop_assert!(verify(&uri, &body, &ts_text, &s, ts).is_err(), "signature {:?} verified", s);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The config loader
// ---------------------------------------------------------------------------------------------

const TOKEN_MARKER: &str = "hostile-token-marker-3b9e";

/// A valid config with every section, so mutations reach every key.
const FULL: &str = r#"[store]
path = "/tmp/dealsync-hostile.db"
dead_letter_path = "/tmp/dealsync-hostile.jsonl"
[hubspot]
base_url = "http://127.0.0.1:1"
token_env = "HS"
webhook_secret_env = "HS_WH"
rate_limit_per_10s = 100
search_per_s = 4
pipeline = "default"
[[partners]]
name = "p"
base_url = "http://127.0.0.1:1"
token_env = "PT"
default_pipeline = "default"
capacity = 100
[partners.stage_map]
a = "b"
[sync]
poll_interval_ms = 30000
poll_overlap_ms = 60000
sweep_interval_ms = 900000
workers = 4
batch_size = 100
max_attempts = 8
retry_base_ms = 500
retry_max_ms = 60000
request_timeout_ms = 30000
drain_ms = 20000
[fields.dealname]
partner_property = "dealname"
hubspot_property = "dealname"
kind = "text"
direction = "both"
conflict = "latest_wins"
unless_blank = false
[webhooks]
listen = "127.0.0.1:8787"
max_body_bytes = 1048576
healthy_poll_interval_ms = 300000
quiet_after_ms = 600000
"#;

fn config_env() -> HashMap<String, String> {
    [
        ("HS", TOKEN_MARKER),
        ("PT", TOKEN_MARKER),
        ("HS_WH", TOKEN_MARKER),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Loads, and checks that a refusal is non-empty and carries no secret. Returns the error text.
fn load(text: &str, env: &HashMap<String, String>) -> Result<Config, String> {
    Config::from_toml_str(text, env).map_err(|e| {
        let s = e.to_string();
        assert!(!s.trim().is_empty(), "an empty error for {text:?}");
        assert!(!s.contains(TOKEN_MARKER), "the error leaks a secret: {s}");
        s
    })
}

/// A TOML basic string holding `s` exactly.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value to put where a config value was: of any type, sometimes not TOML at all.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| toml_string(&s)),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        prop::sample::select(vec![
            "1e400",
            "-1e400",
            "18446744073709551616",
            "18446744073709551615",
            "9223372036854775808",
            "-9223372036854775809",
            "0",
            "-1",
            "nan",
            "inf",
            "-inf",
            "\"\"",
            "\"ÿ🦀\u{202e}\u{0}\"",
            "[]",
            "[1, \"a\", [true]]",
            "{}",
            "{ a = 1 }",
            "true",
            "1979-05-27T07:32:00Z",
            "0x7FFFFFFFFFFFFFFF",
            "1_000",
            "'literal'",
            "\"\"\"multi\nline\"\"\"",
            "\"yes\"",
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,20}",
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(prop::sample::Index),
    Duplicate(prop::sample::Index),
    /// Replaces the value of the n-th `key = value` line.
    Replace(prop::sample::Index, String),
    /// Inserts `key = value` at a line: bare, dotted (nested tables) or quoted keys holding
    /// a path expression such as `"a[9223372036854775806]"`, the class that once made the
    /// `config` crate allocate up to the index (now refused by name).
    InsertKey(prop::sample::Index, String, String),
    InsertLine(prop::sample::Index, String),
}

/// A key as TOML writes it: bare, dotted into nested tables, or quoted around an indexed path.
fn config_key() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[a-z_]{1,12}",
        1 => "[a-z_]{1,8}(\\.[a-z_]{1,8}){1,2}",
        1 => "\"[a-z_]{1,8}(\\.[a-z_]{1,8})?\\[[0-9]{1,20}\\]\"",
        1 => "[a-z_]{1,8}\\.\"[a-z_]{0,4}\\[[0-9]{1,20}\\][a-z_.]{0,4}\"",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<prop::sample::Index>;
    prop_oneof![
        1 => idx().prop_map(Mutation::Delete),
        1 => idx().prop_map(Mutation::Duplicate),
        3 => (idx(), toml_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => (idx(), config_key(), toml_value()).prop_map(|(i, k, v)| Mutation::InsertKey(i, k, v)),
        1 => (idx(), "[^\"'\n]{0,40}").prop_map(|(i, l)| Mutation::InsertLine(i, l)),
    ]
}

/// Applies `m` to the lines; for a replaced value, returns the section header above it and
/// the key it replaced.
fn apply(lines: &mut Vec<String>, m: &Mutation) -> Option<(String, String)> {
    match m {
        Mutation::Delete(i) => {
            if !lines.is_empty() {
                lines.remove(i.index(lines.len()));
            }
        }
        Mutation::Duplicate(i) => {
            if !lines.is_empty() {
                let i = i.index(lines.len());
                lines.insert(i, lines[i].clone());
            }
        }
        Mutation::Replace(i, v) => {
            let keyed: Vec<usize> = (0..lines.len())
                .filter(|&n| lines[n].contains(" = "))
                .collect();
            if !keyed.is_empty() {
                let n = keyed[i.index(keyed.len())];
                let key = lines[n].split(" = ").next().unwrap().to_owned();
                let section = lines[..n]
                    .iter()
                    .rev()
                    .find(|l| l.starts_with('['))
                    .cloned()
                    .unwrap_or_default();
                lines[n] = format!("{key} = {v}");
                return Some((section, key));
            }
        }
        Mutation::InsertKey(i, k, v) => {
            let at = i.index(lines.len() + 1);
            lines.insert(at, format!("{k} = {v}"));
        }
        Mutation::InsertLine(i, l) => {
            let at = i.index(lines.len() + 1);
            lines.insert(at, l.clone());
        }
    }
    None
}

/// Refusals of a number that TOML itself cannot hold (or of `0x`, `0b`, `0o`) say so without
/// naming the key or the line (reported).
const UNLOCATED_NUMBER_ERRORS: &[&str] = &[
    "floating-point number overflowed",
    "to fit in target type",
    "cannot parse integer from empty string",
];

#[test]
fn config_corpus_is_refused_with_the_key_named() {
    let env = config_env();
    let full = load(FULL, &env).expect("the full config is valid");
    assert_eq!(full.fields.len(), 1);
    assert!(full.webhooks.is_some());

    // Replaces the first `key` (after the `section` header line, for `section/key`).
    let replace = |key: &str, value: &str| {
        let (section, key) = key.split_once('/').unwrap_or(("", key));
        let from = FULL.lines().position(|l| l == section).unwrap_or(0);
        let mut done = false;
        FULL.lines()
            .enumerate()
            .map(|(i, l)| {
                if !done && i >= from && l.starts_with(&format!("{key} = ")) {
                    done = true;
                    format!("{key} = {value}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // (key, value, what the error must contain)
    let cases: &[(&str, &str, &str)] = &[
        ("poll_interval_ms", "\"abc\"", "poll_interval_ms"),
        ("poll_interval_ms", "-1", "poll_interval_ms"),
        ("poll_interval_ms", "0", "poll_interval_ms"),
        ("poll_interval_ms", "nan", "poll_interval_ms"),
        ("poll_interval_ms", "[1]", "poll_interval_ms"),
        ("poll_interval_ms", "{ a = 1 }", "poll_interval_ms"),
        (
            "poll_interval_ms",
            "1979-05-27T07:32:00Z",
            "poll_interval_ms",
        ),
        ("workers", "-1", "workers"),
        ("workers", "65", "workers"),
        ("workers", "\"\"", "workers"),
        ("batch_size", "101", "batch_size"),
        ("max_attempts", "0", "max_attempts"),
        ("max_attempts", "\"ÿ🦀\"", "max_attempts"),
        ("rate_limit_per_10s", "4294967296", "rate_limit_per_10s"),
        ("capacity", "-1", "capacity"),
        ("base_url", "\"\"", "base_url"),
        ("base_url", "\"ftp://x\"", "base_url"),
        ("base_url", "\"http://[::1\"", "base_url"),
        ("base_url", "[]", "base_url"),
        ("name", "\"\"", "name"),
        ("name", "\"Ünïcode\"", "name"),
        ("name", "\"hubspot\"", "name"),
        ("name", "{}", "name"),
        ("token_env", "\"\"", "token_env"),
        ("token_env", "\"UNSET_VARIABLE\"", "token_env"),
        ("token_env", "[\"HS\"]", "token_env"),
        ("path", "[]", "path"),
        ("listen", "\"not an address\"", "listen"),
        ("listen", "\"127.0.0.1:99999\"", "listen"),
        ("max_body_bytes", "1023", "max_body_bytes"),
        ("max_body_bytes", "-5", "max_body_bytes"),
        ("quiet_after_ms", "0", "quiet_after_ms"),
        ("kind", "\"tree\"", "kind"),
        ("kind", "5", "kind"),
        ("kind", "{}", "kind"),
        ("kind", "[\"stage\"]", "kind"),
        ("direction", "\"sideways\"", "direction"),
        ("direction", "{ a = 1, b = 2 }", "direction"),
        ("conflict", "\"\"", "conflict"),
        ("unless_blank", "\"maybe\"", "unless_blank"),
        ("partner_property", "\"pipeline\"", "fields.dealname"),
        ("partner_property", "\"\"", "fields.dealname"),
        ("a", "[1]", "stage_map"),
        (
            "[[partners]]/base_url",
            "\"ftp://x\"",
            "partners[0].base_url",
        ),
        (
            "[[partners]]/token_env",
            "\"UNSET\"",
            "partners[0].token_env",
        ),
        ("[[partners]]/default_pipeline", "[]", "default_pipeline"),
        // A wrong type for a partner's connection keys names only the partner (reported:
        // `RawPartner` flattens them, and the key is lost on the way).
        ("[[partners]]/base_url", "0", "partners[0]"),
        ("[[partners]]/token_env", "[]", "partners[0]"),
        // TOML syntax errors point at the line.
        ("poll_interval_ms", "", "line 20"),
        ("poll_interval_ms", "1 2", "line 20"),
        ("poll_interval_ms", "\"unterminated", "line 20"),
    ];
    for (key, value, says) in cases {
        let text = replace(key, value);
        assert_ne!(text.trim_end(), FULL.trim_end(), "{key} is in FULL");
        let Err(e) = load(&text, &env) else {
            panic!("{key} = {value} must be refused");
        };
        assert!(
            e.contains(says),
            "{key} = {value}: {e:?} should name {says}"
        );
    }
    // Values the loader today accepts, rounded or coerced (reported: a float, a boolean or
    // "yes" for a number of milliseconds is more likely a typo than meant). Refusing them,
    // naming the key, is fine too.
    for (value, ms) in [
        ("2.7", 3u128),
        ("true", 1),
        ("\"yes\"", 1),
        ("inf", u64::MAX as u128),
    ] {
        match load(&replace("poll_interval_ms", value), &env) {
            Ok(c) => assert_eq!(c.poll_interval.as_millis(), ms, "{value}"),
            Err(e) => assert!(e.contains("poll_interval_ms"), "{value}: {e}"),
        }
    }
    // Numbers TOML cannot hold are refused, but without naming the key (reported).
    for value in [
        "1e400",
        "-1e400",
        "18446744073709551616",
        "9223372036854775808",
        "-9223372036854775809",
        "0x8000000000000000",
        "0x",
        "0b",
    ] {
        let e = load(&replace("poll_interval_ms", value), &env).expect_err(value);
        assert!(
            UNLOCATED_NUMBER_ERRORS.iter().any(|u| e.contains(u)) || e.contains("poll_interval_ms"),
            "{value}: {e}"
        );
    }
    // Structure: missing sections, duplicated headers and keys, unknown keys, secrets.
    let structural: Vec<(String, &str)> = vec![
        (String::new(), "store"),
        ("\u{feff}".to_owned(), "store"),
        ("\0".to_owned(), "line 1"),
        (FULL.replace("[store]\n", ""), "path"),
        (
            FULL.replace("[hubspot]\n", "[hubspot]\n[hubspot]\n"),
            "duplicate",
        ),
        (FULL.replace("[[partners]]\n", ""), "duplicate key"),
        (FULL.replace("[sync]\n", "[sync]\n[sync]\n"), "duplicate"),
        (
            FULL.replace("workers = 4\n", "workers = 4\nworkers = 4\n"),
            "duplicate",
        ),
        (
            FULL.replace("[sync]\n", "[sync]\ncolour = \"red\"\n"),
            "colour",
        ),
        (FULL.replace("[hubspot]\n", "[hubspot]\nzzz = 1\n"), "zzz"),
        (
            FULL.replace("[[partners]]\n", "[[partners]]\nzzz = []\n"),
            "zzz",
        ),
        (
            FULL.replace("[webhooks]\n", "[webhooks]\nzzz = {}\n"),
            "zzz",
        ),
        (format!("zzz = 1\n{FULL}"), "zzz"),
        (
            FULL.replace("token_env = \"HS\"", "token = \"x\""),
            "hubspot.token",
        ),
        (
            FULL.replace("[sync]\n", "[sync]\napi_key = 5\n"),
            "sync.api_key",
        ),
        (
            FULL.replace("webhook_secret_env = \"HS_WH\"\n", ""),
            "webhook secret",
        ),
    ];
    for (text, says) in structural {
        let e = load(&text, &env).expect_err(&text);
        assert!(e.contains(says), "{e:?} should mention {says}");
    }
}

#[test]
fn config_env_overrides_with_garbage_are_refused_or_read() {
    let mut garbage: Vec<String> = [
        "",
        " ",
        "abc",
        "-1",
        "0",
        "NaN",
        "nan",
        "1e400",
        "-1e400",
        "inf",
        "18446744073709551616",
        "9223372036854775808",
        "1.5",
        "true",
        "FALSE",
        "yes",
        "0x10",
        "1_000",
        "１２３",
        "[1]",
        "{}",
        "\u{0}",
        "🦀",
        "500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    garbage.push("9".repeat(10_000));
    for value in &garbage {
        let mut env = config_env();
        env.insert("DEALSYNC__SYNC__POLL_INTERVAL_MS".into(), value.clone());
        match load(FULL, &env) {
            Ok(c) => assert!(c.poll_interval.as_millis() > 0, "{value:?}"),
            Err(e) => assert!(e.contains("poll_interval_ms"), "{value:?}: {e}"),
        }
    }
    // Odd override keys: empty segments, unknown keys, whole sections, secrets, an index.
    for (key, value, says) in [
        ("DEALSYNC__", "1", "unknown field"),
        ("DEALSYNC____", "1", "unknown field"),
        ("DEALSYNC__SYNC", "5", "sync"),
        ("DEALSYNC__SYNC__", "5", "unknown field"),
        ("DEALSYNC__SYNC____WORKERS", "5", "unknown field"),
        ("DEALSYNC__PARTNERS", "x", "partners"),
        ("DEALSYNC__NOPE__NOPE", "x", "nope"),
        ("DEALSYNC__HUBSPOT__TOKEN", "x", "hubspot.token"),
        // Brackets would index arrays inside the `config` crate: refused by name.
        (
            "DEALSYNC__PARTNERS[0]__NAME",
            "Bad Name",
            "DEALSYNC__PARTNERS[0]__NAME",
        ),
        (
            "DEALSYNC__PARTNERS[9223372036854775806]__NAME",
            "x",
            "capitals, digits and underscores",
        ),
        ("DEALSYNC__WEBHOOKS__LISTEN", "🦀", "webhooks.listen"),
    ] {
        let mut env = config_env();
        env.insert(key.into(), value.into());
        let e = load(FULL, &env).expect_err(key);
        assert!(
            e.contains(says),
            "{key}={value}: {e:?} should mention {says}"
        );
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn random_config_text_never_panics(
        text in prop_oneof![
            any::<String>(),
            "[\\[\\]{}=,.a-z0-9_ \n#-]{0,300}",
        ]
    ) {
        let _ = load(&text, &config_env());
    }

    #[test]
    fn mutated_configs_are_read_or_refused_naming_the_key(
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut lines: Vec<String> = FULL.lines().map(str::to_owned).collect();
        let mut replaced = None;
        for m in &mutations {
            replaced = apply(&mut lines, m);
        }
        let text = lines.join("\n");
        if let (Err(e), [Mutation::Replace(..)], Some((section, key))) =
            (load(&text, &config_env()), mutations.as_slice(), replaced)
        {
            // The one changed key is named, or the TOML error shows its line.
            let located = e.contains(&key)
                // A partner's flattened connection keys are named only as the partner
                // (reported).
                || (section == "[[partners]]" && e.contains("partners[0]"))
                || e.contains("TOML parse error at line")
                || UNLOCATED_NUMBER_ERRORS.iter().any(|u| e.contains(u))
                // A key of the stage map is the map's own business.
                || (key == "a" && e.contains("stage_map"))
                // Both property names of a field are reported as the field.
                || (key.ends_with("_property") && e.contains("fields.dealname"))
                // An empty token variable name is reported as the variable that is not set.
                || (key.ends_with("_env") && e.contains("is not set"))
                // `search_per_s = 0` is reported as `rate_limit_per_10s` (reported).
                || (key == "search_per_s" && e.contains("rate budgets"));
            prop_assert!(located, "{} changed: {}", key, e);
        }
    }

    #[test]
    fn garbage_env_overrides_never_panic(
        key in prop_oneof![
            prop::sample::select(vec![
                "SYNC__POLL_INTERVAL_MS", "SYNC__WORKERS", "SYNC__BATCH_SIZE", "SYNC__MAX_ATTEMPTS",
                "WEBHOOKS__LISTEN", "WEBHOOKS__MAX_BODY_BYTES", "WEBHOOKS__QUIET_AFTER_MS",
                "HUBSPOT__BASE_URL", "HUBSPOT__TOKEN_ENV", "STORE__PATH", "FIELDS__X__KIND",
            ]).prop_map(str::to_owned),
            "[A-Z_]{0,30}",
            // Nested and indexed keys, the classes the loader once mishandled.
            "[A-Z]{1,10}(__[A-Z0-9_]{1,10}){1,3}",
            "PARTNERS(\\[[0-9]{1,20}\\])?__[0-9]{1,20}__[A-Z_]{1,12}",
            "(PARTNERS|FIELDS|HUBSPOT)\\[[0-9]{1,20}\\](__[A-Z_]{1,12}){0,2}",
        ],
        value in any::<String>(),
    ) {
        let mut env = config_env();
        env.insert(format!("DEALSYNC__{key}"), value);
        let _ = load(FULL, &env);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. The dead-letter reader
// ---------------------------------------------------------------------------------------------

/// Any string, with the nasty ones (newlines, quotes, separators, NUL, emoji) made likely.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        1 => prop::sample::select(vec![
            "",
            "line\nbreak",
            "\r\n",
            "\"quoted\" \\ back\\slash",
            "\u{2028}\u{2029}\u{85}",
            "\u{0}\u{1}\u{7f}",
            "🦀 ünï © \u{202e}",
            "{\"id\":\"x\"}\n{",
        ])
        .prop_map(str::to_owned),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        nasty_string(),
        any::<i64>(),
        nasty_string(),
        nasty_string(),
        nasty_string(),
        nasty_string(),
        nasty_string(),
        nasty_string(),
        any::<i64>(),
        nasty_string(),
        nasty_string(),
    )
        .prop_map(
            |(id, link_id, partner, pd, hd, reason, error, class, attempts, first, last)| Entry {
                id,
                link_id,
                partner,
                partner_deal_id: pd,
                hubspot_deal_id: hd,
                reason,
                error,
                class: class.as_str().into(),
                attempts,
                first_at: first,
                last_at: last,
                notification: None,
            },
        )
}

fn sample_entry(id: &str) -> Entry {
    Entry {
        id: id.into(),
        link_id: 1,
        partner: "partner-a".into(),
        partner_deal_id: "1".into(),
        hubspot_deal_id: "2".into(),
        reason: "poll".into(),
        error: "stage x has no mapping".into(),
        class: "unmapped_stage".into(),
        attempts: 1,
        first_at: "2026-01-01T00:00:00.000Z".into(),
        last_at: "2026-01-01T00:00:00.000Z".into(),
        notification: None,
    }
}

fn is_a_dead_letter_line(line: &str) -> bool {
    serde_json::from_str::<Entry>(line).is_ok() || serde_json::from_str::<Replay>(line).is_ok()
}

/// A line that is not an entry: a torn entry, random text, random JSON or blank space.
fn garbage_line() -> impl Strategy<Value = String> {
    prop_oneof![
        (entry(), any::<prop::sample::Index>()).prop_map(|(e, cut)| {
            let s = serde_json::to_string(&e).unwrap();
            let ends: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
            s[..ends[cut.index(ends.len())]].to_owned()
        }),
        "[^\n]{0,80}",
        json_value().prop_map(|v| v.to_string()),
        "[ \t\r]{0,4}",
    ]
    .prop_filter("not a readable entry or mark", |l| {
        !is_a_dead_letter_line(l)
    })
}

/// Reads `path` both ways; an error must name the file.
fn read_dead_letters(path: &Path) -> Result<deadletter::DeadLetterFile, String> {
    let all = deadletter::read_all(path);
    let plain = deadletter::read(path);
    match (all, plain) {
        (Ok(f), Ok((entries, warnings))) => {
            assert_eq!(f.entries, entries);
            assert_eq!(f.warnings, warnings);
            Ok(f)
        }
        (Err(a), Err(b)) => {
            let (a, b) = (a.to_string(), b.to_string());
            assert_eq!(a, b);
            assert!(
                a.contains(&path.display().to_string()),
                "names the file: {a}"
            );
            Err(a)
        }
        (a, b) => panic!("read_all and read disagree: {a:?} / {b:?}"),
    }
}

#[test]
fn dead_letter_corpus_is_read_or_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead-letters.jsonl");
    let good = serde_json::to_string(&sample_entry("good")).unwrap();
    let huge_error = Entry {
        error: "e".repeat(4 << 20),
        ..sample_entry("huge")
    };
    let huge = serde_json::to_string(&huge_error).unwrap();
    // (what, contents, entries read, warnings)
    let cases: Vec<(&str, Vec<u8>, Vec<&str>, usize)> = vec![
        ("empty", b"".to_vec(), vec![], 0),
        ("blank lines", b"\n\n \r\n\t\n".to_vec(), vec![], 0),
        (
            "one entry, no newline",
            good.clone().into_bytes(),
            vec!["good"],
            0,
        ),
        (
            "CRLF",
            format!("{good}\r\n{good}\r\n").into_bytes(),
            vec!["good", "good"],
            0,
        ),
        (
            "torn last line",
            format!("{good}\n{}", &good[..good.len() / 2]).into_bytes(),
            vec!["good"],
            1,
        ),
        (
            "torn first line",
            format!("{}\n{good}\n", &good[..10]).into_bytes(),
            vec!["good"],
            1,
        ),
        (
            "two entries on a line",
            format!("{good}{good}\n{good}\n").into_bytes(),
            vec!["good"],
            1,
        ),
        (
            "a JSON array",
            format!("[{good}]\n{good}\n").into_bytes(),
            vec!["good"],
            1,
        ),
        (
            "wrong types",
            format!(
                "{}\n{good}\n",
                good.replace("\"link_id\":1", "\"link_id\":\"1\"")
            )
            .into_bytes(),
            vec!["good"],
            1,
        ),
        (
            "NUL bytes",
            format!("\0\0\0\n{good}\n\0").into_bytes(),
            vec!["good"],
            2,
        ),
        (
            "a 10 MB line",
            format!("{}\n{good}\n", "x".repeat(10 << 20)).into_bytes(),
            vec!["good"],
            1,
        ),
        (
            "a 4 MB entry",
            format!("{huge}\n{good}\n").into_bytes(),
            vec!["huge", "good"],
            0,
        ),
        (
            "deep nesting",
            format!("{}\n{good}\n", "[".repeat(100_000)).into_bytes(),
            vec!["good"],
            1,
        ),
    ];
    for (what, contents, ids, warnings) in cases {
        std::fs::write(&path, &contents).unwrap();
        let f = read_dead_letters(&path).unwrap_or_else(|e| panic!("{what}: {e}"));
        let got: Vec<&str> = f.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(got, ids, "{what}");
        assert_eq!(f.warnings.len(), warnings, "{what}: {:?}", f.warnings);
        for w in &f.warnings {
            assert!(w.contains(&path.display().to_string()), "{what}: {w}");
        }
    }

    // A file that is not there is an empty dead-letter file; a directory is an error.
    let missing = dir.path().join("missing.jsonl");
    assert!(read_dead_letters(&missing).unwrap().entries.is_empty());
    let e = read_dead_letters(dir.path()).unwrap_err();
    assert!(e.contains("cannot read"), "{e}");

    // Invalid UTF-8 on one line. Today the whole file is refused (reported: the valid lines
    // around it are then unreadable too); at least the error names the file. Skipping just
    // that line, like any other unreadable line, is what it should do.
    let mut bytes = format!("{good}\n").into_bytes();
    bytes.extend_from_slice(b"\xff\xfe\xc3\x28 torn\n");
    bytes.extend_from_slice(format!("{good}\n").as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    match read_dead_letters(&path) {
        Ok(f) => {
            assert_eq!(f.entries.len(), 2, "both valid lines are read");
            assert_eq!(f.warnings.len(), 1);
        }
        Err(e) => assert!(e.contains("UTF-8"), "{e}"),
    }
    // Appending after any of this still works, on a fresh line.
    std::fs::write(&path, b"{\"id\":\"tor").unwrap();
    deadletter::append(&path, &[sample_entry("after")]).unwrap();
    let f = read_dead_letters(&path).unwrap();
    assert_eq!(f.entries, vec![sample_entry("after")]);
    assert_eq!(f.warnings.len(), 1);
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn random_dead_letter_files_are_read_or_refused_naming_the_file(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..4096),
            "[^\u{0}]{0,512}".prop_map(String::into_bytes),
        ],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead-letters.jsonl");
        std::fs::write(&path, &bytes).unwrap();
        if read_dead_letters(&path).is_err() {
            prop_assert!(std::str::from_utf8(&bytes).is_err(), "valid UTF-8 must be readable");
        }
    }

    #[test]
    fn every_valid_line_among_garbage_is_read(
        lines in prop::collection::vec(
            prop_oneof![entry().prop_map(Ok), garbage_line().prop_map(Err)],
            0..24,
        ),
        crlf in any::<bool>(),
        trailing_newline in any::<bool>(),
        invalid_utf8_line in any::<bool>(),
        extra in entry(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead-letters.jsonl");
        let sep: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let mut bytes = Vec::new();
        let mut want_entries = Vec::new();
        let mut want_warnings = Vec::new();
        for (n, line) in lines.iter().enumerate() {
            if n > 0 {
                bytes.extend_from_slice(sep);
            }
            match line {
                Ok(e) => {
                    bytes.extend_from_slice(serde_json::to_string(e).unwrap().as_bytes());
                    want_entries.push(e.clone());
                }
                Err(g) => {
                    bytes.extend_from_slice(g.as_bytes());
                    if !g.trim().is_empty() {
                        want_warnings.push(n + 1);
                    }
                }
            }
        }
        if invalid_utf8_line {
            if !lines.is_empty() {
                bytes.extend_from_slice(sep);
            }
            bytes.extend_from_slice(b"\xc3\x28\xff");
            want_warnings.push(lines.len() + 1);
        }
        if trailing_newline {
            bytes.extend_from_slice(sep);
        }
        std::fs::write(&path, &bytes).unwrap();
        match read_dead_letters(&path) {
            Ok(f) => {
                prop_assert_eq!(&f.entries, &want_entries);
                prop_assert_eq!(f.warnings.len(), want_warnings.len(), "{:?}", f.warnings);
                for (w, n) in f.warnings.iter().zip(&want_warnings) {
                    let at = format!("{}:{}:", path.display(), n);
                    prop_assert!(w.contains(&at), "{} should name {}", w, at);
                }
            }
            // Today a line of invalid UTF-8 makes the whole file unreadable (reported).
            Err(e) => prop_assert!(invalid_utf8_line && e.contains("UTF-8"), "{}", e),
        }
        if !invalid_utf8_line {
            // An append after garbage (even a torn line without a newline) is read back.
            deadletter::append(&path, std::slice::from_ref(&extra)).unwrap();
            want_entries.push(extra);
            let f = read_dead_letters(&path).unwrap();
            prop_assert_eq!(&f.entries, &want_entries);
        }
    }

    #[test]
    fn any_entry_round_trips_exactly(
        batches in prop::collection::vec(prop::collection::vec(entry(), 0..4), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead-letters.jsonl");
        for b in &batches {
            deadletter::append(&path, b).unwrap();
        }
        let f = read_dead_letters(&path).unwrap();
        let want: Vec<Entry> = batches.concat();
        prop_assert_eq!(f.entries, want);
        prop_assert!(f.warnings.is_empty(), "{:?}", f.warnings);
        prop_assert!(f.replays.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// 5. The running webhook listener
// ---------------------------------------------------------------------------------------------

const SECRET: &str = "hostile-webhook-secret";
/// What the listener may answer to anything.
const ANSWERS: &[u16] = &[204, 400, 401, 404, 405, 413];
/// hyper's own answer to a request head over its limits (header count or size).
const HEADERS_TOO_LARGE: u16 = 431;

/// A seeded generator outside `proptest!`, for the listener barrage.
struct Gen {
    seed: u64,
    runner: TestRunner,
}

impl Gen {
    fn new() -> Gen {
        let seed = std::env::var("DEALSYNC_HOSTILE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("hostile listener seed: {seed} (replay with DEALSYNC_HOSTILE_SEED={seed})");
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        Gen {
            seed,
            runner: TestRunner::new_with_rng(
                ProptestConfig::default(),
                TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
            ),
        }
    }

    fn make<S: Strategy>(&mut self, s: S) -> S::Value {
        s.new_tree(&mut self.runner)
            .expect("a value from the strategy")
            .current()
    }
}

/// One request of the barrage and the answers it may get.
struct Probe {
    what: String,
    method: reqwest::Method,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    expect: Vec<u16>,
    /// The listener may refuse before reading the whole body and close the connection, which
    /// the client can see as a cut connection instead of the answer.
    cut_ok: bool,
}

fn signed_headers(url: &str, body: &[u8], ts: i64, secret: &str) -> Vec<(String, Vec<u8>)> {
    let sig = signature::sign_v3(
        secret,
        "POST",
        &signature::decode_uri_for_signature(url),
        body,
        ts,
    );
    vec![
        (
            "x-hubspot-request-timestamp".into(),
            ts.to_string().into_bytes(),
        ),
        ("x-hubspot-signature-v3".into(), sig.into_bytes()),
        ("content-type".into(), b"application/json".to_vec()),
    ]
}

/// A well-formed delivery: one event per id, with a string subscription type and other
/// fields random.
fn well_formed(g: &mut Gen, ids: &[String]) -> Vec<u8> {
    let events: Vec<Value> = ids
        .iter()
        .map(|id| {
            let mut e = g.make(near_valid_event());
            let kind = g.make(prop::sample::select(vec![
                "deal.propertyChange",
                "deal.creation",
                "object.propertyChange",
                "contact.creation",
                "",
            ]));
            e["eventId"] = json!(id);
            e["subscriptionType"] = json!(kind);
            e
        })
        .collect();
    serde_json::to_vec(&events).unwrap()
}

/// Sends a request over a raw socket; the status line of the answer, if one came.
async fn raw_exchange(addr: SocketAddr, request: &[u8], close_write: bool) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The listener may answer and close before it has read everything.
    let _ = s.write_all(request).await;
    if close_write {
        let _ = s.shutdown().await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the listener neither answered nor closed");
    let head = String::from_utf8_lossy(&answer);
    head.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

async fn stored_event_ids(store: &Store) -> BTreeSet<String> {
    store
        .call(|c| {
            let mut st = c.prepare("SELECT event_id FROM webhook_events")?;
            let ids = st
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<BTreeSet<_>, _>>()?;
            Ok(ids)
        })
        .await
        .expect("read the inbox")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_listener_refuses_hostile_requests_and_stores_only_signed_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("dealsync.db"))
        .await
        .expect("store");
    let cancel = CancellationToken::new();
    let (addr, task) = webhook::serve(
        Listener::new(
            store.clone(),
            vec![WebhookPortal {
                name: "partner-a".into(),
                side: Side::Partner,
                secret: SECRET.into(),
            }],
            fields(),
        ),
        "127.0.0.1:0".parse().unwrap(),
        cancel.clone(),
    )
    .await
    .expect("listener");
    let mut g = Gen::new();
    let seed = g.seed;
    let base = format!("http://{addr}");
    let url = format!("{base}/webhooks/partner-a");
    let now = store::now_ms;
    let mut probes: Vec<Probe> = Vec::new();
    let mut accepted: BTreeSet<String> = BTreeSet::new();
    let post = |what: String, path: &str, headers, body, expect: &[u16]| Probe {
        what,
        method: reqwest::Method::POST,
        path: path.to_owned(),
        headers,
        body,
        expect: expect.to_vec(),
        cut_ok: false,
    };

    // Validly signed, well-formed deliveries: accepted, every event stored once.
    for n in 0..60 {
        let count = g.make(1usize..6);
        let ids: Vec<String> = (0..count).map(|i| format!("valid-{n}-{i}")).collect();
        let body = well_formed(&mut g, &ids);
        assert!(webhook::parse_events(&body, Side::Partner, &fields()).is_ok());
        accepted.extend(ids);
        probes.push(post(
            format!("signed delivery {n}"),
            "/webhooks/partner-a",
            signed_headers(&url, &body, now(), SECRET),
            body,
            &[204],
        ));
    }
    let hundred: Vec<String> = (0..100).map(|i| format!("hundred-{i}")).collect();
    let body = well_formed(&mut g, &hundred);
    accepted.extend(hundred);
    let headers = signed_headers(&url, &body, now(), SECRET);
    probes.push(post(
        "100 events".into(),
        "/webhooks/partner-a",
        headers,
        body,
        &[204],
    ));
    let too_many: Vec<String> = (0..101).map(|i| format!("too-many-{i}")).collect();
    let body = well_formed(&mut g, &too_many);
    let headers = signed_headers(&url, &body, now(), SECRET);
    probes.push(post(
        "101 events".into(),
        "/webhooks/partner-a",
        headers,
        body,
        &[400],
    ));
    // Signed over the URL as called, percent-encodings and query included: accepted too.
    for (n, path) in [
        "/webhooks/partner%2Da",
        "/webhooks/partner-a?x=%3A%zz%&y=%F0%9F%A6%80",
        "/webhooks/partner-a?",
    ]
    .into_iter()
    .enumerate()
    {
        let ids = vec![format!("encoded-{n}")];
        let body = well_formed(&mut g, &ids);
        accepted.extend(ids);
        let headers = signed_headers(&format!("{base}{path}"), &body, now(), SECRET);
        probes.push(post(format!("signed {path}"), path, headers, body, &[204]));
    }

    // Validly signed garbage: refused as a bad request unless it happens to be events.
    for n in 0..80 {
        let body: Vec<u8> = g.make(prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2048),
            json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            event_array().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ]);
        let expect = match webhook::parse_events(&body, Side::Partner, &fields()) {
            Ok(events) => {
                accepted.extend(events.into_iter().map(|e| e.event_id));
                204
            }
            Err(_) => 400,
        };
        let headers = signed_headers(&url, &body, now(), SECRET);
        probes.push(post(
            format!("signed garbage {n}"),
            "/webhooks/partner-a",
            headers,
            body,
            &[expect],
        ));
    }

    // Forged, tampered, stale and unsigned deliveries of well-formed events: all 401.
    for n in 0..80 {
        let ids = vec![format!("forged-{n}")];
        let body = well_formed(&mut g, &ids);
        let ts = now();
        let mut headers = signed_headers(&url, &body, ts, SECRET);
        let mut sent = body.clone();
        let how = n % 16;
        match how {
            0 => headers.retain(|(k, _)| k != "x-hubspot-signature-v3"),
            1 => headers.retain(|(k, _)| k != "x-hubspot-request-timestamp"),
            2 => headers = signed_headers(&url, &body, ts, "another-secret"),
            3 => {
                let i = g.make(0..sent.len());
                sent[i] = sent[i].wrapping_add(1);
            }
            4 => sent.push(b' '),
            5 => headers[0].1 = (ts + 1).to_string().into_bytes(),
            6 => headers = signed_headers(&url, &body, ts - MAX_TIMESTAMP_AGE_MS - 60_000, SECRET),
            7 => headers = signed_headers(&url, &body, ts + MAX_TIMESTAMP_AGE_MS + 60_000, SECRET),
            8 => headers = signed_headers(&url, &body, i64::MAX, SECRET),
            9 => headers[0].1 = b"soon".to_vec(),
            10 => headers[1].1 = b"\xff\xfe not ascii \x80".to_vec(),
            11 => {
                headers = signed_headers(&format!("{base}/webhooks/partner-b"), &body, ts, SECRET)
            }
            12 => headers[1].1 = signature::sign_v1(SECRET, &body).into_bytes(),
            13 => headers[1].1 = Vec::new(),
            14 => headers[1].1 = vec![b'A'; 64 * 1024],
            _ => headers = signed_headers(&url.replace("http://", "https://"), &body, ts, SECRET),
        }
        probes.push(post(
            format!("forged {n} (kind {how})"),
            "/webhooks/partner-a",
            headers,
            sent,
            &[401],
        ));
    }
    // Also signed over the canonical URL but sent to an encoded one.
    let body = well_formed(&mut g, &["forged-encoded".to_owned()]);
    let headers = signed_headers(&url, &body, now(), SECRET);
    probes.push(post(
        "encoded path, canonical signature".into(),
        "/webhooks/partner%2Da",
        headers,
        body,
        &[401],
    ));

    // Random headers on unsigned or signed deliveries.
    for n in 0..20 {
        let body = well_formed(&mut g, &[format!("random-headers-{n}")]);
        let mut headers = if n % 2 == 0 {
            Vec::new()
        } else {
            signed_headers(&url, &body, now(), "not-the-secret")
        };
        let extra: Vec<(String, Vec<u8>)> = g.make(prop::collection::vec(
            (
                "x-[a-z0-9-]{1,20}",
                prop::collection::vec(
                    prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')],
                    0..200,
                ),
            ),
            0..20,
        ));
        headers.extend(extra);
        headers.push((
            "x-hubspot-request-timestamp".into(),
            g.make("[0-9 +-]{0,25}").into_bytes(),
        ));
        probes.push(post(
            format!("random headers {n}"),
            "/webhooks/partner-a",
            headers,
            body,
            &[401],
        ));
    }

    // Wrong methods and unknown paths, signed or not.
    let body = well_formed(&mut g, &["misaddressed".to_owned()]);
    let signed = signed_headers(&url, &body, now(), SECRET);
    for method in [
        "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "BREW",
    ] {
        probes.push(Probe {
            what: format!("{method} on the webhook path"),
            method: reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            path: "/webhooks/partner-a".into(),
            headers: signed.clone(),
            body: body.clone(),
            expect: vec![405],
            cut_ok: false,
        });
    }
    probes.push(post(
        "POST /healthz".into(),
        "/healthz",
        signed.clone(),
        body.clone(),
        &[405],
    ));
    let long = format!("/webhooks/{}", "a".repeat(8 * 1024));
    for (path, expect) in [
        ("/", 404),
        ("/webhooks", 404),
        ("/webhooks/", 404),
        ("/webhooks/nobody", 404),
        ("/webhooks/PARTNER-A", 404),
        ("/webhooks/partner-a/extra", 404),
        ("/webhooks//partner-a", 404),
        ("/webhooks/%00", 404),
        ("/webhooks/%2e%2e", 404),
        ("/webhooks/%FF", 400),
        ("/webhooks/%C3%28", 400),
        ("/webhooks/%F0%9F%A6%80", 404),
        ("/hooks/partner-a", 404),
        ("/webhooks/partner-a%2F..%2Fx", 404),
        (long.as_str(), 404),
    ] {
        let headers = signed_headers(&format!("{base}{path}"), &body, now(), SECRET);
        probes.push(post(
            format!("POST {path:.40}"),
            path,
            headers,
            body.clone(),
            &[expect],
        ));
    }

    // Bodies over the limit, signed or not.
    let first_over = probes.len();
    let over = vec![b'['; webhook::DEFAULT_MAX_BODY + 1];
    probes.push(post(
        "over the limit, signed".into(),
        "/webhooks/partner-a",
        signed_headers(&url, &over, now(), SECRET),
        over.clone(),
        &[413],
    ));
    probes.push(post(
        "over the limit, unsigned".into(),
        "/webhooks/partner-a",
        Vec::new(),
        over,
        &[413],
    ));
    let far_over = vec![b' '; 8 * webhook::DEFAULT_MAX_BODY];
    probes.push(post(
        "8x the limit".into(),
        "/webhooks/partner-a",
        Vec::new(),
        far_over,
        &[413],
    ));
    for p in &mut probes[first_over..] {
        p.cut_ok = true;
    }

    // Head floods: one huge header, and more headers than hyper takes.
    let huge_header = vec![("x-filler".to_owned(), vec![b'x'; 512 * 1024])];
    probes.push(post(
        "a 512 KiB header".into(),
        "/webhooks/partner-a",
        huge_header,
        body.clone(),
        &[HEADERS_TOO_LARGE],
    ));
    let many: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("x-h{i}"), b"v".to_vec()))
        .collect();
    probes.push(post(
        "200 headers".into(),
        "/webhooks/partner-a",
        many,
        body.clone(),
        &[HEADERS_TOO_LARGE],
    ));

    let total = probes.len();
    assert!(total >= 250, "a few hundred requests: {total}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let answers: Vec<(Probe, Result<u16, String>)> = futures_util::stream::iter(probes)
        .map(|p| {
            let http = http.clone();
            let base = base.clone();
            async move {
                let mut rb = http.request(p.method.clone(), format!("{base}{}", p.path));
                for (k, v) in &p.headers {
                    rb = rb.header(
                        k.as_str(),
                        reqwest::header::HeaderValue::from_bytes(v).unwrap(),
                    );
                }
                let r = rb.body(p.body.clone()).send().await;
                let r = match r {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let text = resp.text().await.unwrap_or_default();
                        if [400, 401, 413].contains(&status) && p.method != reqwest::Method::HEAD {
                            assert!(!text.trim().is_empty(), "{}: a {status} says why", p.what);
                        }
                        Ok(status)
                    }
                    Err(e) => Err(e.to_string()),
                };
                (p, r)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (p, r) in &answers {
        let status = match r {
            Ok(s) => *s,
            Err(_) if p.cut_ok => continue,
            Err(e) => panic!("seed {seed}: {}: no answer: {e}", p.what),
        };
        assert!(
            ANSWERS.contains(&status) || status == HEADERS_TOO_LARGE,
            "seed {seed}: {}: unexpected {status}",
            p.what
        );
        assert!(
            p.expect.contains(&status),
            "seed {seed}: {}: expected {:?}, got {status}",
            p.what,
            p.expect
        );
    }

    // Badly framed requests over a raw socket: refused by hyper with a 400 (or routed, when
    // the framing is fine but odd), or the connection is closed; never a 5xx, never a hang.
    let host = format!("Host: {addr}\r\nConnection: close\r\n");
    let ts = now();
    let framed: Vec<(&str, Vec<u8>, bool)> = vec![
        ("not HTTP", b"GARBAGE\r\n\r\n".to_vec(), false),
        ("binary", (0u8..=255).cycle().take(4096).collect(), false),
        ("no path", format!("POST\r\n{host}\r\n").into_bytes(), false),
        ("raw space in path", format!("POST /webhooks/partner a HTTP/1.1\r\n{host}\r\n").into_bytes(), false),
        ("raw non-ASCII path", [b"POST /webhooks/\xff\xfe HTTP/1.1\r\n".as_slice(), host.as_bytes(), b"\r\n"].concat(), false),
        ("dot segments", format!("POST /webhooks/../webhooks/partner-a HTTP/1.1\r\n{host}Content-Length: 2\r\n\r\n[]").into_bytes(), false),
        ("absolute form", format!("POST http://{addr}/webhooks/partner-a HTTP/1.1\r\n{host}Content-Length: 2\r\n\r\n[]").into_bytes(), false),
        ("partial body", format!("POST /webhooks/partner-a HTTP/1.1\r\n{host}X-HubSpot-Request-Timestamp: {ts}\r\nX-HubSpot-Signature-v3: x\r\nContent-Length: 100\r\n\r\n[{{\"event").into_bytes(), true),
        ("two content lengths", format!("POST /webhooks/partner-a HTTP/1.1\r\n{host}Content-Length: 2\r\nContent-Length: 3\r\n\r\n[]]").into_bytes(), false),
        ("negative content length", format!("POST /webhooks/partner-a HTTP/1.1\r\n{host}Content-Length: -1\r\n\r\n").into_bytes(), false),
        ("huge content length", format!("POST /webhooks/partner-a HTTP/1.1\r\n{host}Content-Length: 99999999999999999999999\r\n\r\n").into_bytes(), false),
        ("bad chunk", format!("POST /webhooks/partner-a HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\nzz\r\n[]\r\n0\r\n\r\n").into_bytes(), true),
        ("chunked over the limit", {
            let mut r = format!("POST /webhooks/partner-a HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n").into_bytes();
            for _ in 0..20 {
                r.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
                r.extend(std::iter::repeat_n(b' ', 64 * 1024));
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        }, false),
        ("header without colon", format!("POST /webhooks/partner-a HTTP/1.1\r\n{host}NoColonHere\r\n\r\n").into_bytes(), false),
        ("obsolete line folding", format!("POST /webhooks/partner-a HTTP/1.1\r\n{host}X-HubSpot-Signature-v3: a\r\n b\r\nContent-Length: 0\r\n\r\n").into_bytes(), false),
        ("HTTP/0.9", b"GET /healthz\r\n\r\n".to_vec(), false),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), true),
        ("head only, then silence", format!("POST /webhooks/partner-a HTTP/1.1\r\n{host}Content-Length: 10\r\n\r\n").into_bytes(), true),
    ];
    for (what, request, close_write) in framed {
        let status = raw_exchange(addr, &request, close_write).await;
        let allowed: &[Option<u16>] = match what {
            "dot segments" => &[Some(404)],
            "absolute form" => &[Some(401)],
            // Answered before the rest was read, or cut off while the client still wrote.
            "chunked over the limit" => &[Some(413), None],
            "partial body" | "head only, then silence" | "bad chunk" => &[Some(400), None],
            // hyper answers in HTTP/2, which has no HTTP/1.1 status line.
            "HTTP/2 preface" => &[None],
            _ => &[Some(400)],
        };
        assert!(allowed.contains(&status), "{what}: got {status:?}");
    }

    // Still healthy, and only what was validly signed and well formed reached the inbox.
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    let stored = stored_event_ids(&store).await;
    assert_eq!(
        stored.len(),
        accepted.len(),
        "seed {seed}: stored events {} vs accepted {}",
        stored.len(),
        accepted.len()
    );
    assert_eq!(stored, accepted, "seed {seed}");
    assert!(stored.iter().all(|id| !id.starts_with("forged")
        && !id.starts_with("random-headers")
        && !id.starts_with("too-many")
        && id != "misaddressed"));
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the listener stops")
        .expect("the listener stops cleanly");
}

// ---------------------------------------------------------------------------------------------
// 6. Malformed portal responses
// ---------------------------------------------------------------------------------------------

/// The fake portal's canned bodies, and which paths have had their first answer.
struct PortalState {
    huge_valid: Bytes,
    huge_garbage: Bytes,
    answered: std::sync::Mutex<BTreeSet<String>>,
}

/// How the fake portal answers, by the first path segment after `/s/`.
async fn garbage_portal(
    State(st): State<Arc<PortalState>>,
    UrlPath((scenario, rest)): UrlPath<(String, String)>,
) -> Response {
    let first = st
        .answered
        .lock()
        .unwrap()
        .insert(format!("{scenario}/{rest}"));
    let json_ok = |v: Value| (StatusCode::OK, axum::Json(v)).into_response();
    let raw = |status: u16, content_type: &'static str, body: Body| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(body)
            .unwrap()
    };
    let wrong_types = json!({
        "id": "1",
        "results": [
            {
                "id": "1",
                "properties": {"a": 5, "b": [1], "c": {"d": null}, "hs_lastmodifieddate": "never"},
                "propertiesWithHistory": {
                    "a": [{"timestamp": 5}, {"timestamp": "99999999999999999999"},
                          {"timestamp": "-9223372036854775808"}, {"timestamp": "2026-13-45T99:99:99Z"}, 7],
                    "b": "not a list"
                },
                "updatedAt": "yesterday",
                "archived": "yes"
            },
            null, 5, "x", [], {}
        ],
        "properties": [],
        "total": -1,
        "paging": {"next": {"after": 12345}},
        "errors": "none"
    });
    match scenario.as_str() {
        "invalid-json" => raw(200, "application/json", Body::from("{\"results\": [")),
        "html-200" => raw(200, "text/html", Body::from("<html><body>OK</body></html>")),
        "binary-200" => raw(
            200,
            "application/json",
            Body::from(vec![0xff, 0xfe, 0, 1, 2]),
        ),
        "results-object" => json_ok(json!({"results": {"id": "1"}, "id": 7})),
        "ids-numbers" => json_ok(json!({
            "id": 1,
            "results": [{"id": 1, "properties": {"dealname": "x"}}, {"id": 1.5}, {"id": null}],
            "total": "many",
            "paging": {"next": {"after": {"x": 1}}}
        })),
        "properties-null" => json_ok(json!({
            "id": "1",
            "properties": null,
            "propertiesWithHistory": null,
            "results": [{"id": "1", "properties": null, "propertiesWithHistory": null, "updatedAt": null}],
            "paging": null
        })),
        "wrong-types" => json_ok(wrong_types),
        "empty" => raw(200, "application/json", Body::empty()),
        "null" => raw(200, "application/json", Body::from("null")),
        "array" => raw(200, "application/json", Body::from("[]")),
        "deep" => raw(200, "application/json", Body::from("[".repeat(100_000))),
        "huge-valid" => raw(200, "application/json", Body::from(st.huge_valid.clone())),
        "huge-garbage" => raw(200, "application/json", Body::from(st.huge_garbage.clone())),
        "299-garbage" => raw(299, "application/json", Body::from("{{{")),
        "html-502" => raw(
            502,
            "text/html",
            Body::from("<html><h1>502 Bad Gateway</h1></html>"),
        ),
        "503-empty" => raw(503, "application/json", Body::empty()),
        "500-wrong-error-shape" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"category": 5, "message": ["x"], "policyName": 1})),
        )
            .into_response(),
        "599" => raw(599, "text/plain", Body::from("?")),
        // A 429 is retried after the window it names, whatever the retry policy says
        // (reported); so these answer 429 once per path, then a 502.
        "429-bare" | "429-alone" if first => raw(429, "text/plain", Body::empty()),
        "429-garbage-retry-after" if first => Response::builder()
            .status(429)
            .header("retry-after", "soon")
            .header("content-type", "application/json")
            .body(Body::from("{\"policyName\": [\"SECONDLY\"]}"))
            .unwrap(),
        "429-bare" | "429-alone" | "429-garbage-retry-after" => {
            raw(502, "text/html", Body::from("<html>502</html>"))
        }
        "404-garbage" => raw(404, "text/html", Body::from("<html>not here</html>")),
        "400-binary" => raw(
            400,
            "application/octet-stream",
            Body::from(vec![0xff, 0xfe, 0x00]),
        ),
        "207-garbage" => (
            StatusCode::MULTI_STATUS,
            axum::Json(json!({
                "results": "x",
                "errors": [1, null, {"context": 5}, {"context": {"ids": [1, "2"]}, "category": 7}]
            })),
        )
            .into_response(),
        "mid-body" => {
            let parts: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(b"{\"results\": [{\"id\": \"1\", ")),
                Err(std::io::Error::other("the portal went away")),
            ];
            raw(
                200,
                "application/json",
                Body::from_stream(futures_util::stream::iter(parts)),
            )
        }
        _ => raw(500, "text/plain", Body::from("unknown scenario")),
    }
}

/// A portal below HTTP: answers (or not) on a raw socket, by the path's first segment.
async fn raw_portal() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split_whitespace().nth(1).unwrap_or("");
                let scenario = path.split('/').nth(2).unwrap_or("");
                let reply: &[u8] = match scenario {
                    "close" => b"",
                    "short-body" => b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"results\": [",
                    "bad-status-line" => b"HELLO WORLD\r\n\r\n",
                    "bad-content-length" => b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n{}",
                    "bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
                    "hang" => {
                        // Holds the connection until the client gives up.
                        let mut rest = Vec::new();
                        let _ = s.read_to_end(&mut rest).await;
                        return;
                    }
                    _ => b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
                };
                let _ = s.write_all(reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// What one call came back with, for checking.
#[derive(Debug)]
enum Outcome {
    Read(Result<usize, CrmError>),
    Get(Result<bool, CrmError>),
    Update {
        written: Vec<String>,
        failed: Vec<(String, CrmError)>,
    },
}

impl Outcome {
    fn errors(&self) -> Vec<&CrmError> {
        match self {
            Outcome::Read(Err(e)) | Outcome::Get(Err(e)) => vec![e],
            Outcome::Update { failed, .. } => failed.iter().map(|(_, e)| e).collect(),
            _ => Vec::new(),
        }
    }
}

async fn call_everything(base: String, timeout: Duration) -> Vec<(&'static str, Outcome)> {
    let client = |base: &str| {
        Client::new(
            "garbage-portal",
            base,
            TOKEN_MARKER,
            Arc::new(Budget::new(100, 4)),
            RetryPolicy {
                max_retries: 0,
                timeout,
                ..Default::default()
            },
        )
        .expect("client")
    };
    let ids: Vec<String> = vec!["1".into(), "2".into()];
    let props: Vec<String> = vec!["dealname".into(), "dealstage".into()];
    let (a, b, c, d) = (client(&base), client(&base), client(&base), client(&base));
    let (ids2, props2, props3) = (ids.clone(), props.clone(), props.clone());
    let read = tokio::spawn(async move { a.batch_read("deals", &ids2, &props2, true).await });
    let search = tokio::spawn(async move {
        b.search("deals", &json!({"filterGroups": [], "limit": 200}))
            .await
    });
    let get = tokio::spawn(async move { c.get("deals", "1", &props3).await });
    let update = tokio::spawn(async move {
        let updates: Vec<(String, serde_json::Map<String, Value>)> = ids
            .iter()
            .map(|id| {
                let mut m = serde_json::Map::new();
                m.insert("dealname".into(), json!("x"));
                (id.clone(), m)
            })
            .collect();
        d.batch_update("deals", &updates).await
    });
    let ctx = |what: &str| format!("{base}: {what} panicked");
    let u = update
        .await
        .unwrap_or_else(|_| panic!("{}", ctx("batch_update")));
    let read = read
        .await
        .unwrap_or_else(|_| panic!("{}", ctx("batch_read")));
    let search = search.await.unwrap_or_else(|_| panic!("{}", ctx("search")));
    let get = get.await.unwrap_or_else(|_| panic!("{}", ctx("get")));
    vec![
        ("batch_read", Outcome::Read(read.map(|r| r.len()))),
        ("search", Outcome::Read(search.map(|p| p.records.len()))),
        ("get", Outcome::Get(get.map(|r| r.is_some()))),
        (
            "batch_update",
            Outcome::Update {
                written: u.written.into_iter().map(|r| r.id).collect(),
                failed: u.failed,
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_portal_answers_are_errors_not_panics() {
    // 20 MB: one of readable records, one of garbage.
    let record = json!({"id": "0", "properties": {"dealname": "n".repeat(10_000)}}).to_string();
    let mut valid = String::from("{\"results\": [");
    while valid.len() < 20 << 20 {
        valid.push_str(&record);
        valid.push(',');
    }
    valid.push_str(&record);
    valid.push_str("], \"total\": 1}");
    let mut garbage = b"{\"results\": [\"".to_vec();
    garbage.resize(20 << 20, b'g');
    let state = Arc::new(PortalState {
        huge_valid: Bytes::from(valid),
        huge_garbage: Bytes::from(garbage),
        answered: Default::default(),
    });
    let app = axum::Router::new()
        .route("/s/{scenario}/{*rest}", axum::routing::any(garbage_portal))
        .with_state(state);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    let raw_addr = raw_portal().await;

    let fast = Duration::from_secs(15);
    // Answers that must fail every call, as transient errors.
    let transient_http = [
        ("html-502", &[Some(502)][..]),
        ("503-empty", &[Some(503)]),
        ("500-wrong-error-shape", &[Some(500)]),
        ("599", &[Some(599)]),
        ("429-bare", &[Some(429), Some(502)]),
        ("429-garbage-retry-after", &[Some(429), Some(502)]),
        ("mid-body", &[None]),
    ];
    let transient_raw = [
        "close",
        "short-body",
        "bad-status-line",
        "bad-content-length",
        "bad-chunk",
    ];
    // 2xx answers that are not what was asked for: a value or a decode error, never a panic.
    let odd_success = [
        "invalid-json",
        "html-200",
        "binary-200",
        "results-object",
        "ids-numbers",
        "properties-null",
        "wrong-types",
        "empty",
        "null",
        "array",
        "deep",
        "huge-valid",
        "huge-garbage",
        "299-garbage",
        "207-garbage",
    ];
    let permanent = [("404-garbage", 404), ("400-binary", 400)];

    let mut runs = Vec::new();
    for (s, status) in transient_http {
        runs.push((s, format!("http://{http_addr}/s/{s}"), fast, Some(status)));
    }
    for s in transient_raw {
        runs.push((
            s,
            format!("http://{raw_addr}/r/{s}"),
            fast,
            Some(&[None][..]),
        ));
    }
    runs.push((
        "hang",
        format!("http://{raw_addr}/r/hang"),
        Duration::from_millis(300),
        Some(&[None]),
    ));
    for s in odd_success {
        runs.push((s, format!("http://{http_addr}/s/{s}"), fast, None));
    }
    for (s, _) in permanent {
        runs.push((s, format!("http://{http_addr}/s/{s}"), fast, None));
    }
    // A bare 429 pauses the whole portal (its budget) and is a transient error.
    let budget = Arc::new(Budget::new(100, 4));
    let alone = Client::new(
        "garbage-portal",
        &format!("http://{http_addr}/s/429-alone"),
        TOKEN_MARKER,
        budget.clone(),
        RetryPolicy {
            max_retries: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let alone = tokio::spawn(async move { alone.get("deals", "1", &[]).await });
    let mut all = Vec::new();
    for (s, base, timeout, transient) in runs {
        all.push((s, transient, tokio::spawn(call_everything(base, timeout))));
    }
    for (scenario, transient, task) in all {
        let outcomes = task.await.unwrap_or_else(|e| panic!("{scenario}: {e}"));
        for (call, outcome) in &outcomes {
            for e in outcome.errors() {
                let text = e.to_string();
                assert!(!text.trim().is_empty(), "{scenario} {call}");
                assert!(
                    !text.contains(TOKEN_MARKER),
                    "{scenario} {call} leaks the token: {text}"
                );
            }
            if let Some(status) = transient {
                match outcome {
                    Outcome::Read(Err(e)) | Outcome::Get(Err(e)) => {
                        assert_eq!(e.class(), ErrorClass::Transient, "{scenario} {call}: {e}");
                        assert!(status.contains(&e.status()), "{scenario} {call}: {e}");
                    }
                    Outcome::Update { written, failed } => {
                        assert!(written.is_empty(), "{scenario} {call}");
                        assert_eq!(failed.len(), 2, "{scenario} {call}: every id failed");
                        for (_, e) in failed {
                            assert_eq!(e.class(), ErrorClass::Transient, "{scenario} {call}: {e}");
                        }
                    }
                    other => panic!("{scenario} {call}: expected an error, got {other:?}"),
                }
            }
            // Reading a 2xx answer gives a value or a (transient) decode error.
            if odd_success.contains(&scenario) {
                if let Outcome::Read(Err(e)) | Outcome::Get(Err(e)) = outcome {
                    assert!(
                        matches!(e, CrmError::Decode { .. }),
                        "{scenario} {call}: {e}"
                    );
                    assert_eq!(e.class(), ErrorClass::Transient);
                }
            }
            // A 2xx body that cannot be read at all is a decode error for every call.
            if scenario == "invalid-json" || scenario == "huge-garbage" || scenario == "deep" {
                match outcome {
                    Outcome::Read(r) => assert!(
                        matches!(r, Err(CrmError::Decode { .. })),
                        "{scenario} {call}: {r:?}"
                    ),
                    Outcome::Get(r) => assert!(
                        matches!(r, Err(CrmError::Decode { .. })),
                        "{scenario} {call}: {r:?}"
                    ),
                    Outcome::Update { failed, .. } => assert!(failed
                        .iter()
                        .all(|(_, e)| matches!(e, CrmError::Decode { .. }))),
                }
            }
            if scenario == "huge-valid" {
                if let Outcome::Read(r) = outcome {
                    assert!(
                        r.as_ref().is_ok_and(|n| *n > 2000),
                        "{scenario} {call}: {r:?}"
                    );
                }
            }
            if let Some((_, code)) = permanent.iter().find(|(s, _)| *s == scenario) {
                match outcome {
                    // A 404 on a single read is "not there".
                    Outcome::Get(r) if *code == 404 => {
                        assert!(matches!(r, Ok(false)), "{scenario}: {r:?}")
                    }
                    Outcome::Read(Err(e)) | Outcome::Get(Err(e)) => {
                        assert_eq!(e.class(), ErrorClass::Permanent, "{scenario} {call}: {e}");
                        assert_eq!(e.status(), Some(*code));
                    }
                    Outcome::Update { failed, .. } => assert_eq!(failed.len(), 2),
                    other => panic!("{scenario} {call}: expected an error, got {other:?}"),
                }
            }
            // A batch update accounts for every id it was given.
            if let Outcome::Update { written, failed } = outcome {
                for id in ["1", "2"] {
                    assert!(
                        written.iter().any(|w| w == id) || failed.iter().any(|(f, _)| f == id),
                        "{scenario}: id {id} neither written nor failed"
                    );
                }
            }
        }
    }

    match alone.await.expect("a 429 does not panic") {
        Err(e) => assert_eq!(e.class(), ErrorClass::Transient, "{e}"),
        Ok(r) => panic!("a 429 is an error: {r:?}"),
    }
    assert!(budget.rate_limited() >= 1, "the 429 paused the portal");
}
