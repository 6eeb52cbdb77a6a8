//! The plan of a whole batch, from what was read to what to write: per link the lifecycle the
//! HubSpot deal decides, the field rules ([`super::plan::plan_link`]), each side's view of the
//! other's deal team, HubSpot's quotes on the partner deal and the partner deal's banner; which
//! links look deleted; and the writes merged per portal and deal, where two links of one
//! HubSpot deal (best partner wins) each own one line of the partner-team text.
//!
//! No I/O: the worker reads before ([`Reads`]) and writes after ([`merge_writes`]). Tested on
//! records built in memory, like `rules`.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::plan::{self, LinkPlan, PlanError};
use super::Settings;
use crate::crm::{CrmError, Owner, Record};
use crate::lifecycle::{self, Lifecycle};
use crate::properties::{ACTIVE_REGISTRATIONS, DEAL_STATUS, HUBSPOT_TEAM, PARTNER_TEAM, QUOTES};
use crate::store::Link;
use crate::team;

/// What a batch read, by portal and deal id.
pub struct Reads<'a> {
    /// HubSpot's portal: a link whose HubSpot deal is missing looks deleted there.
    pub hubspot_portal: &'a str,
    pub hubspot: &'a HashMap<String, Record>,
    /// Per partner, its deals or why they could not be read.
    pub partners: &'a HashMap<String, Result<HashMap<String, Record>, CrmError>>,
    /// Per HubSpot deal, the partner-facing summary of its quotes (only deals whose jobs
    /// asked for quotes).
    pub quotes: &'a HashMap<String, String>,
    /// Per portal, its users (the deal team); a portal missing here shows no team this time.
    pub dirs: &'a HashMap<String, Arc<Vec<Owner>>>,
    /// Per link, the agreed value of each field.
    pub shadows: &'a HashMap<i64, HashMap<String, Option<String>>>,
}

/// Why a link has no plan.
#[derive(Debug)]
pub enum Failure<'r> {
    /// Its partner's deals could not be read.
    Read(&'r CrmError),
    /// The rules cannot decide (an unmapped stage).
    Plan(PlanError),
}

/// The batch's decisions.
pub struct BatchPlan<'l, 'r> {
    pub plans: Vec<(&'l Link, LinkPlan)>,
    /// Links the HubSpot deal excludes or closes in this batch.
    pub lives: HashMap<i64, Lifecycle>,
    /// Per portal, the links whose deal is missing there.
    pub gone: HashMap<String, Vec<&'l Link>>,
    pub failed: Vec<(i64, Failure<'r>)>,
}

/// Plans every link of the batch.
pub fn plan_batch<'l, 'r>(
    links: &[&'l Link],
    reads: &Reads<'r>,
    settings: &Settings,
) -> BatchPlan<'l, 'r> {
    let mut out = BatchPlan {
        plans: Vec::new(),
        lives: HashMap::new(),
        gone: HashMap::new(),
        failed: Vec::new(),
    };
    let no_shadows = HashMap::new();
    for &l in links {
        let p = match reads.partners.get(&l.partner) {
            Some(Ok(m)) => m.get(&l.partner_deal_id),
            Some(Err(e)) => {
                out.failed.push((l.id, Failure::Read(e)));
                continue;
            }
            None => None,
        };
        let h = reads.hubspot.get(&l.hubspot_deal_id);
        let (Some(p), Some(h)) = (p, h) else {
            // Deletion does not propagate: the link is orphaned and shown in status, unless
            // the mass-deletion guard holds the portal (the engine asks it).
            let portal = if p.is_none() {
                l.partner.as_str()
            } else {
                reads.hubspot_portal
            };
            out.gone.entry(portal.to_owned()).or_default().push(l);
            continue;
        };
        let life = lifecycle::decide(h, &l.partner, &settings.closed_stages);
        if life != Lifecycle::Active {
            out.lives.insert(l.id, life);
        }
        let shadows = reads.shadows.get(&l.id).unwrap_or(&no_shadows);
        match plan_one(l, life, p, h, shadows, reads, settings) {
            Ok(plan) => out.plans.push((l, plan)),
            Err(e) => out.failed.push((l.id, Failure::Plan(e))),
        }
    }
    out
}

/// One readable link: the field rules (unless excluded), then what dealsync shows on the
/// deals themselves. Only what differs from the record is written.
fn plan_one(
    l: &Link,
    life: Lifecycle,
    p: &Record,
    h: &Record,
    shadows: &HashMap<String, Option<String>>,
    reads: &Reads<'_>,
    settings: &Settings,
) -> Result<LinkPlan, PlanError> {
    if !life.syncs_fields() {
        // Excluded: nothing crosses any more, either way; the partner's people leave
        // HubSpot's view of the deal team, and the partner deal shows why.
        let mut plan = LinkPlan::default();
        let shown = h.get(PARTNER_TEAM).unwrap_or("");
        if !team::partner_line(shown, &l.partner).is_empty() {
            plan.hubspot_writes.insert(
                PARTNER_TEAM.into(),
                Value::String(team::with_partner_line(shown, &l.partner, "")),
            );
        }
        banner(life, p, &mut plan);
        return Ok(plan);
    }
    let stages = settings
        .stage_maps
        .get(&l.partner)
        .cloned()
        .unwrap_or_default();
    let mut plan = plan::plan_link(l, &settings.fields, &stages, shadows, p, h)?;
    plan_team(l, p, h, reads, &mut plan);
    if let Some(want) = reads.quotes.get(&l.hubspot_deal_id) {
        if p.get(QUOTES).unwrap_or("") != want {
            plan.partner_writes
                .insert(QUOTES.into(), Value::String(want.clone()));
        }
    }
    if life != Lifecycle::Active {
        banner(life, p, &mut plan);
    }
    Ok(plan)
}

/// The partner deal's status banner and active-registration count for a closed or excluded
/// link.
fn banner(life: Lifecycle, p: &Record, plan: &mut LinkPlan) {
    let (status, registrations) = life.partner_view();
    for (prop, value) in [(DEAL_STATUS, status), (ACTIVE_REGISTRATIONS, registrations)] {
        if p.get(prop) != Some(value) {
            plan.partner_writes
                .insert(prop.into(), Value::String(value.into()));
        }
    }
}

/// Shows each side the other side's team, when both portals' users are known.
fn plan_team(l: &Link, p: &Record, h: &Record, reads: &Reads<'_>, plan: &mut LinkPlan) {
    let (Some(hd), Some(pd)) = (
        reads.dirs.get(reads.hubspot_portal),
        reads.dirs.get(&l.partner),
    ) else {
        return;
    };
    let hubspot_team = team::describe(h, hd);
    if p.get(HUBSPOT_TEAM).unwrap_or("") != hubspot_team {
        plan.partner_writes
            .insert(HUBSPOT_TEAM.into(), Value::String(hubspot_team));
    }
    let line = team::describe(p, pd);
    let shown = h.get(PARTNER_TEAM).unwrap_or("");
    if team::partner_line(shown, &l.partner) != line {
        plan.hubspot_writes.insert(
            PARTNER_TEAM.into(),
            Value::String(team::with_partner_line(shown, &l.partner, &line)),
        );
    }
}

/// The batch's writes: per HubSpot deal, and per partner and partner deal.
#[derive(Debug, Default, PartialEq)]
pub struct Updates {
    pub hubspot: HashMap<String, Map<String, Value>>,
    pub partners: HashMap<String, HashMap<String, Map<String, Value>>>,
}

/// Merges the links' writes per deal. Links sharing a HubSpot deal each contribute their own
/// line of the partner-team text; any other property is last-writer-wins within the batch.
pub fn merge_writes(plans: &[(&Link, LinkPlan)]) -> Updates {
    let mut out = Updates::default();
    for (l, plan) in plans {
        if !plan.hubspot_writes.is_empty() {
            let update = out.hubspot.entry(l.hubspot_deal_id.clone()).or_default();
            for (k, v) in &plan.hubspot_writes {
                if let (true, Some(Value::String(before)), Value::String(mine)) =
                    (k == PARTNER_TEAM, update.get(k), v)
                {
                    let line = team::partner_line(mine, &l.partner);
                    let merged = team::with_partner_line(before, &l.partner, &line);
                    update.insert(k.clone(), Value::String(merged));
                } else {
                    update.insert(k.clone(), v.clone());
                }
            }
        }
        if !plan.partner_writes.is_empty() {
            out.partners
                .entry(l.partner.clone())
                .or_default()
                .entry(l.partner_deal_id.clone())
                .or_default()
                .extend(plan.partner_writes.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crm::Owner;
    use crate::engine::{FieldKind, FieldSpec, StageMap};

    fn link(id: i64, partner: &str, p: &str, h: &str) -> Link {
        Link {
            id,
            partner: partner.into(),
            partner_deal_id: p.into(),
            hubspot_deal_id: h.into(),
            deal_type: "channel".into(),
            state: crate::store::LinkState::Active,
            created_at: 0,
        }
    }

    fn record(id: &str, props: &[(&str, &str)]) -> Record {
        Record {
            id: id.into(),
            properties: props
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Some((*v).to_owned())))
                .collect(),
            ..Default::default()
        }
    }

    fn settings() -> Settings {
        Settings {
            fields: vec![FieldSpec::both_ways(
                "dealname",
                "dealname",
                "dealname",
                FieldKind::Text,
            )],
            stage_maps: HashMap::from([("partner-a".to_owned(), StageMap::default())]),
            batch_size: 100,
            workers: 1,
            max_attempts: 4,
            retry_base: std::time::Duration::from_millis(50),
            retry_max: std::time::Duration::from_millis(400),
            dead_letter_path: "unused.jsonl".into(),
            mass_deletion: Default::default(),
            messages: Default::default(),
            closed_stages: Default::default(),
            registration: Default::default(),
            notify: Default::default(),
        }
    }

    struct World {
        hubspot: HashMap<String, Record>,
        partners: HashMap<String, Result<HashMap<String, Record>, CrmError>>,
        quotes: HashMap<String, String>,
        dirs: HashMap<String, Arc<Vec<Owner>>>,
        shadows: HashMap<i64, HashMap<String, Option<String>>>,
    }

    impl World {
        fn new() -> World {
            World {
                hubspot: HashMap::new(),
                partners: HashMap::new(),
                quotes: HashMap::new(),
                dirs: HashMap::new(),
                shadows: HashMap::new(),
            }
        }

        fn reads(&self) -> Reads<'_> {
            Reads {
                hubspot_portal: "hubspot",
                hubspot: &self.hubspot,
                partners: &self.partners,
                quotes: &self.quotes,
                dirs: &self.dirs,
                shadows: &self.shadows,
            }
        }

        fn pair(&mut self, l: &Link, p: &[(&str, &str)], h: &[(&str, &str)]) {
            self.hubspot
                .insert(l.hubspot_deal_id.clone(), record(&l.hubspot_deal_id, h));
            self.partners
                .entry(l.partner.clone())
                .or_insert_with(|| Ok(HashMap::new()))
                .as_mut()
                .unwrap()
                .insert(l.partner_deal_id.clone(), record(&l.partner_deal_id, p));
        }
    }

    #[test]
    fn a_change_on_one_side_is_written_to_the_other() {
        let l = link(1, "partner-a", "p1", "h1");
        let mut w = World::new();
        w.pair(&l, &[("dealname", "New")], &[("dealname", "Old")]);
        w.shadows.insert(
            1,
            HashMap::from([("dealname".to_owned(), Some("Old".to_owned()))]),
        );
        let b = plan_batch(&[&l], &w.reads(), &settings());
        assert!(b.failed.is_empty() && b.gone.is_empty() && b.lives.is_empty());
        assert_eq!(b.plans.len(), 1);
        assert_eq!(b.plans[0].1.hubspot_writes["dealname"], "New");
        assert!(b.plans[0].1.partner_writes.is_empty());
    }

    #[test]
    fn a_missing_deal_is_gone_in_its_portal_and_an_unreadable_partner_fails() {
        let (a, b, c) = (
            link(1, "partner-a", "p1", "h1"),
            link(2, "partner-a", "p2", "h2"),
            link(3, "partner-b", "p3", "h3"),
        );
        let mut w = World::new();
        w.pair(&a, &[], &[]);
        w.hubspot.remove("h1");
        w.pair(&b, &[], &[]);
        w.partners
            .get_mut("partner-a")
            .unwrap()
            .as_mut()
            .unwrap()
            .remove("p2");
        w.hubspot.insert("h3".into(), record("h3", &[]));
        w.partners.insert(
            "partner-b".into(),
            Err(CrmError::Timeout {
                portal: "partner-b".into(),
                call: "batch read".into(),
            }),
        );
        let plan = plan_batch(&[&a, &b, &c], &w.reads(), &settings());
        assert!(plan.plans.is_empty());
        assert_eq!(plan.gone["hubspot"][0].id, 1);
        assert_eq!(plan.gone["partner-a"][0].id, 2);
        assert!(matches!(plan.failed[..], [(3, Failure::Read(_))]));
    }

    #[test]
    fn an_excluded_partner_gets_its_banner_and_leaves_the_team_but_no_field() {
        let l = link(1, "partner-a", "p1", "h1");
        let mut w = World::new();
        w.pair(
            &l,
            &[("dealname", "Partner's"), (DEAL_STATUS, "active")],
            &[
                ("dealname", "HubSpot's"),
                (crate::properties::EXCLUDED_PARTNERS, "partner-a"),
                (PARTNER_TEAM, "partner-a: Ana"),
            ],
        );
        let b = plan_batch(&[&l], &w.reads(), &settings());
        assert_eq!(b.lives[&1], Lifecycle::Excluded);
        let plan = &b.plans[0].1;
        assert_eq!(plan.partner_writes[DEAL_STATUS], "excluded");
        assert_eq!(plan.partner_writes[ACTIVE_REGISTRATIONS], "0");
        assert!(!plan.partner_writes.contains_key("dealname"));
        assert_eq!(plan.hubspot_writes.len(), 1, "{:?}", plan.hubspot_writes);
        assert!(plan.shadows.is_empty());
    }

    #[test]
    fn quotes_are_written_only_when_they_differ() {
        let (a, b) = (
            link(1, "partner-a", "p1", "h1"),
            link(2, "partner-a", "p2", "h2"),
        );
        let mut w = World::new();
        w.pair(&a, &[(QUOTES, "Q1 | 10 | draft")], &[]);
        w.pair(&b, &[(QUOTES, "old")], &[]);
        for h in ["h1", "h2"] {
            w.quotes.insert(h.into(), "Q1 | 10 | draft".into());
        }
        let plan = plan_batch(&[&a, &b], &w.reads(), &settings());
        assert!(plan.plans[0].1.partner_writes.is_empty());
        assert_eq!(plan.plans[1].1.partner_writes[QUOTES], "Q1 | 10 | draft");
    }

    #[test]
    fn an_unmapped_stage_fails_its_link_alone() {
        let (a, b) = (
            link(1, "partner-a", "p1", "h1"),
            link(2, "partner-a", "p2", "h2"),
        );
        let mut w = World::new();
        w.pair(&a, &[("dealstage", "nowhere")], &[("dealstage", "x")]);
        w.pair(&b, &[("dealname", "B")], &[("dealname", "B")]);
        let mut s = settings();
        s.fields.push(FieldSpec::both_ways(
            "dealstage",
            "dealstage",
            "dealstage",
            FieldKind::Stage,
        ));
        let plan = plan_batch(&[&a, &b], &w.reads(), &s);
        assert!(matches!(plan.failed[..], [(1, Failure::Plan(_))]));
        assert_eq!(plan.plans.len(), 1);
        assert_eq!(plan.plans[0].0.id, 2);
    }

    #[test]
    fn links_of_one_hubspot_deal_each_write_their_own_team_line() {
        let (a, b) = (
            link(1, "partner-a", "pa", "h1"),
            link(2, "partner-b", "pb", "h1"),
        );
        let team = |partner: &str, who: &str| {
            let mut p = LinkPlan::default();
            p.hubspot_writes.insert(
                PARTNER_TEAM.into(),
                Value::String(team::with_partner_line("", partner, who)),
            );
            p.partner_writes
                .insert("dealname".into(), Value::String(format!("{partner}'s")));
            p
        };
        let u = merge_writes(&[
            (&a, team("partner-a", "Ana")),
            (&b, team("partner-b", "Bo")),
        ]);
        let merged = u.hubspot["h1"][PARTNER_TEAM].as_str().unwrap();
        assert_eq!(team::partner_line(merged, "partner-a"), "Ana");
        assert_eq!(team::partner_line(merged, "partner-b"), "Bo");
        assert_eq!(u.partners["partner-a"]["pa"]["dealname"], "partner-a's");
        assert_eq!(u.partners["partner-b"]["pb"]["dealname"], "partner-b's");
        assert!(merge_writes(&[(&a, LinkPlan::default())]) == Updates::default());
    }
}
