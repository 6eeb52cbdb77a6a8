//! HubSpot adds a partner to a HubSpot deal (SPEC §1.1 item 3; issue 7 item 3): a CAM on a
//! channel deal, or a direct rep on a "Do Inbound For Me" deal, fills in on the HubSpot deal
//! the partner (`dealsync_add_partner`), the partner user who will own it
//! (`dealsync_partner_owner`, their email in the partner's portal), a welcome note
//! (`dealsync_welcome_note`) and ticks "I have reached out to this partner to confirm
//! availability" (`dealsync_availability_confirmed`). Until all are there, the HubSpot deal's
//! `dealsync_status` says what is missing and nothing is created. Then the partner deal is
//! created in the partner's default pipeline, owned by that user, linked, and the welcome note
//! is written on the HubSpot deal as a shared message, which message sync carries to the
//! partner as the deal's first shared message.
//!
//! The partner deal starts from the HubSpot deal's values of every synced field that may flow
//! to the partner ([`crate::register::Synced::seed`]), its stage mapped back through the
//! partner's stage map, so the link's first sync finds both sides equal and records them as
//! agreed. A HubSpot stage with no partner mapping (or mapped to a stage the partner's pipeline
//! lacks) leaves the partner deal at its pipeline's first stage, as before the seeding existed;
//! the first sync then sees two stages and no shadow and settles them as a `dealstage`
//! conflict under the field's rule.
//!
//! The partner deal is written by upsert on the unique `dealsync_registration`
//! (`hubspot:<deal id>`), so a retry after a crash finds it instead of making a second one.

use serde_json::{json, Map, Value};

use crate::crm::{Client, CrmError, Record};
use crate::properties::{
    ACTIVE_REGISTRATIONS, ADD_PARTNER, AVAILABILITY_CONFIRMED, DEAL_STATUS, PARTNER_OWNER,
    REGISTRATION, WELCOME_NOTE,
};
use crate::register::RegistrationSettings;
use crate::store::{self, Store, StoreError};

/// The HubSpot deal properties an invitation is read from.
pub fn props() -> Vec<String> {
    [
        ADD_PARTNER,
        PARTNER_OWNER,
        WELCOME_NOTE,
        AVAILABILITY_CONFIRMED,
        "dealname",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// What is still missing from an invitation (empty: complete). Pure.
pub fn missing(deal: &Record, known_partner: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    match deal.get(ADD_PARTNER) {
        Some(p) if known_partner(p) => {}
        Some(p) => out.push(format!(
            "a partner dealsync knows ({p:?} is not configured)"
        )),
        None => out.push("the partner".into()),
    }
    if deal.get(PARTNER_OWNER).is_none() {
        out.push("the partner user who will own the deal".into());
    }
    if deal.get(WELCOME_NOTE).is_none() {
        out.push("a welcome note".into());
    }
    if deal.get(AVAILABILITY_CONFIRMED) != Some("true") {
        out.push("the confirmation that the partner's availability was checked".into());
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    #[error(transparent)]
    Crm(#[from] CrmError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no user with email {email} in {partner}'s portal; set the partner owner to one of its users")]
    UnknownOwner { partner: String, email: String },
}

/// What an invitation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invited {
    /// Still missing these; shown on the HubSpot deal.
    Waiting(Vec<String>),
    /// The partner deal now exists and is linked.
    Linked {
        partner: String,
        partner_deal_id: String,
    },
}

/// Acts on one HubSpot deal that names a partner to add.
pub async fn invite(
    store: &Store,
    hubspot: &Client,
    markings: &crate::engine::messages::Markings,
    partners: &std::collections::HashMap<String, (Client, RegistrationSettings)>,
    deal: &Record,
) -> Result<Invited, InviteError> {
    let lacking = missing(deal, |p| partners.contains_key(p));
    let (id, named, l2) = (
        deal.id.clone(),
        deal.get(ADD_PARTNER).map(str::to_owned),
        lacking.clone(),
    );
    store
        .call(move |c| store::record_invitation(c, &id, named.as_deref(), &l2))
        .await?;
    if !lacking.is_empty() {
        let text = format!("waiting for: {}", lacking.join(", "));
        if deal.get(DEAL_STATUS) != Some(text.as_str()) {
            let mut m = Map::new();
            m.insert(DEAL_STATUS.into(), json!(text));
            hubspot.update("deals", &deal.id, &m).await?;
        }
        return Ok(Invited::Waiting(lacking));
    }
    let partner = deal.get(ADD_PARTNER).unwrap_or_default().to_owned();
    let Some((client, settings)) = partners.get(&partner) else {
        return Ok(Invited::Waiting(vec!["a configured partner".into()]));
    };
    let email = deal.get(PARTNER_OWNER).unwrap_or_default().to_owned();
    let owners = client
        .call(
            reqwest::Method::GET,
            &format!(
                "{}?email={}",
                client.path(crate::crm::Op::Owners),
                form_urlencoded::byte_serialize(email.as_bytes()).collect::<String>()
            ),
            None,
            crate::crm::CallKind::Ordinary,
        )
        .await?;
    let owner = owners
        .get("results")
        .and_then(Value::as_array)
        .and_then(|r| {
            r.iter()
                .find(|o| o.get("email").and_then(Value::as_str) == Some(email.as_str()))
        })
        .and_then(|o| o.get("id").and_then(Value::as_str))
        .map(str::to_owned)
        .ok_or_else(|| InviteError::UnknownOwner {
            partner: partner.clone(),
            email: email.clone(),
        })?;
    let mut props = Map::new();
    props.insert(
        "dealname".into(),
        json!(deal.get("dealname").unwrap_or("Shared deal")),
    );
    props.insert("pipeline".into(), json!(settings.partner_pipeline));
    let stages = crate::register::pipeline_stages(client, &settings.partner_pipeline).await?;
    if let Some(first) = stages.first() {
        props.insert("dealstage".into(), json!(first));
    }
    props.extend(seed(hubspot, deal, settings, &stages).await?);
    props.insert("hubspot_owner_id".into(), json!(owner));
    props.insert(DEAL_STATUS.into(), json!("active"));
    props.insert(ACTIVE_REGISTRATIONS.into(), json!("1"));
    let made = client
        .batch_upsert(
            "deals",
            REGISTRATION,
            &[(format!("{}:{}", hubspot.portal(), deal.id), props)],
        )
        .await?;
    let partner_deal = made
        .first()
        .map(|r| r.id.clone())
        .ok_or_else(|| CrmError::Decode {
            portal: partner.clone(),
            call: "batch upsert".into(),
            detail: "no deal in the answer".into(),
        })?;
    // The link first, then the welcome note: the note is news for the partner (notifications
    // announce only messages written after their link). A stop between the two leaves the
    // link without its welcome note; the other order could write the note twice.
    let (p2, pd, hd) = (partner.clone(), partner_deal.clone(), deal.id.clone());
    let link = store
        .call(move |c| store::insert_link(c, &p2, &pd, &hd, "channel"))
        .await?;
    // The welcome note, as a shared message on HubSpot's side: message sync carries it over.
    let note = markings
        .shared_note(
            hubspot,
            deal.get(WELCOME_NOTE).unwrap_or_default(),
            &partner,
        )
        .await?;
    hubspot
        .create(
            "notes",
            &note,
            crate::crm::to_deal(&deal.id, crate::crm::NOTE_TO_DEAL),
        )
        .await?;
    let id = link.id;
    store
        .call(move |c| store::enqueue_now(c, &[id], store::JobReason::Invitation))
        .await?;
    let mut m = Map::new();
    m.insert(
        DEAL_STATUS.into(),
        json!(format!("partner {partner} added")),
    );
    hubspot.update("deals", &deal.id, &m).await?;
    Ok(Invited::Linked {
        partner,
        partner_deal_id: partner_deal,
    })
}

/// The partner deal's synced values from the HubSpot deal. The poller's record carries only
/// the invitation's properties, so the synced ones are read here; a deal gone meanwhile falls
/// back to that record (the next sync sees what became of it).
async fn seed(
    hubspot: &Client,
    deal: &Record,
    settings: &RegistrationSettings,
    stages: &[String],
) -> Result<Map<String, Value>, CrmError> {
    let props = settings.synced.source_props(store::Side::Partner);
    if props.is_empty() {
        return Ok(Map::new());
    }
    let current = hubspot.get("deals", &deal.id, &props).await?;
    let source = current.as_ref().unwrap_or(deal);
    Ok(settings.synced.seed(store::Side::Partner, source, stages))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deal(props: &[(&str, &str)]) -> Record {
        let mut r = Record::default();
        for (k, v) in props {
            r.properties.insert((*k).into(), Some((*v).into()));
        }
        r
    }

    #[test]
    fn every_missing_piece_is_named() {
        let known = |p: &str| p == "partner-a";
        assert_eq!(missing(&deal(&[]), known).len(), 4);
        let full = [
            (ADD_PARTNER, "partner-a"),
            (PARTNER_OWNER, "ana@partner.example"),
            (WELCOME_NOTE, "Welcome!"),
            (AVAILABILITY_CONFIRMED, "true"),
        ];
        assert!(missing(&deal(&full), known).is_empty());
        for i in 0..full.len() {
            let mut some = full.to_vec();
            some.remove(i);
            let m = missing(&deal(&some), known);
            assert_eq!(m.len(), 1, "{m:?}");
        }
        let mut unconfirmed = full.to_vec();
        unconfirmed[3] = (AVAILABILITY_CONFIRMED, "false");
        assert!(missing(&deal(&unconfirmed), known)[0].contains("availability"));
        let mut unknown = full.to_vec();
        unknown[0] = (ADD_PARTNER, "partner-z");
        assert!(missing(&deal(&unknown), known)[0].contains("not configured"));
    }
}
