//! What dealsync needs in each portal: a property group and the custom properties the synced
//! fields and registrations use. `ensure` creates what is missing and nothing else, so running
//! it twice changes nothing; with `dry_run` it only reports what it would create.

use serde_json::Value;

use crate::crm::{Client, CrmError};
use crate::properties::GROUP;
use crate::store::Side;

/// One thing setup did (or would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub portal: String,
    pub what: String,
}

/// Creates the groups and properties that are missing in one portal: deals, and notes when
/// `notes` (the portal's shared messages are marked by property).
pub async fn ensure(client: &Client, dry_run: bool, notes: bool) -> Result<Vec<Action>, CrmError> {
    let mut actions = Vec::new();
    for (object, label, props) in crate::properties::definitions() {
        if object == "notes" && !notes {
            continue;
        }
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
    let schema = client.schema(object).await?;
    if !schema.groups.iter().any(|g| g == GROUP) {
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
        if schema.has(name) {
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
            props.extend([
                crate::properties::EXCLUDED_PARTNERS.into(),
                "dealstage".into(),
            ]);
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
