//! `dealsync setup` (issue 7 item 10): a dry run lists what is missing and writes nothing; a
//! run creates exactly that (every group and property, unique ones unique); a second run
//! changes nothing.

mod common;

use std::sync::Arc;

use dealsync::crm::{Budget, Client, RetryPolicy};
use serde_json::Value;

fn writes(c: &Value) -> u64 {
    c["writes"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn setup_is_idempotent_and_a_dry_run_writes_nothing() {
    let sb = common::unlimited_sandbox().await;
    for name in ["hubspot", "partner-a"] {
        let p = common::portal(&sb, name);
        let c = Client::new(
            name,
            &sb.base_url,
            &p.info.token,
            Arc::new(Budget::new(100, 4)),
            RetryPolicy::default(),
        )
        .unwrap();
        let before = writes(&p.counters().await);
        let planned = dealsync::setup::ensure(&c, true, true)
            .await
            .expect("dry run");
        assert_eq!(
            writes(&p.counters().await),
            before,
            "a dry run writes nothing"
        );
        let expected = dealsync::properties::deal_properties().len()
            + dealsync::properties::note_properties().len()
            + 1 // the company property
            + 1 // the task property
            + 4; // a group per object
        assert_eq!(planned.len(), expected, "{planned:?}");

        let done = dealsync::setup::ensure(&c, false, true)
            .await
            .expect("setup");
        assert_eq!(done, planned, "a run does what the dry run said");
        for (object, name, unique) in [
            ("deals", dealsync::properties::REGISTRATION, true),
            ("deals", dealsync::properties::EXCLUDED_PARTNERS, false),
            ("deals", dealsync::properties::QUOTES, false),
            ("notes", dealsync::properties::ORIGIN, true),
            ("notes", dealsync::properties::VISIBILITY, false),
            ("companies", dealsync::properties::COMPANY_PARTNER, false),
            ("tasks", dealsync::properties::REQUEST_KEY, true),
            ("deals", dealsync::properties::QUOTE_REQUEST, false),
            ("deals", dealsync::properties::ADD_PARTNER, false),
        ] {
            let a = p.get(&format!("/crm/v3/properties/{object}/{name}")).await;
            assert_eq!(a.status, 200, "{object}.{name}: {}", a.text);
            assert_eq!(a.body["hasUniqueValue"], unique, "{object}.{name}");
        }

        let before = writes(&p.counters().await);
        let again = dealsync::setup::ensure(&c, false, true)
            .await
            .expect("second run");
        assert!(
            again.is_empty(),
            "the second run changes nothing: {again:?}"
        );
        assert_eq!(writes(&p.counters().await), before);
    }
}
