//! The message half of a batch (see [`super::messages`]) as four steps over every link of the
//! batch at once: read what decides, per portal → plan each link's intents (pure) → read the
//! contents the plan needs that step one did not → record the copies about to be made, then
//! write per link, in parallel.

use std::collections::{HashMap, HashSet};

use futures_util::future::{join_all, Either};

use super::marking::Marking;
use super::messages::{self, Content, Intent, MessageError, MessageOutcome, NoteHead, PortalNotes};
use super::{unique, Engine, EngineError};
use crate::crm::{Client, CrmError};
use crate::store::{self, ClaimedJob, Link, ObjectLink, Side};

/// One link's result.
pub type MessageResult = Result<MessageOutcome, MessageError>;

/// What the store holds of the batch's messages: the links' pairs and those of their HubSpot
/// deals' other links (what those share is never this link's: isolation).
struct Recorded {
    pairs: HashMap<i64, Vec<ObjectLink>>,
    /// Active links per HubSpot deal.
    counts: HashMap<String, usize>,
    /// Link ids per HubSpot deal.
    siblings: HashMap<String, Vec<i64>>,
}

/// One portal's notes on the batch's deals, with the portal's marking.
type PortalRead = Result<(Marking, PortalNotes), CrmError>;

/// One link's plan: its deals' notes as decided, and what each message needs.
struct LinkWork<'l> {
    link: &'l Link,
    partner: HashMap<String, NoteHead>,
    hubspot: HashMap<String, NoteHead>,
    intents: Vec<Intent>,
    force: bool,
}

/// Contents read per portal.
type Contents = HashMap<String, Result<HashMap<String, Content>, CrmError>>;

/// Step 2's answer: the links' plans, the note ids whose contents to read per portal, and the
/// links that failed already.
struct Plan<'l> {
    work: Vec<LinkWork<'l>>,
    wanted: HashMap<String, Vec<String>>,
    failed: HashMap<i64, MessageResult>,
}

impl Engine {
    pub(super) async fn sync_messages(
        &self,
        links: &[&Link],
        jobs: &HashMap<i64, &ClaimedJob>,
    ) -> Result<HashMap<i64, MessageResult>, EngineError> {
        // Sweeps and replays look at every pair, changed or not.
        let forced: HashSet<i64> = links
            .iter()
            .filter(|l| {
                jobs.get(&l.id).is_some_and(|j| {
                    j.reason.contains(store::JobReason::Sweep)
                        || j.reason.contains(store::JobReason::Replay)
                })
            })
            .map(|l| l.id)
            .collect();
        let recorded = self.recorded_messages(links).await?;
        let notes = self.read_portal_notes(links, &recorded, &forced).await;
        let hubspot_portal = self.portals.hubspot.portal();
        let Plan {
            work,
            wanted,
            failed: mut results,
        } = plan_messages(links, hubspot_portal, &recorded, &notes, &forced);
        let contents = self.read_wanted(wanted, &notes).await;
        self.record_creating(&work).await?;
        results.extend(
            self.write_messages(&work, &recorded, &notes, &contents)
                .await,
        );
        Ok(results)
    }

    async fn recorded_messages(&self, links: &[&Link]) -> Result<Recorded, EngineError> {
        let ids: Vec<i64> = links.iter().map(|l| l.id).collect();
        let hs_deals = unique(links.iter().map(|l| l.hubspot_deal_id.clone()));
        Ok(self
            .store
            .call(move |c| {
                let siblings = store::link_ids_of_hubspot_deals(c, &hs_deals)?;
                let mut all: Vec<i64> = ids;
                all.extend(siblings.values().flatten().copied());
                all.sort_unstable();
                all.dedup();
                Ok(Recorded {
                    pairs: store::object_links(c, &all)?,
                    counts: store::active_links_per_hubspot_deal(c, &hs_deals)?,
                    siblings,
                })
            })
            .await?)
    }

    /// Step 1: every deal's notes and what decides, per portal, all portals at once.
    async fn read_portal_notes(
        &self,
        links: &[&Link],
        recorded: &Recorded,
        forced: &HashSet<i64>,
    ) -> HashMap<String, PortalRead> {
        let mut by_portal: HashMap<String, (Client, Side, Vec<String>, bool)> = HashMap::new();
        for l in links {
            let mut add = |portal: &str, client: &Client, side: Side, deal: &str| {
                let e = by_portal
                    .entry(portal.to_owned())
                    .or_insert_with(|| (client.clone(), side, Vec::new(), false));
                e.2.push(deal.to_owned());
                e.3 |= forced.contains(&l.id);
            };
            add(
                self.portals.hubspot.portal(),
                &self.portals.hubspot,
                Side::Hubspot,
                &l.hubspot_deal_id,
            );
            if let Some(c) = self.portals.partners.get(&l.partner) {
                add(&l.partner, c, Side::Partner, &l.partner_deal_id);
            }
        }
        let settings = &self.settings.messages;
        let reads = by_portal
            .iter()
            .map(|(portal, (client, side, deals, force))| {
                // A partner's pairs only: note ids of different accounts may be equal.
                let known = match side {
                    Side::Hubspot => {
                        messages::known_notes(*side, portal, recorded.pairs.values().flatten())
                    }
                    Side::Partner => messages::known_notes(
                        *side,
                        portal,
                        links
                            .iter()
                            .filter(|l| l.partner == *portal)
                            .flat_map(|l| recorded.pairs.get(&l.id).into_iter().flatten()),
                    ),
                };
                async move {
                    let deals = unique(deals.iter().cloned());
                    let r = match self.markings.of(client).await {
                        Ok(m) => messages::read_notes(client, m, settings, &deals, &known, *force)
                            .await
                            .map(|n| (m, n)),
                        Err(e) => Err(e),
                    };
                    (portal.clone(), r)
                }
            });
        let notes: HashMap<String, PortalRead> = join_all(reads).await.into_iter().collect();
        for n in notes.values().flatten() {
            self.metrics.bodies_read(n.1.bodies_read as u64);
        }
        notes
    }

    /// Step 3: the contents the plan wants that step 1 did not read, per portal, added to
    /// those it did.
    async fn read_wanted(
        &self,
        wanted: HashMap<String, Vec<String>>,
        notes: &HashMap<String, PortalRead>,
    ) -> Contents {
        let settings = &self.settings.messages;
        let reads = wanted.into_iter().map(|(portal, ids)| {
            let client = self.client_of(&portal).cloned();
            let (marking, _) = side_of(notes, &portal);
            async move {
                let r = match client {
                    Some(c) => {
                        messages::read_contents(&c, marking, settings, &unique(ids.into_iter()))
                            .await
                    }
                    None => Ok(HashMap::new()),
                };
                (portal, r)
            }
        });
        let mut contents: Contents = join_all(reads).await.into_iter().collect();
        for (portal, read) in notes {
            let Ok((_, n)) = read else { continue };
            if let Ok(m) = contents
                .entry(portal.clone())
                .or_insert_with(|| Ok(HashMap::new()))
            {
                m.extend(n.contents.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        contents
    }

    fn client_of(&self, portal: &str) -> Option<&Client> {
        if portal == self.portals.hubspot.portal() {
            Some(&self.portals.hubspot)
        } else {
            self.portals.partners.get(portal)
        }
    }

    /// Step 4a: the copies about to be made are recorded `creating` first, so a crash after
    /// the write leaves a pair the next run looks for before it writes again.
    async fn record_creating(&self, work: &[LinkWork<'_>]) -> Result<(), EngineError> {
        let creating: Vec<(i64, ObjectLink)> = work
            .iter()
            .flat_map(|w| {
                w.intents.iter().filter_map(|i| match i {
                    Intent::Create { pair, .. } if pair.state != store::ObjectState::Creating => {
                        let mut p = pair.clone();
                        p.state = store::ObjectState::Creating;
                        Some((w.link.id, p))
                    }
                    _ => None,
                })
            })
            .collect();
        if !creating.is_empty() {
            self.store
                .call(move |c| store::record_creating(c, &creating))
                .await?;
        }
        Ok(())
    }

    /// Step 4b: each link's writes, in parallel.
    async fn write_messages(
        &self,
        work: &[LinkWork<'_>],
        recorded: &Recorded,
        notes: &HashMap<String, PortalRead>,
        contents: &Contents,
    ) -> Vec<(i64, MessageResult)> {
        let no_contents = HashMap::new();
        let contents_of = |portal: &str| match contents.get(portal) {
            Some(Ok(m)) => Ok(m),
            Some(Err(e)) => Err(e.clone()),
            None => Ok(&no_contents),
        };
        let hubspot_portal = self.portals.hubspot.portal();
        let empty = Vec::new();
        let runs = work.iter().filter_map(|w| {
            let l = w.link;
            let client = self.portals.partners.get(&l.partner)?;
            let (pc, hc) = match (contents_of(&l.partner), contents_of(hubspot_portal)) {
                (Ok(pc), Ok(hc)) => (pc, hc),
                (Err(e), _) | (_, Err(e)) => {
                    let e: MessageError = e.into();
                    return Some(Either::Left(async move { (l.id, Err(e)) }));
                }
            };
            let (pm, pu) = side_of(notes, &l.partner);
            let (hm, hu) = side_of(notes, hubspot_portal);
            let partner = messages::SideView {
                portal: &l.partner,
                client,
                deal_id: &l.partner_deal_id,
                heads: &w.partner,
                contents: pc,
                marking: pm,
                unsettled_until: pu,
            };
            let hubspot = messages::SideView {
                portal: hubspot_portal,
                client: &self.portals.hubspot,
                deal_id: &l.hubspot_deal_id,
                heads: &w.hubspot,
                contents: hc,
                marking: hm,
                unsettled_until: hu,
            };
            let pairs = recorded.pairs.get(&l.id).unwrap_or(&empty);
            let settings = &self.settings.messages;
            Some(Either::Right(async move {
                let r = messages::execute(
                    l,
                    settings,
                    partner,
                    hubspot,
                    w.intents.clone(),
                    pairs,
                    w.force,
                )
                .await;
                (l.id, r)
            }))
        });
        join_all(runs).await
    }
}

/// A portal's marking and when its unsettled notes settle (a portal that failed its read is
/// never written: its links fail first).
fn side_of(notes: &HashMap<String, PortalRead>, portal: &str) -> (Marking, Option<i64>) {
    match notes.get(portal) {
        Some(Ok((m, n))) => (*m, n.unsettled_until),
        _ => (Marking::Property { unique: true }, None),
    }
}

/// Step 2 (pure): each link's intents from its deals' notes and pairs, and the contents to
/// read for them — of shared notes only, and only those step 1 did not read. A link whose
/// portal could not be read fails with that portal's error.
fn plan_messages<'l>(
    links: &[&'l Link],
    hubspot_portal: &str,
    recorded: &Recorded,
    notes: &HashMap<String, PortalRead>,
    forced: &HashSet<i64>,
) -> Plan<'l> {
    let notes_of = |portal: &str, deal: &str| -> Result<HashMap<String, NoteHead>, CrmError> {
        match notes.get(portal) {
            Some(Ok((_, n))) => Ok(n
                .assoc
                .get(deal)
                .into_iter()
                .flatten()
                .filter_map(|id| n.heads.get(id).map(|h| (id.clone(), h.clone())))
                .collect()),
            Some(Err(e)) => Err(e.clone()),
            None => Ok(HashMap::new()),
        }
    };
    let empty = Vec::new();
    let (mut work, mut wanted, mut failed) = (Vec::new(), HashMap::new(), HashMap::new());
    for l in links {
        let read = notes_of(&l.partner, &l.partner_deal_id)
            .and_then(|p| Ok((p, notes_of(hubspot_portal, &l.hubspot_deal_id)?)));
        let (partner, hubspot) = match read {
            Ok(v) => v,
            Err(e) => {
                failed.insert(l.id, Err(e.into()));
                continue;
            }
        };
        let deal = messages::DealContext::new(
            l.id,
            recorded
                .counts
                .get(&l.hubspot_deal_id)
                .copied()
                .unwrap_or(1),
            hubspot_portal,
            recorded
                .siblings
                .get(&l.hubspot_deal_id)
                .into_iter()
                .flatten()
                .flat_map(|id| {
                    recorded
                        .pairs
                        .get(id)
                        .into_iter()
                        .flatten()
                        .map(|o| (*id, o))
                }),
        );
        let pairs = recorded.pairs.get(&l.id).unwrap_or(&empty);
        let intents = messages::intend(l, hubspot_portal, &deal, &partner, &hubspot, pairs);
        let w = LinkWork {
            link: l,
            partner,
            hubspot,
            intents,
            force: forced.contains(&l.id),
        };
        for (side, id) in contents_wanted(&w) {
            let portal = match side {
                Side::Partner => l.partner.as_str(),
                Side::Hubspot => hubspot_portal,
            };
            let read_already =
                matches!(notes.get(portal), Some(Ok((_, n))) if n.contents.contains_key(&id));
            if !read_already {
                wanted
                    .entry(portal.to_owned())
                    .or_insert_with(Vec::new)
                    .push(id);
            }
        }
        work.push(w);
    }
    Plan {
        work,
        wanted,
        failed,
    }
}

/// The notes whose contents a link's intents need: the original of a copy to make, both
/// notes of a pair that changed (or is forced); shared notes only.
fn contents_wanted(w: &LinkWork<'_>) -> Vec<(Side, String)> {
    let notes = |side: Side| match side {
        Side::Partner => &w.partner,
        Side::Hubspot => &w.hubspot,
    };
    let shared = |side: Side, id: Option<&str>| {
        id.filter(|id| notes(side).get(*id).is_some_and(|n| n.shared))
            .map(|id| (side, id.to_owned()))
    };
    let mut out = Vec::new();
    for i in &w.intents {
        match i {
            Intent::Create { pair, from } => {
                out.extend(shared(*from, messages::id_on(pair, *from)))
            }
            Intent::Sync { pair, .. } => {
                let (pid, hid) = (
                    messages::id_on(pair, Side::Partner),
                    messages::id_on(pair, Side::Hubspot),
                );
                let (Some(pn), Some(hn)) = (
                    pid.and_then(|i| w.partner.get(i)),
                    hid.and_then(|i| w.hubspot.get(i)),
                ) else {
                    continue;
                };
                if messages::changed(pair, pn, hn, w.force) {
                    out.extend(shared(Side::Partner, pid));
                    out.extend(shared(Side::Hubspot, hid));
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link {
            id: 1,
            partner: "partner-a".into(),
            partner_deal_id: "p1".into(),
            hubspot_deal_id: "h1".into(),
            deal_type: "channel".into(),
            state: store::LinkState::Active,
            created_at: 0,
        }
    }

    fn head(id: &str, shared: bool, ms: i64) -> NoteHead {
        NoteHead {
            id: id.into(),
            shared,
            ms: Some(ms),
            ..Default::default()
        }
    }

    /// A portal read with `notes` on `deal`, and `read` already holding contents.
    fn portal(deal: &str, notes: &[NoteHead], read: &[&str]) -> PortalRead {
        Ok((
            Marking::Property { unique: true },
            PortalNotes {
                assoc: HashMap::from([(
                    deal.to_owned(),
                    notes.iter().map(|n| n.id.clone()).collect(),
                )]),
                heads: notes.iter().map(|n| (n.id.clone(), n.clone())).collect(),
                contents: read
                    .iter()
                    .map(|id| ((*id).to_owned(), Content::default()))
                    .collect(),
                ..Default::default()
            },
        ))
    }

    fn recorded(pairs: Vec<ObjectLink>) -> Recorded {
        Recorded {
            pairs: HashMap::from([(1, pairs)]),
            counts: HashMap::from([("h1".to_owned(), 1)]),
            siblings: HashMap::from([("h1".to_owned(), vec![1])]),
        }
    }

    #[test]
    fn a_new_shared_note_wants_its_contents_and_a_private_one_nothing() {
        let l = link();
        let notes = HashMap::from([
            (
                "partner-a".to_owned(),
                portal("p1", &[head("n1", true, 5), head("n2", false, 5)], &[]),
            ),
            ("hubspot".to_owned(), portal("h1", &[], &[])),
        ]);
        let plan = plan_messages(&[&l], "hubspot", &recorded(vec![]), &notes, &HashSet::new());
        assert!(plan.failed.is_empty());
        assert_eq!(
            plan.wanted,
            HashMap::from([("partner-a".to_owned(), vec!["n1".to_owned()])])
        );
        assert!(matches!(
            plan.work[0].intents[..],
            [Intent::Create {
                from: Side::Partner,
                ..
            }]
        ));
    }

    #[test]
    fn a_pair_is_read_only_when_it_changed_or_is_forced_and_never_twice() {
        let l = link();
        let pair = ObjectLink {
            kind: "message".into(),
            origin: "partner-a:n1".into(),
            partner_object_id: Some("n1".into()),
            hubspot_object_id: Some("c1".into()),
            state: store::ObjectState::Active,
            partner_ms: Some(5),
            hubspot_ms: Some(7),
            ..Default::default()
        };
        let notes = |p_ms, read: &[&'static str]| {
            HashMap::from([
                (
                    "partner-a".to_owned(),
                    portal("p1", &[head("n1", true, p_ms)], read),
                ),
                (
                    "hubspot".to_owned(),
                    portal("h1", &[head("c1", true, 7)], &[]),
                ),
            ])
        };
        let rec = recorded(vec![pair]);
        let unchanged = plan_messages(&[&l], "hubspot", &rec, &notes(5, &[]), &HashSet::new());
        assert!(unchanged.wanted.is_empty(), "{:?}", unchanged.wanted);
        let forced = plan_messages(&[&l], "hubspot", &rec, &notes(5, &[]), &HashSet::from([1]));
        assert_eq!(forced.wanted.values().map(Vec::len).sum::<usize>(), 2);
        // Changed on the partner's side, whose body step 1 already read (tag marking).
        let changed = plan_messages(&[&l], "hubspot", &rec, &notes(6, &["n1"]), &HashSet::new());
        assert_eq!(
            changed.wanted,
            HashMap::from([("hubspot".to_owned(), vec!["c1".to_owned()])])
        );
    }

    #[test]
    fn a_portal_that_could_not_be_read_fails_its_links_only() {
        let l = link();
        let err = CrmError::Timeout {
            portal: "partner-a".into(),
            call: "read".into(),
        };
        let notes = HashMap::from([
            ("partner-a".to_owned(), Err(err)),
            ("hubspot".to_owned(), portal("h1", &[], &[])),
        ]);
        let plan = plan_messages(&[&l], "hubspot", &recorded(vec![]), &notes, &HashSet::new());
        assert!(plan.work.is_empty());
        assert!(matches!(plan.failed.get(&1), Some(Err(e)) if e.error.contains("timed out")));
    }
}
