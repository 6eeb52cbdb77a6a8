//! Converting an existing partner deal into a shared deal (SPEC §1.1 item 2; issue 7 item 2):
//! `dealsync register --partner P --deal ID [--dry-run]`.
//!
//! A conversion is refused unless the partner is under its configured capacity of active
//! registrations **and** the deal is associated with at least one company and one contact. A
//! refusal names the failed condition, is written to the partner deal's `dealsync_status`
//! (not on a dry run), and creates nothing.
//!
//! On success: the deal type is decided from who owns the lead in HubSpot's portal (the first
//! associated company, matched there by domain — SPEC §1.2): a company whose
//! `dealsync_partner` names another partner → `best_partner_wins`; one owned by a HubSpot rep
//! (`hubspot_owner_id`) → `partner_collaboration`, assigned to that rep; otherwise `channel`.
//! The HubSpot deal is written by upsert on the unique `dealsync_registration`
//! (`partner:deal id`), so a retry after a crash finds it instead of making a second one; it
//! carries the deal name, product interest and the three qualifying texts, lands in HubSpot's
//! configured pipeline, and is owned by the lead's rep when there is one.
//! The link is stored and the partner deal shows `active` with 1 active registration.
//!
//! The new deal starts from the partner deal's values of every synced field that may flow to
//! HubSpot ([`Synced::seed`]), its stage mapped through the partner's stage map, so the link's
//! first sync finds both sides equal and simply records them as agreed: registering never
//! rewinds the partner's own pipeline. A partner stage with no mapping (or mapped to a stage
//! HubSpot's pipeline lacks) leaves the new deal at the pipeline's first stage, as before the
//! seeding existed; the first sync then stops on the unmapped stage (`unmapped_stage`) until
//! the map has it.

use serde_json::{json, Map, Value};

use crate::crm::{Client, CrmError, Record};
use crate::engine::{FieldKind, FieldSpec, StageMap};
use crate::properties::{ACTIVE_REGISTRATIONS, COMPANY_PARTNER, DEAL_STATUS, REGISTRATION};
use crate::rules::Direction;
use crate::store::{self, Side, Store, StoreError};

/// Registration settings of one partner (for registrations started from its CRM).
#[derive(Debug, Clone)]
pub struct RegistrationSettings {
    pub capacity: u32,
    pub partner_pipeline: String,
    pub hubspot_pipeline: String,
    /// The rep for leads nobody owns in HubSpot's portal (`[hubspot] default_owner_id`).
    pub default_owner_id: Option<String>,
    /// What a new shared deal (registered or invited) starts from.
    pub synced: Synced,
}

/// The synced fields and one partner's stage map: what a deal created for a new link starts
/// from, so that the link's first sync finds nothing to resolve.
#[derive(Debug, Clone, Default)]
pub struct Synced {
    pub fields: Vec<FieldSpec>,
    pub stages: StageMap,
}

impl Synced {
    /// The properties of the existing deal that [`Synced::seed`] reads for a new deal on
    /// `target`.
    pub fn source_props(&self, target: Side) -> Vec<String> {
        self.flowing(target)
            .map(|(from, _, _)| from.to_owned())
            .collect()
    }

    /// The values a new deal on `target` starts from, read from the existing deal on the other
    /// side (pure): every synced field whose direction lets it flow to `target`, under the
    /// target's property name. A stage goes through the stage map and is kept only when
    /// `pipeline_stages` (the target pipeline's) has it; otherwise it is left out and the
    /// caller's default stands. Blank values are left out: a blank side is never news.
    pub fn seed(
        &self,
        target: Side,
        source: &Record,
        pipeline_stages: &[String],
    ) -> Map<String, Value> {
        let map = match target {
            Side::Hubspot => &self.stages.to_hubspot,
            Side::Partner => &self.stages.to_partner,
        };
        let mut out = Map::new();
        for (from, to, kind) in self.flowing(target) {
            let Some(v) = source.get(from) else { continue };
            let v = match kind {
                FieldKind::Stage => match map.get(v).filter(|s| pipeline_stages.contains(s)) {
                    Some(s) => s.clone(),
                    None => continue,
                },
                _ => v.to_owned(),
            };
            out.insert(to.to_owned(), Value::String(v));
        }
        out
    }

    /// (source property, target property, kind) of the fields that flow to `target`.
    fn flowing(&self, target: Side) -> impl Iterator<Item = (&str, &str, FieldKind)> {
        self.fields.iter().filter_map(move |f| {
            let flows = match f.rule.direction {
                Direction::Both => true,
                Direction::ToHubspot => target == Side::Hubspot,
                Direction::ToPartner => target == Side::Partner,
                Direction::None => false,
            };
            let (p, h) = (f.partner_property.as_str(), f.hubspot_property.as_str());
            let (from, to) = match target {
                Side::Hubspot => (p, h),
                Side::Partner => (h, p),
            };
            flows.then_some((from, to, f.kind))
        })
    }
}

/// Partner deal properties carried to the new HubSpot deal.
const CARRIED: &[&str] = &[
    "dealname",
    crate::properties::PRODUCT_INTEREST,
    crate::properties::INTRO_NOTE,
    crate::properties::SPECIFIC_PAIN,
    crate::properties::NEXT_STEPS,
];

/// Why a conversion was refused: each names the condition that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("partner {partner} is at its capacity of {capacity} active registrations; close or lose one first, or raise capacity in the config")]
    AtCapacity { partner: String, capacity: u32 },
    #[error("the deal has no associated company; associate the lead's company with it and register again")]
    NoCompany,
    #[error("the deal has no associated contact; associate a contact with it and register again")]
    NoContact,
    #[error("the deal has no associated company and no associated contact; associate both and register again")]
    NoCompanyNoContact,
    #[error("partner deal {0} does not exist (or is archived)")]
    NoSuchDeal(String),
    #[error("partner deal {deal} is already registered (HubSpot deal {hubspot_deal})")]
    AlreadyRegistered { deal: String, hubspot_deal: String },
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("registration refused: {0}")]
    Refused(Refusal),
    #[error(transparent)]
    Crm(#[from] CrmError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a registration did (or, on a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub partner: String,
    pub partner_deal_id: String,
    /// `None` on a dry run.
    pub hubspot_deal_id: Option<String>,
    pub deal_type: String,
    pub owner_id: Option<String>,
    pub dry_run: bool,
}

/// What registration needs.
pub struct Registrar<'a> {
    pub store: &'a Store,
    pub hubspot: &'a Client,
    pub partner: &'a Client,
    pub capacity: u32,
    /// HubSpot's pipeline for new shared deals.
    pub hubspot_pipeline: &'a str,
    /// The partner's pipeline for deals registered from a contact or company.
    pub partner_pipeline: &'a str,
    /// The rep for leads nobody owns in HubSpot's portal.
    pub default_owner_id: Option<&'a str>,
    /// The synced fields and this partner's stage map, which the HubSpot deal starts from.
    pub synced: &'a Synced,
}

/// A lead registered from a contact or a company (SPEC §1.1 item 1).
#[derive(Debug, Clone, Default)]
pub struct NewLead {
    pub contact: Option<String>,
    pub company: Option<String>,
    pub name: String,
    /// Product interest values (`sales_hub`, …).
    pub products: Vec<String>,
    pub intro: Option<String>,
    pub pain: Option<String>,
    pub next_steps: Option<String>,
}

/// Decides the refusal, if any, from the facts (pure).
pub fn check(
    partner: &str,
    active: u32,
    capacity: u32,
    companies: usize,
    contacts: usize,
) -> Option<Refusal> {
    if active >= capacity {
        return Some(Refusal::AtCapacity {
            partner: partner.to_owned(),
            capacity,
        });
    }
    match (companies > 0, contacts > 0) {
        (true, true) => None,
        (false, true) => Some(Refusal::NoCompany),
        (true, false) => Some(Refusal::NoContact),
        (false, false) => Some(Refusal::NoCompanyNoContact),
    }
}

/// The deal type and owner from the lead's company in HubSpot's portal (pure).
pub fn deal_type(
    company: Option<&crate::crm::Record>,
    partner: &str,
) -> (&'static str, Option<String>) {
    let Some(c) = company else {
        return ("channel", None);
    };
    match c.get(COMPANY_PARTNER) {
        Some(p) if p != partner => ("best_partner_wins", None),
        Some(_) => ("channel", None),
        None => match c.get("hubspot_owner_id") {
            Some(owner) => ("partner_collaboration", Some(owner.to_owned())),
            None => ("channel", None),
        },
    }
}

impl Registrar<'_> {
    /// Registers a new lead: a partner deal associated with the contact or company, in the
    /// partner's pipeline, then registered as a conversion would be (the capacity still
    /// counts; the company-and-contact condition is for converting existing deals). A dry run
    /// or a refusal creates nothing.
    pub async fn register_new(
        &self,
        lead: &NewLead,
        dry_run: bool,
    ) -> Result<Registration, RegisterError> {
        let partner = self.partner.portal().to_owned();
        let p2 = partner.clone();
        let active = self
            .store
            .call(move |c| active_registrations(c, &p2))
            .await?;
        if let Some(r) = check(&partner, active, self.capacity, 1, 1) {
            return Err(RegisterError::Refused(r));
        }
        if dry_run {
            return Ok(Registration {
                partner,
                partner_deal_id: String::new(),
                hubspot_deal_id: None,
                deal_type: "decided from the lead's company".into(),
                owner_id: None,
                dry_run,
            });
        }
        let mut props = Map::new();
        props.insert("dealname".into(), json!(lead.name));
        props.insert("pipeline".into(), json!(self.partner_pipeline));
        if let Some(stage) = first_stage(self.partner, self.partner_pipeline).await? {
            props.insert("dealstage".into(), json!(stage));
        }
        if !lead.products.is_empty() {
            props.insert(
                crate::properties::PRODUCT_INTEREST.into(),
                json!(lead.products.join(";")),
            );
        }
        for (k, v) in [
            (crate::properties::INTRO_NOTE, &lead.intro),
            (crate::properties::SPECIFIC_PAIN, &lead.pain),
            (crate::properties::NEXT_STEPS, &lead.next_steps),
        ] {
            if let Some(v) = v {
                props.insert(k.into(), json!(v));
            }
        }
        let deal = self.partner.create("deals", &props, json!([])).await?.id;
        for (object, id) in [("contacts", &lead.contact), ("companies", &lead.company)] {
            if let Some(id) = id {
                self.partner
                    .associate_default("deals", object, &[(deal.clone(), id.clone())])
                    .await?;
            }
        }
        self.convert_with(&deal, false, false).await
    }

    /// Converts partner deal `deal_id`.
    pub async fn convert(
        &self,
        deal_id: &str,
        dry_run: bool,
    ) -> Result<Registration, RegisterError> {
        self.convert_with(deal_id, dry_run, true).await
    }

    async fn convert_with(
        &self,
        deal_id: &str,
        dry_run: bool,
        need_company_and_contact: bool,
    ) -> Result<Registration, RegisterError> {
        let partner = self.partner.portal().to_owned();
        let (p2, d2) = (partner.clone(), deal_id.to_owned());
        let (existing, active) = self
            .store
            .call(move |c| {
                let existing = store::links_for_deals(c, store::Side::Partner, &p2, &[d2])?;
                Ok((existing, active_registrations(c, &p2)?))
            })
            .await?;
        if let Some((l, _)) = existing.first() {
            return Err(RegisterError::Refused(Refusal::AlreadyRegistered {
                deal: deal_id.to_owned(),
                hubspot_deal: l.hubspot_deal_id.clone(),
            }));
        }
        let mut props: Vec<String> = CARRIED.iter().map(|s| (*s).to_owned()).collect();
        props.extend(self.synced.source_props(Side::Hubspot));
        let Some(deal) = self.partner.get("deals", deal_id, &props).await? else {
            return Err(RegisterError::Refused(Refusal::NoSuchDeal(
                deal_id.to_owned(),
            )));
        };
        let ids = [deal_id.to_owned()];
        let companies = self
            .partner
            .associations("deals", "companies", &ids)
            .await?;
        let contacts = self.partner.associations("deals", "contacts", &ids).await?;
        let companies: Vec<String> = companies.into_values().flatten().collect();
        let contacts: Vec<String> = contacts.into_values().flatten().collect();
        let (n_companies, n_contacts) = if need_company_and_contact {
            (companies.len(), contacts.len())
        } else {
            (1, 1)
        };
        if let Some(r) = check(&partner, active, self.capacity, n_companies, n_contacts) {
            if !dry_run {
                self.show(deal_id, &format!("registration refused: {r}"), None)
                    .await?;
            }
            return Err(RegisterError::Refused(r));
        }
        // The lead's company in HubSpot's portal, by domain.
        let domain = match companies.first() {
            Some(c) => self
                .partner
                .get("companies", c, &["domain".to_owned()])
                .await?
                .and_then(|c| c.get("domain").map(str::to_owned)),
            None => None,
        };
        let company = match &domain {
            Some(d) => self
                .hubspot
                .search(
                    "companies",
                    &json!({
                        "filterGroups": [{ "filters": [{ "propertyName": "domain", "operator": "EQ", "value": d }] }],
                        "properties": ["domain", "hubspot_owner_id", COMPANY_PARTNER],
                        "limit": 1,
                    }),
                )
                .await?
                .records
                .into_iter()
                .next(),
            None => None,
        };
        let (kind, owner) = deal_type(company.as_ref(), &partner);
        // Nobody owns the lead in HubSpot's portal: the configured default rep, if any.
        let owner = owner.or_else(|| self.default_owner_id.map(str::to_owned));
        if dry_run {
            return Ok(Registration {
                partner,
                partner_deal_id: deal_id.to_owned(),
                hubspot_deal_id: None,
                deal_type: kind.into(),
                owner_id: owner,
                dry_run,
            });
        }
        let mut out = Map::new();
        for p in CARRIED {
            if let Some(v) = deal.get(p) {
                out.insert((*p).into(), Value::String(v.into()));
            }
        }
        out.insert("pipeline".into(), json!(self.hubspot_pipeline));
        let stages = pipeline_stages(self.hubspot, self.hubspot_pipeline).await?;
        if let Some(first) = stages.first() {
            out.insert("dealstage".into(), json!(first));
        }
        out.extend(self.synced.seed(Side::Hubspot, &deal, &stages));
        if let Some(o) = &owner {
            out.insert("hubspot_owner_id".into(), json!(o));
        }
        let key = format!("{partner}:{deal_id}");
        let created = self
            .hubspot
            .batch_upsert("deals", REGISTRATION, &[(key, out)])
            .await?;
        let hubspot_deal =
            created
                .first()
                .map(|r| r.id.clone())
                .ok_or_else(|| CrmError::Decode {
                    portal: self.hubspot.portal().to_owned(),
                    call: "batch upsert".into(),
                    detail: "no deal in the answer".into(),
                })?;
        let (p2, d2, h2, k2) = (
            partner.clone(),
            deal_id.to_owned(),
            hubspot_deal.clone(),
            kind.to_owned(),
        );
        self.store
            .call(move |c| store::insert_link(c, &p2, &d2, &h2, &k2))
            .await?;
        self.show(deal_id, "active", Some("1")).await?;
        Ok(Registration {
            partner,
            partner_deal_id: deal_id.to_owned(),
            hubspot_deal_id: Some(hubspot_deal),
            deal_type: kind.into(),
            owner_id: owner,
            dry_run,
        })
    }

    /// Writes the partner deal's status (and registration count).
    async fn show(
        &self,
        deal_id: &str,
        status: &str,
        registrations: Option<&str>,
    ) -> Result<(), CrmError> {
        let mut m = Map::new();
        m.insert(DEAL_STATUS.into(), json!(status));
        if let Some(r) = registrations {
            m.insert(ACTIVE_REGISTRATIONS.into(), json!(r));
        }
        self.partner.update("deals", deal_id, &m).await.map(|_| ())
    }
}

/// Active registrations of a partner: links that are active or closed won.
fn active_registrations(c: &rusqlite::Connection, partner: &str) -> Result<u32, StoreError> {
    Ok(c.query_row(
        "SELECT COUNT(*) FROM links WHERE partner = ?1 AND state IN ('active', 'closed_won')",
        [partner],
        |r| r.get(0),
    )?)
}

/// The first stage of a deal pipeline.
pub(crate) async fn first_stage(
    client: &Client,
    pipeline: &str,
) -> Result<Option<String>, CrmError> {
    Ok(pipeline_stages(client, pipeline).await?.into_iter().next())
}

/// The stages of a deal pipeline, in display order.
pub(crate) async fn pipeline_stages(
    client: &Client,
    pipeline: &str,
) -> Result<Vec<String>, CrmError> {
    let v = client
        .call(
            reqwest::Method::GET,
            &client.path(crate::crm::Op::Pipeline {
                object: "deals",
                id: pipeline,
            }),
            None,
            crate::crm::CallKind::Ordinary,
        )
        .await?;
    let mut stages: Vec<(i64, String)> = v
        .get("stages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some((
                s.get("displayOrder").and_then(Value::as_i64).unwrap_or(0),
                s.get("id")?.as_str()?.to_owned(),
            ))
        })
        .collect();
    stages.sort();
    Ok(stages.into_iter().map(|(_, id)| id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_names_its_condition() {
        assert_eq!(check("p", 0, 5, 1, 1), None);
        assert_eq!(
            check("p", 5, 5, 1, 1),
            Some(Refusal::AtCapacity {
                partner: "p".into(),
                capacity: 5
            })
        );
        assert_eq!(check("p", 0, 5, 0, 1), Some(Refusal::NoCompany));
        assert_eq!(check("p", 0, 5, 1, 0), Some(Refusal::NoContact));
        assert_eq!(check("p", 0, 5, 0, 0), Some(Refusal::NoCompanyNoContact));
        // Capacity is checked first: it is the partner's condition, not the deal's.
        assert!(matches!(
            check("p", 9, 5, 0, 0),
            Some(Refusal::AtCapacity { .. })
        ));
        assert!(Refusal::NoContact.to_string().contains("contact"));
        assert!(Refusal::NoCompany.to_string().contains("company"));
    }

    #[test]
    fn deal_types_follow_who_owns_the_lead() {
        let company = |partner: Option<&str>, owner: Option<&str>| {
            let mut r = Record::default();
            r.properties
                .insert(COMPANY_PARTNER.into(), partner.map(str::to_owned));
            r.properties
                .insert("hubspot_owner_id".into(), owner.map(str::to_owned));
            r
        };
        assert_eq!(deal_type(None, "a"), ("channel", None));
        assert_eq!(
            deal_type(Some(&company(None, None)), "a"),
            ("channel", None)
        );
        assert_eq!(
            deal_type(Some(&company(Some("a"), None)), "a"),
            ("channel", None)
        );
        assert_eq!(
            deal_type(Some(&company(Some("b"), Some("7"))), "a"),
            ("best_partner_wins", None)
        );
        assert_eq!(
            deal_type(Some(&company(None, Some("7"))), "a"),
            ("partner_collaboration", Some("7".into()))
        );
    }

    fn record(props: &[(&str, &str)]) -> Record {
        let mut r = Record::default();
        for (k, v) in props {
            r.properties.insert((*k).into(), Some((*v).into()));
        }
        r
    }

    /// The default fields, with partner `qualifiedtobuy` shown in HubSpot as
    /// `presentationscheduled`.
    fn synced() -> Synced {
        let mut stages = StageMap::default();
        for (p, h) in [
            ("appointmentscheduled", "appointmentscheduled"),
            ("qualifiedtobuy", "presentationscheduled"),
        ] {
            stages.to_hubspot.insert(p.into(), h.into());
            stages.to_partner.insert(h.into(), p.into());
        }
        Synced {
            fields: crate::config::default_fields(),
            stages,
        }
    }

    fn pipeline() -> Vec<String> {
        [
            "appointmentscheduled",
            "qualifiedtobuy",
            "presentationscheduled",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn a_registered_deal_starts_from_the_partners_mapped_stage_and_synced_values() {
        let partner = record(&[
            ("dealname", "Acme"),
            ("dealstage", "qualifiedtobuy"),
            (crate::properties::INTRO_NOTE, "Met at INBOUND"),
            (crate::properties::COMPENSATION_ELIGIBLE, "yes"),
        ]);
        let seed = synced().seed(Side::Hubspot, &partner, &pipeline());
        assert_eq!(seed["dealstage"], "presentationscheduled");
        assert_eq!(seed["dealname"], "Acme");
        assert_eq!(seed[crate::properties::INTRO_NOTE], "Met at INBOUND");
        // HubSpot owns compensation eligibility: the partner's value never seeds it.
        assert!(
            !seed.contains_key(crate::properties::COMPENSATION_ELIGIBLE),
            "{seed:?}"
        );
        // Blank values seed nothing.
        assert!(
            !seed.contains_key(crate::properties::NEXT_STEPS),
            "{seed:?}"
        );
    }

    #[test]
    fn an_invited_deal_starts_from_hubspots_stage_mapped_back() {
        let hubspot = record(&[
            ("dealstage", "presentationscheduled"),
            (crate::properties::COMPENSATION_ELIGIBLE, "yes"),
            (crate::properties::INTRO_NOTE, "HubSpot's own"),
        ]);
        let seed = synced().seed(Side::Partner, &hubspot, &pipeline());
        assert_eq!(seed["dealstage"], "qualifiedtobuy");
        assert_eq!(seed[crate::properties::COMPENSATION_ELIGIBLE], "yes");
        // The partner owns the intro note: HubSpot's value never seeds it.
        assert!(
            !seed.contains_key(crate::properties::INTRO_NOTE),
            "{seed:?}"
        );
    }

    #[test]
    fn an_unmapped_stage_or_one_outside_the_pipeline_leaves_the_default_stage() {
        let s = synced();
        let unmapped = record(&[("dealstage", "contractsent")]);
        assert!(!s
            .seed(Side::Hubspot, &unmapped, &pipeline())
            .contains_key("dealstage"));
        let mapped = record(&[("dealstage", "qualifiedtobuy")]);
        let other_pipeline = ["appointmentscheduled".to_owned()];
        assert!(!s
            .seed(Side::Hubspot, &mapped, &other_pipeline)
            .contains_key("dealstage"));
    }

    #[test]
    fn a_field_named_differently_on_each_side_seeds_the_targets_property() {
        let s = Synced {
            fields: vec![FieldSpec::both_ways(
                "title",
                "deal_title",
                "dealname",
                FieldKind::Text,
            )],
            stages: StageMap::default(),
        };
        assert_eq!(s.source_props(Side::Hubspot), ["deal_title"]);
        assert_eq!(s.source_props(Side::Partner), ["dealname"]);
        let seed = s.seed(Side::Hubspot, &record(&[("deal_title", "Acme")]), &[]);
        assert_eq!(seed.get("dealname"), Some(&json!("Acme")));
        assert!(!seed.contains_key("deal_title"));
    }
}
