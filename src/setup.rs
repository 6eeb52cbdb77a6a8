//! What dealsync needs in each portal: a property group and the custom properties the synced
//! fields and registrations use. `ensure` creates what is missing and nothing else, so running
//! it twice changes nothing; with `dry_run` it only reports what it would create.

use serde_json::{json, Value};

use crate::crm::{Client, CrmError, Op};
use crate::store::Side;

/// The property group dealsync's properties live in.
pub const GROUP: &str = "dealsync";

/// HubSpot's products a partner can register interest in.
pub const PRODUCTS: &[(&str, &str)] = &[
    ("marketing_hub", "Marketing Hub"),
    ("sales_hub", "Sales Hub"),
    ("service_hub", "Service Hub"),
    ("content_hub", "Content Hub"),
    ("operations_hub", "Operations Hub"),
    ("commerce_hub", "Commerce Hub"),
];

/// Deal properties dealsync uses on both sides.
pub fn deal_properties() -> Vec<Value> {
    let text = |name: &str, label: &str| json!({ "name": name, "label": label, "type": "string", "fieldType": "textarea", "groupName": GROUP });
    vec![
        json!({
            "name": "dealsync_product_interest", "label": "Product interest", "type": "enumeration",
            "fieldType": "checkbox", "groupName": GROUP,
            "options": PRODUCTS.iter().enumerate().map(|(i, (v, l))| json!({"label": l, "value": v, "hidden": false, "displayOrder": i})).collect::<Vec<_>>(),
        }),
        text("dealsync_intro_note", "Intro note"),
        text("dealsync_specific_pain", "Specific pain / opportunity"),
        text("dealsync_next_steps", "Next steps"),
        text(
            crate::lifecycle::EXCLUDED,
            "Partners excluded from this deal (names, separated by ;)",
        ),
        text(crate::lifecycle::STATUS, "Shared deal status"),
        text(
            crate::quotes::PROPERTY,
            "HubSpot quotes (title | amount | status | link)",
        ),
        text(
            crate::quotes::REQUEST,
            "Request a quote from the HubSpot rep",
        ),
        text(
            crate::invite::ADD_PARTNER,
            "Add partner (its name in dealsync)",
        ),
        text(
            crate::invite::PARTNER_OWNER,
            "Partner user who will own the deal (email)",
        ),
        text(crate::invite::WELCOME_NOTE, "Welcome note for the partner"),
        text(crate::team::HUBSPOT_TEAM, "HubSpot's deal team (read-only)"),
        text(
            crate::team::PARTNER_TEAM,
            "Partners' deal teams (read-only, a line per partner)",
        ),
        text(
            crate::team::ADD,
            "Add to the deal team (emails of your own users)",
        ),
        text(crate::team::ADD_STATUS, "Deal team request result"),
        json!({
            "name": crate::invite::CONFIRMED, "label": "I have reached out to this partner to confirm availability",
            "type": "enumeration", "fieldType": "booleancheckbox", "groupName": GROUP,
            "options": [{"label": "Yes", "value": "true", "hidden": false}, {"label": "No", "value": "false", "hidden": false}],
        }),
        json!({
            "name": crate::register::REGISTER, "label": "Register this deal with HubSpot",
            "type": "enumeration", "fieldType": "booleancheckbox", "groupName": GROUP,
            "options": [{"label": "Yes", "value": "true", "hidden": false}, {"label": "No", "value": "false", "hidden": false}],
        }),
        json!({
            "name": crate::register::REGISTRATION, "label": "Registered from partner deal",
            "type": "string", "fieldType": "text", "groupName": GROUP, "hasUniqueValue": true,
        }),
        json!({
            "name": crate::lifecycle::ACTIVE_REGISTRATIONS, "label": "Number of active deal registrations",
            "type": "number", "fieldType": "number", "groupName": GROUP,
        }),
        json!({
            "name": "dealsync_compensation_eligible", "label": "Partner compensation eligible", "type": "enumeration",
            "fieldType": "booleancheckbox", "groupName": GROUP,
            "options": [{"label": "Yes", "value": "true", "hidden": false}, {"label": "No", "value": "false", "hidden": false}],
        }),
    ]
}

/// The note property that marks a message shared (`shared`); every other value is private.
pub const VISIBILITY: &str = "dealsync_visibility";
/// On a copy made by dealsync, the original it was made from (`portal:id`). Unique, so a copy
/// is written by upsert on this key and a retry after a crash finds it instead of making a
/// second one.
pub const ORIGIN: &str = "dealsync_origin";
/// On a comment, the id of the message (in the same portal) it replies to.
pub const REPLY_TO: &str = "dealsync_reply_to";
/// On a HubSpot-side message of a deal linked to several partners, the partner it is for.
pub const TARGET: &str = "dealsync_target";

/// Note properties dealsync uses on both sides (shared messages).
pub fn note_properties() -> Vec<Value> {
    let text = |name: &str, label: &str| json!({ "name": name, "label": label, "type": "string", "fieldType": "text", "groupName": GROUP });
    let mut origin = text(ORIGIN, "Copied by dealsync from");
    origin["hasUniqueValue"] = json!(true);
    vec![
        json!({
            "name": VISIBILITY, "label": "Visibility", "type": "enumeration", "fieldType": "select",
            "groupName": GROUP,
            "options": [
                {"label": "Private (stays in this portal)", "value": "private", "hidden": false, "displayOrder": 0},
                {"label": "Shared with the other side of the deal", "value": "shared", "hidden": false, "displayOrder": 1},
            ],
        }),
        origin,
        text(REPLY_TO, "Reply to message"),
        text(TARGET, "Shared with partner"),
    ]
}

/// One thing setup did (or would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub portal: String,
    pub what: String,
}

/// Creates the groups and properties that are missing in one portal (deals and notes).
pub async fn ensure(client: &Client, dry_run: bool) -> Result<Vec<Action>, CrmError> {
    let mut actions = Vec::new();
    let company = vec![json!({
        "name": crate::register::COMPANY_PARTNER, "label": "Assigned to partner",
        "type": "string", "fieldType": "text", "groupName": GROUP,
    })];
    for (object, label, props) in [
        ("deals", "deal", deal_properties()),
        ("notes", "note", note_properties()),
        ("companies", "company", company),
        (
            "tasks",
            "task",
            vec![json!({
                "name": crate::quotes::TASK_KEY, "label": "dealsync request", "type": "string",
                "fieldType": "text", "groupName": GROUP, "hasUniqueValue": true,
            })],
        ),
    ] {
        actions.extend(ensure_object(client, object, label, props, dry_run).await?);
    }
    Ok(actions)
}

async fn ensure_object(
    client: &Client,
    object: &str,
    label: &str,
    properties: Vec<Value>,
    dry_run: bool,
) -> Result<Vec<Action>, CrmError> {
    let mut actions = Vec::new();
    let portal = client.portal().to_owned();
    let list = |path: String| async move {
        client
            .call(
                reqwest::Method::GET,
                &path,
                None,
                crate::crm::CallKind::Ordinary,
            )
            .await
    };
    let names_in = |v: &Value| -> Vec<String> {
        v.get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect()
    };
    let names = names_in(&list(client.path(Op::Properties { object })).await?);
    let groups = names_in(&list(client.path(Op::PropertyGroups { object })).await?);
    if !groups.iter().any(|g| g == GROUP) {
        if !dry_run {
            client.ensure_group(object, GROUP, "dealsync").await?;
        }
        actions.push(Action {
            portal: portal.clone(),
            what: format!("create {label} property group {GROUP}"),
        });
    }
    for p in properties {
        let name = p["name"].as_str().unwrap_or_default();
        if names.iter().any(|n| n == name) {
            continue;
        }
        if !dry_run {
            client.ensure_property(object, &p).await?;
        }
        actions.push(Action {
            portal: portal.clone(),
            what: format!("create {label} property {name}"),
        });
    }
    Ok(actions)
}

/// The webhook subscriptions each portal's HubSpot app needs: deal lifecycle and association
/// changes, a property change subscription per synced property, and notes (`0-46`), which
/// carry shared messages.
pub fn webhook_subscriptions(synced_properties: &[String]) -> Vec<String> {
    let mut v: Vec<String> = [
        "deal.creation",
        "deal.deletion",
        "deal.restore",
        "deal.associationChange",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut props: Vec<&String> = synced_properties.iter().collect();
    props.sort();
    props.dedup();
    v.extend(props.iter().map(|p| format!("deal.propertyChange ({p})")));
    v.extend(
        [
            "object.creation (notes, 0-46)",
            "object.propertyChange (notes, 0-46)",
            "object.deletion (notes, 0-46)",
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    v
}

/// What to configure in each portal's app for webhooks, as lines for the operator.
pub fn webhook_instructions(config: &crate::config::Config) -> Vec<String> {
    let Some(w) = &config.webhooks else {
        return vec![
            "webhooks: not configured ([webhooks] listen = …); dealsync runs on polling alone"
                .into(),
        ];
    };
    let base = w
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", w.listen));
    let mut out = Vec::new();
    let portals = std::iter::once((&config.hubspot, Side::Hubspot))
        .chain(config.partners.iter().map(|p| (&p.portal, Side::Partner)));
    for (p, side) in portals {
        if p.webhook_secret.is_none() {
            out.push(format!(
                "{}: no webhook secret configured; this portal is polled only",
                p.name
            ));
            continue;
        }
        let mut props: Vec<String> = config
            .fields
            .iter()
            .map(|f| match side {
                Side::Hubspot => f.hubspot_property.clone(),
                Side::Partner => f.partner_property.clone(),
            })
            .collect();
        if side == Side::Hubspot {
            // The lifecycle: exclusions and closed stages.
            props.extend([crate::lifecycle::EXCLUDED.into(), "dealstage".into()]);
        }
        out.push(format!(
            "{}: webhook target URL {base}/webhooks/{}",
            p.name, p.name
        ));
        out.push(format!(
            "{}: subscriptions: {}",
            p.name,
            webhook_subscriptions(&props).join(", ")
        ));
    }
    out
}
