//! Shared messages, comments and attachments: the second half of a link's job.
//!
//! After the deal's fields, a job brings the link's messages in step. A note associated with a
//! linked deal is **shared** only when its `dealsync_visibility` is `shared`; every other note
//! is private and only its deciding properties (visibility, origin, reply-to, target) are ever
//! read — never its body or attachments, so a private body cannot reach the store, a log, a
//! dead letter or the other portal.
//!
//! The steps, batched across the job's links where HubSpot allows it:
//! 1. **Read what decides**: the notes of each deal (associations v4 batch read) and their
//!    deciding properties (batch read).
//! 2. **Decide per message** ([`intend`], pure): each original shared note and each recorded
//!    pair (object link, keyed by the original's `portal:id`) becomes one [`Intent`] — create a
//!    copy, bring a pair in step, remove a copy, or only record a state.
//! 3. **Read contents** only of notes that are shared and new or changed since the pair was last
//!    synced (`hs_lastmodifieddate` against the object link), or of every pair on a sweep.
//! 4. **Write, per link**: files first (streamed portal to portal), then copies by batch upsert
//!    on the unique `dealsync_origin` (so a retry after a crash finds the earlier copy instead
//!    of making a second one) and their deal associations, in waves so that a comment is
//!    created after the message it replies to; then body and attachment updates; then removals.
//! 5. The object links are returned for the job's commit (one transaction with the shadows).
//!
//! Rules, decided here and documented in the README:
//! - The body of a pair syncs both ways under `latest_wins`, compared through a SHA-256 shadow
//!   (the store holds the hash, never the text). Both sides edited: the later edit wins and a
//!   conflict is recorded.
//! - Deleting either note of a pair (or removing it from the deal) deletes the other: a shared
//!   message is one message seen in two CRMs. Turning the **original** private removes the copy;
//!   turning the **copy** private detaches the pair (the copy stays, as that side's private
//!   note, and the original is left alone).
//! - A copy being made when a run failed or the process died (`creating`) is looked up by its
//!   origin before it is written again: one a person deleted meanwhile stays deleted and its
//!   original is deleted, as for any pair (see `recover_creating`).
//! - A HubSpot-side message reaches a partner when its thread names that partner (its own
//!   `dealsync_target`, or the message it replies to), or when the HubSpot deal has one link
//!   only. Otherwise it goes nowhere and the pair is recorded as `needs_target` (SPEC §1.2).
//! - Attachments: a file on one side's message that is not yet linked is copied; a linked file
//!   that leaves its message (or is deleted, checked on sweeps) is deleted on the other side
//!   too, with the other message's `hs_attachment_ids` updated. A file over the size limit or
//!   unreadable is skipped, recorded with the reason, and not tried again.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::marking::{self, Marking, MarkingChoice, Tag};
use crate::crm::{Client, CrmError, ErrorClass, FileCopy, Record};
use crate::properties::{ORIGIN, REPLY_TO, TARGET, VISIBILITY};
use crate::rules::{self, ConflictPolicy, Direction, Observed, Rule};
use crate::store::{ConflictRecord, Link, ObjectLink, ObjectState, Side};

/// How messages sync.
#[derive(Debug, Clone)]
pub struct MessageSettings {
    /// Whether jobs sync shared messages at all.
    pub enabled: bool,
    /// Attachments larger than this are skipped (and shown in status).
    pub max_attachment_bytes: u64,
    /// The file-manager folder copies of attachments go to.
    pub folder: String,
    /// New copies one link's job makes before it commits and runs again: bounds the work a
    /// failure or a crash can make the next run repeat (uploads are not idempotent).
    pub per_job: usize,
    /// `[messages] marking`, before it is resolved per portal.
    pub marking: MarkingChoice,
    /// The tag of tag marking.
    pub tag: Tag,
    /// How long HubSpot's search may lag behind a note's last change: a note on a tag-mode
    /// portal that search does not (yet) show as holding the tag is looked at again until it
    /// is this old.
    pub search_settle: Duration,
}

impl Default for MessageSettings {
    fn default() -> Self {
        MessageSettings {
            enabled: true,
            max_attachment_bytes: 100 * 1024 * 1024,
            folder: "/dealsync".into(),
            per_job: 100,
            marking: MarkingChoice::Auto,
            tag: Tag::default(),
            search_settle: Duration::from_secs(60),
        }
    }
}

/// The properties that decide whether and where a note goes. Never the body.
pub fn decide_props() -> Vec<String> {
    [VISIBILITY, ORIGIN, REPLY_TO, TARGET, "hs_lastmodifieddate"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// The properties read from shared notes only.
pub fn content_props() -> Vec<String> {
    let mut v = decide_props();
    v.extend(
        ["hs_note_body", "hs_attachment_ids", "hs_timestamp"]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    v
}

/// The properties read from notes under tag marking (the portal has no custom ones).
fn content_props_tag() -> Vec<String> {
    [
        "hs_note_body",
        "hs_attachment_ids",
        "hs_timestamp",
        "hs_lastmodifieddate",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// A note as the decision sees it: deciding properties only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoteHead {
    pub id: String,
    pub shared: bool,
    pub origin: Option<String>,
    pub reply_to: Option<String>,
    pub target: Option<String>,
    pub ms: Option<i64>,
}

impl NoteHead {
    pub fn from_record(r: &Record) -> NoteHead {
        NoteHead {
            id: r.id.clone(),
            shared: r.get(VISIBILITY) == Some("shared"),
            origin: r.get(ORIGIN).map(str::to_owned),
            reply_to: r.get(REPLY_TO).map(str::to_owned),
            target: r.get(TARGET).map(str::to_owned),
            ms: r.last_modified_ms(),
        }
    }
}

/// A shared note's content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content {
    pub body: String,
    pub attachments: Vec<String>,
    pub timestamp: Option<String>,
    /// `hs_lastmodifieddate` (any property).
    pub ms: Option<i64>,
    /// When the body itself last changed (its property history), for `latest_wins`.
    pub body_at: Option<i64>,
    pub shared: bool,
    /// `dealsync_target` as of this read (HubSpot side), or the target a tag names.
    pub target: Option<String>,
    /// The origin a tag-mode copy's footer names.
    pub reference: Option<String>,
}

impl Content {
    /// A note's content as its portal marks it: under tag marking the body is the message
    /// text (tag, target and footer taken off) and `shared` and `target` come from it.
    pub fn from_record(r: &Record, marking: Marking, tag: &Tag) -> Content {
        let body = r.get("hs_note_body").unwrap_or_default();
        let (body, shared, target, reference) = match marking {
            Marking::Property { .. } => (
                body.to_owned(),
                r.get(VISIBILITY) == Some("shared"),
                r.get(TARGET).map(str::to_owned),
                None,
            ),
            Marking::Tag => {
                let p = marking::parse(body, tag);
                (p.text, p.shared, p.target, p.reference)
            }
        };
        Content {
            body,
            attachments: split_ids(r.get("hs_attachment_ids").unwrap_or_default()),
            timestamp: r.get("hs_timestamp").map(str::to_owned),
            ms: r.last_modified_ms(),
            body_at: r
                .changed_at
                .get("hs_note_body")
                .copied()
                .or_else(|| r.last_modified_ms()),
            shared,
            target,
            reference,
        }
    }
}

/// What the store knows of one note of a portal: it belongs to a recorded pair.
#[derive(Debug, Clone, Default)]
pub struct KnownNote {
    /// The note's `hs_lastmodifieddate` when the pair was last synced.
    pub ms: Option<i64>,
    /// The pair is active (both notes shared when last synced).
    pub active: bool,
    /// The pair's origin when this note is the copy.
    pub copy_of: Option<String>,
}

/// One portal's notes on a batch's deals, as the decision needs them.
#[derive(Debug, Default)]
pub struct PortalNotes {
    /// Note ids per deal id.
    pub assoc: HashMap<String, Vec<String>>,
    pub heads: HashMap<String, NoteHead>,
    /// Contents already read (tag marking reads bodies to decide).
    pub contents: HashMap<String, Content>,
    /// Notes search may not show yet: not known to hold the tag, changed within the search
    /// settle time. When the last of them is settled (ms); until then a `creating` copy is
    /// not made again (it may be one of them) and the job looks again.
    pub unsettled_until: Option<i64>,
    /// Bodies read to decide (tag marking), counted for the benchmark.
    pub bodies_read: usize,
}

/// Reads a portal's notes on `deals`: associations, then what decides.
///
/// Property marking reads the deciding properties of every note (never a body). Tag marking
/// must see the body's start, and reads as few bodies as it can: the notes the store knows
/// (pairs) only when they changed since their pair was synced (or `force`), and of the others
/// only those HubSpot's search returns for the tag's token (`CONTAINS_TOKEN`, the ids in
/// `IN`). A private note without the tag is never fetched; a false candidate's body is tested
/// and dropped with the read.
pub async fn read_notes(
    client: &Client,
    marking: Marking,
    settings: &MessageSettings,
    deals: &[String],
    known: &HashMap<String, KnownNote>,
    force: bool,
) -> Result<PortalNotes, CrmError> {
    let assoc = client.associations("deals", "notes", deals).await?;
    let ids = super::unique(assoc.values().flatten().cloned());
    if !marking.is_tag() {
        let heads = client
            .batch_read("notes", &ids, &decide_props(), false)
            .await?
            .iter()
            .map(|r| (r.id.clone(), NoteHead::from_record(r)))
            .collect();
        return Ok(PortalNotes {
            assoc,
            heads,
            ..Default::default()
        });
    }
    let ms: HashMap<String, Option<i64>> = client
        .batch_read("notes", &ids, &["hs_lastmodifieddate".to_owned()], false)
        .await?
        .iter()
        .map(|r| (r.id.clone(), r.last_modified_ms()))
        .collect();
    let (mut read, mut unknown) = (Vec::new(), Vec::new());
    for (id, m) in &ms {
        match known.get(id) {
            Some(k) if !force && k.active && k.ms == *m => {}
            Some(_) => read.push(id.clone()),
            None => unknown.push(id.clone()),
        }
    }
    unknown.sort();
    let candidates = tag_candidates(client, &settings.tag, &unknown).await?;
    read.extend(candidates.iter().cloned());
    read.sort();
    let contents = read_contents(client, marking, settings, &read).await?;
    let settle = settings.search_settle.as_millis() as i64;
    let now = crate::store::now_ms();
    let unsettled_until = unknown
        .iter()
        .filter(|id| !candidates.contains(*id))
        .filter_map(|id| ms.get(id).copied().flatten())
        .map(|m| m + settle)
        .filter(|until| *until > now)
        .max();
    let heads = ms
        .iter()
        .map(|(id, m)| {
            let k = known.get(id);
            let head = match contents.get(id) {
                Some(c) => NoteHead {
                    id: id.clone(),
                    shared: c.shared,
                    origin: k
                        .and_then(|k| k.copy_of.clone())
                        .or_else(|| c.reference.clone()),
                    reply_to: None,
                    target: c.target.clone(),
                    ms: *m,
                },
                // Known, unchanged and active: shared as when it was synced.
                None => NoteHead {
                    id: id.clone(),
                    shared: k.is_some(),
                    origin: k.and_then(|k| k.copy_of.clone()),
                    reply_to: None,
                    target: None,
                    ms: *m,
                },
            };
            (id.clone(), head)
        })
        .collect();
    Ok(PortalNotes {
        assoc,
        heads,
        bodies_read: contents.len(),
        contents,
        unsettled_until,
    })
}

/// Reads notes' contents (with the body's change time, for `latest_wins`).
pub async fn read_contents(
    client: &Client,
    marking: Marking,
    settings: &MessageSettings,
    ids: &[String],
) -> Result<HashMap<String, Content>, CrmError> {
    let props = match marking {
        Marking::Property { .. } => content_props(),
        Marking::Tag => content_props_tag(),
    };
    Ok(client
        .batch_read_with_history("notes", ids, &props, &["hs_note_body".to_owned()])
        .await?
        .iter()
        .map(|r| {
            (
                r.id.clone(),
                Content::from_record(r, marking, &settings.tag),
            )
        })
        .collect())
}

/// Each portal's marking, resolved on first use after start (one read of its note
/// properties, [`resolve_marking`]) and remembered: a portal unreachable at start is resolved
/// once it answers. Running `setup` later takes effect at the next start.
pub struct Markings {
    choice: MarkingChoice,
    tag: Tag,
    cache: parking_lot::Mutex<HashMap<String, Marking>>,
}

impl Markings {
    pub fn new(settings: &MessageSettings) -> Markings {
        Markings {
            choice: settings.marking,
            tag: settings.tag.clone(),
            cache: parking_lot::Mutex::default(),
        }
    }

    pub async fn of(&self, client: &Client) -> Result<Marking, CrmError> {
        if let Some(m) = self.cache.lock().get(client.portal()) {
            return Ok(*m);
        }
        let m = resolve_marking(self.choice, client).await?;
        tracing::info!(portal = %client.portal(), marking = m.label(), "shared messages in this portal are marked by {}", m.label());
        self.cache.lock().insert(client.portal().to_owned(), m);
        Ok(m)
    }

    /// The properties of a new shared message dealsync writes on the HubSpot side for one
    /// partner (a quote request, an invitation's welcome note); message sync carries it over.
    pub async fn shared_note(
        &self,
        hubspot: &Client,
        text: &str,
        partner: &str,
    ) -> Result<Props, CrmError> {
        let mut note = Props::new();
        note.insert(
            "hs_timestamp".into(),
            Value::String(crate::time::iso(crate::store::now_ms())),
        );
        match self.of(hubspot).await? {
            Marking::Property { .. } => {
                note.insert("hs_note_body".into(), Value::String(text.to_owned()));
                note.insert(VISIBILITY.into(), "shared".into());
                note.insert(TARGET.into(), partner.into());
            }
            Marking::Tag => {
                let body = marking::render(text, &self.tag, Some(partner), None);
                note.insert("hs_note_body".into(), Value::String(body));
            }
        }
        Ok(note)
    }
}

/// A portal's marking: `tag` and `property` as configured; `auto` is property where
/// dealsync's note properties exist (setup makes them where the portal allows custom note
/// properties), else tag. One read of the portal's note properties.
pub async fn resolve_marking(choice: MarkingChoice, client: &Client) -> Result<Marking, CrmError> {
    if choice == MarkingChoice::Tag {
        return Ok(Marking::Tag);
    }
    let props = client.property_names("notes").await?;
    let has = |name: &str| props.iter().any(|(n, _)| n == name);
    let unique = props.iter().any(|(n, u)| n == ORIGIN && *u);
    Ok(match choice {
        MarkingChoice::Auto if !has(VISIBILITY) => Marking::Tag,
        _ => Marking::Property { unique },
    })
}

/// The notes of `side` (in `portal`) that recorded pairs name, by id.
pub fn known_notes<'a>(
    side: Side,
    portal: &str,
    pairs: impl Iterator<Item = &'a ObjectLink>,
) -> HashMap<String, KnownNote> {
    let mut out = HashMap::new();
    for o in pairs.filter(|o| o.kind == "message") {
        let Some(id) = id_on(o, side) else { continue };
        let copy_of = (o.origin != origin_key(portal, id)).then(|| o.origin.clone());
        out.insert(
            id.to_owned(),
            KnownNote {
                ms: match side {
                    Side::Partner => o.partner_ms,
                    Side::Hubspot => o.hubspot_ms,
                },
                active: o.state == ObjectState::Active,
                copy_of,
            },
        );
    }
    out
}

/// The notes among `ids` HubSpot's search finds holding the tag's token, 100 ids a call.
async fn tag_candidates(
    client: &Client,
    tag: &Tag,
    ids: &[String],
) -> Result<HashSet<String>, CrmError> {
    let mut out = HashSet::new();
    for chunk in ids.chunks(100) {
        let body = serde_json::json!({
            "filterGroups": [{ "filters": [
                { "propertyName": "hs_object_id", "operator": "IN", "values": chunk },
                { "propertyName": "hs_note_body", "operator": "CONTAINS_TOKEN", "value": tag.search_value() },
            ]}],
            "properties": ["hs_object_id"],
            "limit": 200,
        });
        let page = client.search("notes", &body).await?;
        out.extend(page.records.into_iter().map(|r| r.id));
    }
    Ok(out)
}

pub fn split_ids(s: &str) -> Vec<String> {
    s.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The SHA-256 of a body, hex: what the store keeps as a message's shadow.
pub fn body_hash(body: &str) -> String {
    let d = Sha256::digest(body.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// `portal:id`.
pub fn origin_key(portal: &str, id: &str) -> String {
    format!("{portal}:{id}")
}

fn other(side: Side) -> Side {
    match side {
        Side::Partner => Side::Hubspot,
        Side::Hubspot => Side::Partner,
    }
}

pub fn id_on(o: &ObjectLink, side: Side) -> Option<&str> {
    match side {
        Side::Partner => o.partner_object_id.as_deref(),
        Side::Hubspot => o.hubspot_object_id.as_deref(),
    }
}

fn set_id(o: &mut ObjectLink, side: Side, id: Option<String>) {
    match side {
        Side::Partner => o.partner_object_id = id,
        Side::Hubspot => o.hubspot_object_id = id,
    }
}

fn set_ms(o: &mut ObjectLink, side: Side, ms: Option<i64>) {
    match side {
        Side::Partner => o.partner_ms = ms,
        Side::Hubspot => o.hubspot_ms = ms,
    }
}

/// Where a HubSpot-side message may go, for one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// To this link's partner.
    Here,
    /// To another partner only.
    Elsewhere,
    /// Nowhere until someone names its target partner.
    NeedsTarget,
}

/// The partner a HubSpot-side note's thread belongs to: its own target, the partner it was
/// copied from, or (for a comment) its parent's. `hubspot` holds the HubSpot deal's notes.
pub fn thread_partner(
    note: &NoteHead,
    hubspot: &HashMap<String, NoteHead>,
    hubspot_portal: &str,
) -> Option<String> {
    let mut cur = note;
    // Bounded: a reply loop (a -> b -> a) must not hang a worker.
    for _ in 0..32 {
        if let Some(t) = &cur.target {
            return Some(t.clone());
        }
        if let Some((portal, _)) = cur.origin.as_deref().and_then(|o| o.split_once(':')) {
            if portal != hubspot_portal {
                return Some(portal.to_owned());
            }
        }
        cur = hubspot.get(cur.reply_to.as_deref()?)?;
    }
    None
}

/// The ids of a note's thread: itself, then what it replies to, up to the first message.
fn thread_ids(note: &NoteHead, hubspot: &HashMap<String, NoteHead>) -> Vec<String> {
    let mut out = vec![note.id.clone()];
    let mut cur = note;
    // Bounded, like `thread_partner`.
    for _ in 0..32 {
        match cur.reply_to.as_deref().and_then(|r| hubspot.get(r)) {
            Some(parent) => {
                out.push(parent.id.clone());
                cur = parent;
            }
            None => break,
        }
    }
    out
}

/// Where a HubSpot-side original may go for the link of `partner`, given how many active links
/// the HubSpot deal has (isolation, SPEC §1.2).
pub fn reach(thread_partner: Option<&str>, partner: &str, links_of_deal: usize) -> Reach {
    match thread_partner {
        Some(p) if p == partner => Reach::Here,
        Some(_) => Reach::Elsewhere,
        None if links_of_deal <= 1 => Reach::Here,
        None => Reach::NeedsTarget,
    }
}

/// What one message of one link needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Copy the original (on `from`) to the other side.
    Create { pair: ObjectLink, from: Side },
    /// Both notes exist and are shared: bring body and attachments in step.
    Sync { pair: ObjectLink, from: Side },
    /// Archive the note on `side` and record the pair with its new state.
    Remove {
        pair: ObjectLink,
        side: Side,
        id: String,
    },
    /// A copy may have been written before a crash without reaching the deal (the upsert went
    /// through, the association did not): look it up by its origin on `side` and archive it.
    RemoveByOrigin { pair: ObjectLink, side: Side },
    /// Nothing to write; record the pair as it now is (unchanged pairs are not returned).
    Record(ObjectLink),
}

/// What the HubSpot deal's other links know of its notes (isolation between the partners of
/// one HubSpot deal).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DealContext {
    /// Active links of the HubSpot deal, this one included.
    pub links: usize,
    /// HubSpot notes other links recorded as their copies (of their partner's messages).
    pub other_copies: HashSet<String>,
    /// Untargeted HubSpot originals another link shared with its partner: that partner's
    /// thread, never news for this one.
    pub other_originals: HashSet<String>,
}

impl DealContext {
    /// From every link's recorded messages on the HubSpot deal (`pairs` by link id).
    pub fn new<'a>(
        link_id: i64,
        links: usize,
        hubspot_portal: &str,
        pairs: impl IntoIterator<Item = (i64, &'a ObjectLink)>,
    ) -> DealContext {
        let mut c = DealContext {
            links,
            ..Default::default()
        };
        for (id, o) in pairs {
            if id == link_id || o.kind != "message" {
                continue;
            }
            let Some(hid) = o.hubspot_object_id.clone() else {
                continue;
            };
            if o.origin.split_once(':').map(|(p, _)| p) == Some(hubspot_portal) {
                if !matches!(
                    o.state,
                    ObjectState::NeedsTarget | ObjectState::Elsewhere | ObjectState::New
                ) {
                    c.other_originals.insert(hid);
                }
            } else {
                c.other_copies.insert(hid);
            }
        }
        c
    }
}

/// Decides, from deciding properties only, what each message of one link needs. `partner`
/// and `hubspot` are the notes of the link's two deals; `pairs` the link's recorded messages.
///
/// A copy is found by its `dealsync_origin` on the other side, not only by the id the store
/// recorded: a copy written just before a crash (or whose job failed after the write) is in
/// the portal but not in the store. Such a copy is adopted (rewritten by the upsert) while its
/// original is shared, and deleted once its original is gone or private.
pub fn intend(
    link: &Link,
    hubspot_portal: &str,
    deal: &DealContext,
    partner: &HashMap<String, NoteHead>,
    hubspot: &HashMap<String, NoteHead>,
    pairs: &[ObjectLink],
) -> Vec<Intent> {
    let notes = |side: Side| match side {
        Side::Partner => partner,
        Side::Hubspot => hubspot,
    };
    let portal_of = |side: Side| match side {
        Side::Partner => link.partner.as_str(),
        Side::Hubspot => hubspot_portal,
    };
    let mut by_origin: HashMap<&str, &ObjectLink> = pairs
        .iter()
        .filter(|o| o.kind == "message")
        .map(|o| (o.origin.as_str(), o))
        .collect();
    // Copies on each side that belong to this link: their origin is in the other portal.
    let mut copies: HashMap<(Side, &str), &NoteHead> = HashMap::new();
    let mut keys: Vec<(String, Side, String)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut add = |key: &str, keys: &mut Vec<(String, Side, String)>| {
        let Some((portal, id)) = key.split_once(':') else {
            return;
        };
        let side = if portal == hubspot_portal {
            Side::Hubspot
        } else if portal == link.partner {
            Side::Partner
        } else {
            return;
        };
        if seen.insert(key.to_owned()) {
            keys.push((key.to_owned(), side, id.to_owned()));
        }
    };
    for side in [Side::Partner, Side::Hubspot] {
        let mut list: Vec<&NoteHead> = notes(side).values().collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        // A copy the store recorded is never an original, even if someone cleared its
        // `dealsync_origin`: it would be copied back as a second message otherwise.
        let recorded_copy = |id: &str| {
            pairs.iter().any(|o| {
                o.kind == "message"
                    && id_on(o, side) == Some(id)
                    && o.origin.split_once(':').map(|(p, _)| p) == Some(portal_of(other(side)))
            })
        };
        // Nor is another link's copy on the HubSpot deal (its partner's message).
        let others_copy = |id: &str| side == Side::Hubspot && deal.other_copies.contains(id);
        for n in &list {
            if n.origin.is_none() && n.shared && !recorded_copy(&n.id) && !others_copy(&n.id) {
                add(&origin_key(portal_of(side), &n.id), &mut keys);
            }
        }
        for n in list {
            let Some(o) = n.origin.as_deref() else {
                continue;
            };
            if o.split_once(':').map(|(p, _)| p) == Some(portal_of(other(side))) {
                copies.insert((side, o), n);
                add(o, &mut keys);
            }
        }
    }
    for o in pairs.iter().filter(|o| o.kind == "message") {
        add(&o.origin, &mut keys);
    }

    let mut out = Vec::new();
    for (key, from, orig_id) in keys {
        let to = other(from);
        let recorded = by_origin.remove(key.as_str());
        let mut pair = recorded.cloned().unwrap_or_else(|| ObjectLink {
            kind: "message".into(),
            origin: key.clone(),
            state: ObjectState::New,
            ..Default::default()
        });
        set_id(&mut pair, from, Some(orig_id.clone()));
        let was_active = pair.state == ObjectState::Active;
        let orig = notes(from).get(&orig_id);
        // A copy found by origin counts only when this link knows the pair or the original is
        // on this link's deal: a copy also associated with another deal of the same partner
        // belongs to that deal's link, not this one.
        let copy = copies
            .get(&(to, key.as_str()))
            .copied()
            .or_else(|| id_on(&pair, to).and_then(|id| notes(to).get(id)))
            .filter(|_| recorded.is_some() || orig.is_some());
        if let Some(c) = copy {
            set_id(&mut pair, to, Some(c.id.clone()));
        }
        let with_state = |mut p: ObjectLink, state: ObjectState, note: &str| {
            p.state = state;
            p.note = Some(note.to_owned());
            p
        };
        // The original is gone, private, or not for this partner: its copy goes — unless the
        // copy was made private on its side (detached): it is that side's own note now.
        let retire = |p: ObjectLink, state: ObjectState, note: &str| match copy {
            _ if p.state == ObjectState::Detached => None,
            Some(c) if !c.shared => Some(Intent::Record(with_state(
                p,
                ObjectState::Detached,
                "the copy was made private; the pair no longer syncs",
            ))),
            Some(c) => Some(Intent::Remove {
                pair: with_state(p, state, note),
                side: to,
                id: c.id.clone(),
            }),
            None if p.state == ObjectState::Creating => Some(Intent::RemoveByOrigin {
                pair: with_state(p, state, note),
                side: to,
            }),
            None if recorded.is_some() && p.state != state => {
                Some(Intent::Record(with_state(p, state, note)))
            }
            None => None,
        };
        let intent = match orig {
            None => retire(pair, ObjectState::Removed, "the original was deleted"),
            Some(o) if !o.shared => {
                retire(pair, ObjectState::Unshared, "the original was made private")
            }
            Some(o) => {
                let reachable = match from {
                    Side::Partner => Reach::Here,
                    Side::Hubspot => match thread_partner(o, hubspot, hubspot_portal) {
                        Some(p) => reach(Some(&p), &link.partner, deal.links),
                        // An untargeted message is decided once, by the partners the deal had
                        // when it was first seen: a partner joining later must not pull back
                        // a copy already shared, nor one leaving send out a message that was
                        // held for a target. Naming a target decides it again.
                        None if was_active => Reach::Here,
                        None if pair.state == ObjectState::NeedsTarget => Reach::NeedsTarget,
                        // Its thread was shared with another of the deal's partners.
                        None if thread_ids(o, hubspot)
                            .iter()
                            .any(|id| deal.other_originals.contains(id)) =>
                        {
                            Reach::NeedsTarget
                        }
                        None => reach(None, &link.partner, deal.links),
                    },
                };
                match (reachable, copy) {
                    (Reach::NeedsTarget, None) if pair.state != ObjectState::NeedsTarget => {
                        Some(Intent::Record(with_state(
                            pair,
                            ObjectState::NeedsTarget,
                            "the HubSpot deal has several partners: set dealsync_target on the message to the partner it is for",
                        )))
                    }
                    (Reach::NeedsTarget, None) => None,
                    (Reach::NeedsTarget | Reach::Elsewhere, _) => {
                        retire(pair, ObjectState::Elsewhere, "the message is for another partner")
                    }
                    (Reach::Here, _) if pair.state == ObjectState::Detached => None,
                    (Reach::Here, Some(c)) if !c.shared => {
                        Some(Intent::Record(with_state(
                            pair,
                            ObjectState::Detached,
                            "the copy was made private; the pair no longer syncs",
                        )))
                    }
                    (Reach::Here, Some(_)) if was_active => Some(Intent::Sync { pair, from }),
                    // A copy the store does not know (written before a crash): rewritten.
                    (Reach::Here, Some(_)) => Some(Intent::Create { pair, from }),
                    (Reach::Here, None) if was_active => Some(Intent::Remove {
                        pair: with_state(pair, ObjectState::Removed, "the copy was deleted"),
                        side: from,
                        id: orig_id.clone(),
                    }),
                    (Reach::Here, None) => Some(Intent::Create { pair, from }),
                }
            }
        };
        out.extend(intent);
    }
    out
}

/// Whether a pair's notes changed since it was last synced (or are to be checked anyway).
pub fn changed(pair: &ObjectLink, partner: &NoteHead, hubspot: &NoteHead, force: bool) -> bool {
    force
        || pair.state != ObjectState::Active
        || pair.partner_ms != partner.ms
        || pair.hubspot_ms != hubspot.ms
}

/// The body rule: both ways, the later edit wins.
const BODY_RULE: Rule = Rule {
    direction: Direction::Both,
    conflict: ConflictPolicy::LatestWins,
    unless_blank: false,
};

/// Decides a pair's body: `(write to partner, write to HubSpot, new shadow, conflict)`.
pub fn decide_body(
    link_id: i64,
    pair: &ObjectLink,
    partner: &Content,
    hubspot: &Content,
) -> (
    Option<String>,
    Option<String>,
    String,
    Option<ConflictRecord>,
) {
    let (hp, hh) = (body_hash(&partner.body), body_hash(&hubspot.body));
    let d = rules::decide(
        &BODY_RULE,
        pair.shadow.as_deref(),
        &Observed {
            value: Some(hp.clone()),
            changed_at: partner.body_at,
        },
        &Observed {
            value: Some(hh.clone()),
            changed_at: hubspot.body_at,
        },
    );
    let to_partner = d.write_partner.map(|_| hubspot.body.clone());
    let to_hubspot = d.write_hubspot.map(|_| partner.body.clone());
    let shadow = if to_partner.is_some() {
        hh.clone()
    } else if to_hubspot.is_some() {
        hp.clone()
    } else {
        // Equal bodies, or nothing to carry.
        hp.clone()
    };
    let conflict = d.conflict.map(|c| ConflictRecord {
        link_id,
        field: format!("message {}", pair.origin),
        // Hashes, not text: a conflict record is no place for message bodies.
        partner_value: Some(format!("body sha256:{}", &hp[..12])),
        hubspot_value: Some(format!("body sha256:{}", &hh[..12])),
        winner: format!("{:?}", c.winner).to_lowercase(),
        policy: "latest_wins".into(),
    });
    (to_partner, to_hubspot, shadow, conflict)
}

/// What happened to one link's messages.
#[derive(Debug, Default)]
pub struct MessageOutcome {
    pub objects: Vec<ObjectLink>,
    pub conflicts: Vec<ConflictRecord>,
    /// Messages copied or changed, for the job's outcome text.
    pub written: usize,
    /// A comment waiting for its parent: the job runs again later.
    pub waiting: Option<String>,
    /// More copies to make than one job makes: the job runs again at once.
    pub more: bool,
    /// Copies made in this run (what the receiving side is notified of).
    pub arrivals: Vec<Arrival>,
    /// Notes search may not show yet (tag marking): the job looks again at this time (ms).
    pub recheck_at: Option<i64>,
}

/// A copy that arrived on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    pub side: Side,
    /// A comment (a reply), not a new message.
    pub comment: bool,
    /// The copy's id on that side.
    pub id: String,
    /// When the original was last changed (ms), when known.
    pub original_ms: Option<i64>,
}

/// A failure of the message half of a job.
#[derive(Debug, Clone)]
pub struct MessageError {
    pub error: String,
    pub class: ErrorClass,
    /// File copies made before the failure: recorded anyway, so the retry reuses them
    /// instead of uploading a second copy (the files API has no idempotency key).
    pub files: Vec<ObjectLink>,
}

impl From<CrmError> for MessageError {
    fn from(e: CrmError) -> Self {
        MessageError {
            // A note or file missing now was there when the job read it: someone deleted it
            // meanwhile, and the next run decides again from what is there.
            class: if e.is_not_found() {
                ErrorClass::Transient
            } else {
                e.class()
            },
            error: e.to_string(),
            files: Vec::new(),
        }
    }
}

/// One link's side of the work: its client, deal and notes.
pub struct SideView<'a> {
    pub portal: &'a str,
    pub client: &'a Client,
    pub deal_id: &'a str,
    pub heads: &'a HashMap<String, NoteHead>,
    pub contents: &'a HashMap<String, Content>,
    pub marking: Marking,
    /// See [`PortalNotes::unsettled_until`].
    pub unsettled_until: Option<i64>,
}

impl SideView<'_> {
    /// Whether a copy here can be found by its unique origin anywhere, live or archived.
    fn finds_by_origin(&self) -> bool {
        self.marking == (Marking::Property { unique: true })
    }

    /// The body to write on this side for a message's text: under tag marking the tag (and
    /// an original's target) in front, and a copy's footer.
    fn body_for(
        &self,
        settings: &MessageSettings,
        pair: &ObjectLink,
        text: &str,
        target: Option<&str>,
        reply: bool,
    ) -> String {
        if !self.marking.is_tag() {
            return text.to_owned();
        }
        let from = pair.origin.split_once(':').map_or("", |(p, _)| p);
        if from == self.portal {
            return marking::render(text, &settings.tag, target, None);
        }
        let footer = marking::Footer {
            from,
            reference: &pair.origin,
            reply,
        };
        marking::render(text, &settings.tag, None, Some(footer))
    }
}

/// A note's properties to write.
type Props = Map<String, Value>;

/// A copy waiting to be written: the pair, the side it goes to, its properties, and (for a
/// comment) the id of its parent on the original's side.
struct PendingCopy {
    pair: ObjectLink,
    to: Side,
    props: Props,
    parent: Option<String>,
    /// The copy already exists (on the deal, or found by its unique origin): rewritten and
    /// associated instead of created.
    existing: Option<String>,
}

/// Carries out one link's intents. `recorded` are the link's object links as stored.
pub async fn execute(
    link: &Link,
    settings: &MessageSettings,
    partner: SideView<'_>,
    hubspot: SideView<'_>,
    intents: Vec<Intent>,
    recorded: &[ObjectLink],
    force: bool,
) -> Result<MessageOutcome, MessageError> {
    let mut files: Vec<ObjectLink> = recorded
        .iter()
        .filter(|o| o.kind == "file")
        .cloned()
        .collect();
    let mut file_changed: HashSet<String> = HashSet::new();
    let mut uploaded: HashSet<String> = HashSet::new();
    let run = execute_with(
        link,
        settings,
        partner,
        hubspot,
        intents,
        recorded,
        force,
        &mut files,
        &mut file_changed,
        &mut uploaded,
    )
    .await;
    match run {
        Ok(mut out) => {
            out.objects.extend(
                files
                    .into_iter()
                    .filter(|f| file_changed.contains(&f.origin)),
            );
            Ok(out)
        }
        Err(mut e) => {
            // Only the copies uploaded for messages still to be created: their retry finds
            // and attaches them. Anything else this run changed (a file added to a synced
            // message, a removal) is left as stored, or the retry would read a copy it never
            // attached as one someone removed.
            e.files = files
                .into_iter()
                .filter(|f| uploaded.contains(&f.origin) && f.state == ObjectState::Active)
                .collect();
            Err(e)
        }
    }
}

/// One link's message writes: what the intents plan (`plan_*`), then the writes in order
/// (copies in waves, updates, removals, file deletions).
struct Run<'a, 'v> {
    link: &'a Link,
    settings: &'a MessageSettings,
    views: [&'a SideView<'v>; 2],
    recorded: &'a [ObjectLink],
    force: bool,
    files: &'a mut Vec<ObjectLink>,
    file_changed: &'a mut HashSet<String>,
    uploaded: &'a mut HashSet<String>,
    /// Notes found off their deal by their unique origin (`recover_creating`).
    adopted: HashSet<String>,
    out: MessageOutcome,
    creates: Vec<PendingCopy>,
    updates: HashMap<Side, Vec<(String, Props)>>,
    update_pairs: Vec<ObjectLink>,
    removals: Vec<(ObjectLink, Side, String)>,
    files_to_delete: Vec<(Side, String)>,
}

#[allow(clippy::too_many_arguments)]
async fn execute_with(
    link: &Link,
    settings: &MessageSettings,
    partner: SideView<'_>,
    hubspot: SideView<'_>,
    intents: Vec<Intent>,
    recorded: &[ObjectLink],
    force: bool,
    files: &mut Vec<ObjectLink>,
    file_changed: &mut HashSet<String>,
    uploaded: &mut HashSet<String>,
) -> Result<MessageOutcome, MessageError> {
    let (intents, adopted) = recover_creating(intents, [&partner, &hubspot]).await?;
    let mut run = Run {
        link,
        settings,
        views: [&partner, &hubspot],
        recorded,
        force,
        files,
        file_changed,
        uploaded,
        adopted,
        out: MessageOutcome {
            recheck_at: partner.unsettled_until.max(hubspot.unsettled_until),
            ..Default::default()
        },
        creates: Vec::new(),
        updates: HashMap::new(),
        update_pairs: Vec::new(),
        removals: Vec::new(),
        files_to_delete: Vec::new(),
    };
    for intent in intents {
        match intent {
            Intent::Record(p) => run.out.objects.push(p),
            Intent::RemoveByOrigin { pair, side } => run.plan_remove_by_origin(pair, side).await?,
            Intent::Remove { pair, side, id } => run.plan_remove(pair, side, id),
            Intent::Create { pair, from } => run.plan_copy(pair, from).await?,
            Intent::Sync { pair, .. } => run.plan_sync(pair).await?,
        }
    }
    run.write_copies_in_waves().await?;
    run.write_updates().await?;
    run.write_removals().await?;
    Ok(run.out)
}

impl<'a, 'v> Run<'a, 'v> {
    fn view(&self, side: Side) -> &'a SideView<'v> {
        match side {
            Side::Partner => self.views[0],
            Side::Hubspot => self.views[1],
        }
    }

    async fn plan_remove_by_origin(
        &mut self,
        mut pair: ObjectLink,
        side: Side,
    ) -> Result<(), MessageError> {
        let v = self.view(side);
        if !v.finds_by_origin() {
            // No unique origin to look up: a copy made before a crash is on the deal (created
            // with its association), where the read would have found it — unless search
            // cannot show it yet.
            if v.unsettled_until.is_none() {
                self.out.objects.push(pair);
            }
            return Ok(());
        }
        match v
            .client
            .get_by("notes", &pair.origin, ORIGIN, &[ORIGIN.to_owned()])
            .await?
        {
            Some(r) => {
                set_id(&mut pair, side, Some(r.id.clone()));
                self.removals.push((pair, side, r.id));
            }
            None => self.out.objects.push(pair),
        }
        Ok(())
    }

    fn plan_remove(&mut self, pair: ObjectLink, side: Side, id: String) {
        // Its file copies go with it (originals stay with whoever owns them): a file pair's
        // copy is on the side its origin is not.
        let hubspot_portal = self.view(Side::Hubspot).portal;
        for f in self
            .files
            .iter_mut()
            .filter(|f| f.parent.as_deref() == Some(&pair.origin) && f.state == ObjectState::Active)
        {
            let from_hubspot = f.origin.split_once(':').map(|(p, _)| p) == Some(hubspot_portal);
            let copy_side = if from_hubspot {
                Side::Partner
            } else {
                Side::Hubspot
            };
            if let Some(fid) = id_on(f, copy_side) {
                self.files_to_delete.push((copy_side, fid.to_owned()));
            }
            f.state = ObjectState::Removed;
            f.note = Some("its message was removed".into());
            self.file_changed.insert(f.origin.clone());
        }
        self.removals.push((pair, side, id));
    }

    /// A copy to make: its body as the receiving side marks messages, its files copied now.
    async fn plan_copy(&mut self, mut pair: ObjectLink, from: Side) -> Result<(), MessageError> {
        if self.creates.len() >= self.settings.per_job.max(1) {
            self.out.more = true;
            return Ok(());
        }
        let to = other(from);
        // A copy made before a crash may be among the notes search cannot show yet
        // (where no unique origin finds it anywhere): not made again until they settle.
        if pair.state == ObjectState::Creating
            && !self.view(to).finds_by_origin()
            && self.view(to).unsettled_until.is_some()
        {
            return Ok(());
        }
        let orig_id = id_on(&pair, from).unwrap_or_default().to_owned();
        let head_target = self
            .view(from)
            .heads
            .get(&orig_id)
            .and_then(|h| h.target.as_ref());
        let Some(content) = self
            .view(from)
            .contents
            .get(&orig_id)
            .filter(|c| c.shared && c.target.as_ref() == head_target)
        else {
            // Made private or retargeted between the two reads (the decision was made
            // on the first): leave it for the next run, which decides again.
            return Ok(());
        };
        let parent = self
            .view(from)
            .heads
            .get(&orig_id)
            .and_then(|h| h.reply_to.clone());
        let body =
            self.view(to)
                .body_for(self.settings, &pair, &content.body, None, parent.is_some());
        if !marking::fits(&body) {
            pair.state = ObjectState::Skipped;
            pair.note = Some(format!(
                "too long to copy into {} with dealsync's tag and footer (HubSpot keeps {} characters); shorten the message to share it",
                self.view(to).portal,
                marking::MAX_BODY_CHARS
            ));
            self.out.objects.push(pair);
            return Ok(());
        }
        let before: HashSet<String> = self.file_changed.clone();
        let (source, dest) = (self.view(from), self.view(to));
        let copied = copy_new_files(
            self.settings,
            &pair,
            from,
            source.client,
            dest.client,
            content,
            &mut *self.files,
            &mut *self.file_changed,
            source.portal,
        )
        .await;
        self.uploaded
            .extend(self.file_changed.difference(&before).cloned());
        let attachments = copied?;
        let mut props = Map::new();
        props.insert("hs_note_body".into(), Value::String(body));
        props.insert(
            "hs_timestamp".into(),
            Value::String(
                content
                    .timestamp
                    .clone()
                    .unwrap_or_else(|| crate::time::iso(crate::store::now_ms())),
            ),
        );
        if !self.view(to).marking.is_tag() {
            props.insert(VISIBILITY.into(), Value::String("shared".into()));
            props.insert(ORIGIN.into(), Value::String(pair.origin.clone()));
        }
        props.insert(
            "hs_attachment_ids".into(),
            Value::String(attachments.join(";")),
        );
        pair.shadow = Some(body_hash(&content.body));
        set_ms(&mut pair, from, content.ms);
        let existing = id_on(&pair, to)
            .filter(|id| self.view(to).heads.contains_key(*id) || self.adopted.contains(*id))
            .map(str::to_owned);
        self.creates.push(PendingCopy {
            pair,
            to,
            props,
            parent,
            existing,
        });
        Ok(())
    }

    /// A pair's body and files brought in step, both ways.
    async fn plan_sync(&mut self, mut pair: ObjectLink) -> Result<(), MessageError> {
        let (partner, hubspot) = (self.view(Side::Partner), self.view(Side::Hubspot));
        let (pid, hid) = (
            id_on(&pair, Side::Partner).unwrap_or_default().to_owned(),
            id_on(&pair, Side::Hubspot).unwrap_or_default().to_owned(),
        );
        // Retargeted between the two reads: this link may no longer be where it goes,
        // so nothing is written; the next run decides again.
        let retargeted = hubspot.contents.get(&hid).is_some_and(|c| {
            c.target.as_ref() != hubspot.heads.get(&hid).and_then(|h| h.target.as_ref())
        });
        if retargeted {
            return Ok(());
        }
        let (Some(pc), Some(hc)) = (
            partner.contents.get(&pid).filter(|c| c.shared),
            hubspot.contents.get(&hid).filter(|c| c.shared),
        ) else {
            // Unchanged since the last sync (contents not read), or made private
            // between the reads (the next run sees it).
            if pair.state != ObjectState::Active {
                pair.state = ObjectState::Active;
                self.out.objects.push(pair);
            }
            return Ok(());
        };
        let (to_p, to_h, shadow, conflict) = decide_body(self.link.id, &pair, pc, hc);
        self.out.conflicts.extend(conflict);
        let mut writes: HashMap<Side, Map<String, Value>> = HashMap::new();
        let bodies = [
            (Side::Partner, to_p, &pc.target),
            (Side::Hubspot, to_h, &hc.target),
        ]
        .map(|(side, text, target)| {
            let body = text.map(|t| {
                self.view(side)
                    .body_for(self.settings, &pair, &t, target.as_deref(), false)
            });
            (side, body)
        });
        if bodies
            .iter()
            .any(|(_, b)| b.as_deref().is_some_and(|b| !marking::fits(b)))
        {
            // Nothing written, the pair left as it was: the edit is not lost, and
            // it syncs once the message is short enough.
            pair.note = Some(format!(
                "an edit is too long to carry dealsync's tag and footer (HubSpot keeps {} characters); shorten the message",
                marking::MAX_BODY_CHARS
            ));
            self.out.objects.push(pair);
            return Ok(());
        }
        for (side, body) in bodies {
            if let Some(b) = body {
                writes
                    .entry(side)
                    .or_default()
                    .insert("hs_note_body".into(), Value::String(b));
            }
        }
        let sets = sync_files(
            self.settings,
            &pair,
            [partner, hubspot],
            [pc, hc],
            &mut *self.files,
            &mut *self.file_changed,
            &mut self.files_to_delete,
            self.force,
        )
        .await?;
        for (side, ids) in sets {
            writes
                .entry(side)
                .or_default()
                .insert("hs_attachment_ids".into(), Value::String(ids.join(";")));
        }
        pair.shadow = Some(shadow);
        pair.state = ObjectState::Active;
        pair.note = None;
        pair.partner_ms = pc.ms;
        pair.hubspot_ms = hc.ms;
        for (side, props) in writes {
            let id = id_on(&pair, side).unwrap_or_default().to_owned();
            self.updates.entry(side).or_default().push((id, props));
        }
        self.update_pairs.push(pair);
        Ok(())
    }

    /// Copies, in waves: a comment goes once the message it replies to has its copy.
    async fn write_copies_in_waves(&mut self) -> Result<(), MessageError> {
        let known: Vec<&ObjectLink> = self
            .recorded
            .iter()
            .filter(|o| o.kind == "message" && o.state == ObjectState::Active)
            .collect();
        let mut pending = std::mem::take(&mut self.creates);
        let mut created: Vec<ObjectLink> = Vec::new();
        loop {
            let mut wave: HashMap<Side, Vec<PendingCopy>> = HashMap::new();
            let mut rest = Vec::new();
            for mut c in pending {
                let (to, from) = (c.to, other(c.to));
                if let Some(p) = &c.parent {
                    let counterpart = known
                        .iter()
                        .copied()
                        .chain(created.iter())
                        .find(|o| id_on(o, from) == Some(p.as_str()))
                        .and_then(|o| id_on(o, to).map(str::to_owned));
                    match counterpart {
                        // Under tag marking the reply is said in the copy's footer.
                        Some(id) if !self.view(to).marking.is_tag() => {
                            c.props.insert(REPLY_TO.into(), Value::String(id));
                        }
                        Some(_) => {}
                        None => {
                            rest.push(c);
                            continue;
                        }
                    }
                }
                wave.entry(to).or_default().push(c);
            }
            if wave.is_empty() {
                pending = rest;
                break;
            }
            for (to, items) in wave {
                for (c, id, ms) in write_copies(self.view(to), items, &self.settings.tag).await? {
                    self.out.written += 1;
                    created.push(self.arrived(c.pair, to, id, ms, c.parent.is_some()));
                }
            }
            pending = rest;
        }
        // A run that made no copy at all has nothing to come back for at once (replies waiting
        // for parents must not spin the job); otherwise a parent may simply be in the next run.
        if created.is_empty() {
            self.out.more = false;
        }
        if let Some(c) = pending.first().filter(|_| !self.out.more) {
            self.out.waiting = Some(format!(
                "comment {} replies to message {}, which is not a shared message synced on this deal yet; it waits for its parent",
                c.pair.origin,
                c.parent.as_deref().unwrap_or("?")
            ));
        }
        self.out.objects.extend(created);
        Ok(())
    }

    /// A copy written on `to`: the pair as it now is, and the arrival to notify.
    fn arrived(
        &mut self,
        mut pair: ObjectLink,
        to: Side,
        id: String,
        ms: Option<i64>,
        comment: bool,
    ) -> ObjectLink {
        set_id(&mut pair, to, Some(id.clone()));
        set_ms(&mut pair, to, ms);
        self.out.arrivals.push(Arrival {
            side: to,
            comment,
            id,
            original_ms: match other(to) {
                Side::Partner => pair.partner_ms,
                Side::Hubspot => pair.hubspot_ms,
            },
        });
        pair.state = ObjectState::Active;
        pair.note = None;
        pair
    }

    /// Body and attachment updates.
    async fn write_updates(&mut self) -> Result<(), MessageError> {
        for (side, list) in std::mem::take(&mut self.updates) {
            if list.is_empty() {
                continue;
            }
            let r = self.view(side).client.batch_update("notes", &list).await;
            if let Some((_, e)) = r.failed.into_iter().next() {
                return Err(e.into());
            }
            for rec in r.written {
                if let Some(p) = self
                    .update_pairs
                    .iter_mut()
                    .find(|p| id_on(p, side) == Some(rec.id.as_str()))
                {
                    set_ms(p, side, rec.last_modified_ms());
                }
            }
            self.out.written += list.len();
        }
        self.out
            .objects
            .extend(std::mem::take(&mut self.update_pairs));
        Ok(())
    }

    /// Removals last: a failure above leaves nothing half-deleted.
    async fn write_removals(&mut self) -> Result<(), MessageError> {
        let removals = std::mem::take(&mut self.removals);
        for side in [Side::Partner, Side::Hubspot] {
            let ids: Vec<String> = removals
                .iter()
                .filter(|r| r.1 == side)
                .map(|r| r.2.clone())
                .collect();
            if !ids.is_empty() {
                self.view(side).client.batch_archive("notes", &ids).await?;
            }
        }
        self.out.written += removals.len();
        self.out.objects.extend(removals.into_iter().map(|r| r.0));
        for (side, id) in std::mem::take(&mut self.files_to_delete) {
            self.view(side).client.delete_file(&id).await?;
        }
        Ok(())
    }
}

/// Writes one wave of copies to one side: new ones by batch create, each with its deal
/// association in the same call (no copy is ever off its deal, so after a crash the deal's
/// notes show whether it was made); ones that exist already by update (and association, for
/// one found off the deal by its unique origin). Returns each copy with its id and
/// `hs_lastmodifieddate`.
async fn write_copies(
    v: &SideView<'_>,
    items: Vec<PendingCopy>,
    tag: &Tag,
) -> Result<Vec<(PendingCopy, String, Option<i64>)>, MessageError> {
    let (adopt, fresh): (Vec<_>, Vec<_>) = items.into_iter().partition(|c| c.existing.is_some());
    let mut out = Vec::new();
    if !fresh.is_empty() {
        let inputs: Vec<(Props, Value)> = fresh
            .iter()
            .map(|c| {
                (
                    c.props.clone(),
                    crate::crm::to_deal(v.deal_id, crate::crm::NOTE_TO_DEAL),
                )
            })
            .collect();
        let records = v.client.batch_create("notes", &inputs).await?;
        // Matched by origin: HubSpot does not promise the answer's order.
        let origin_of = |r: &Record| match v.marking {
            Marking::Property { .. } => r.get(ORIGIN).map(str::to_owned),
            Marking::Tag => marking::parse(r.get("hs_note_body")?, tag).reference,
        };
        let by_origin: HashMap<String, &Record> = records
            .iter()
            .filter_map(|r| Some((origin_of(r)?, r)))
            .collect();
        for c in fresh {
            let Some(r) = by_origin.get(&c.pair.origin) else {
                return Err(CrmError::Decode {
                    portal: v.portal.to_owned(),
                    call: "batch create".into(),
                    detail: format!("the answer has no note for origin {}", c.pair.origin),
                }
                .into());
            };
            let (id, ms) = (r.id.clone(), r.last_modified_ms());
            out.push((c, id, ms));
        }
    }
    if !adopt.is_empty() {
        let list: Vec<(String, Props)> = adopt
            .iter()
            .filter_map(|c| Some((c.existing.clone()?, c.props.clone())))
            .collect();
        let written = v.client.batch_update("notes", &list).await;
        if let Some((_, e)) = written.failed.into_iter().next() {
            return Err(e.into());
        }
        let off_deal: Vec<(String, String)> = list
            .iter()
            .filter(|(id, _)| !v.heads.contains_key(id))
            .map(|(id, _)| (id.clone(), v.deal_id.to_owned()))
            .collect();
        if !off_deal.is_empty() {
            v.client
                .associate_default("notes", "deals", &off_deal)
                .await?;
        }
        for c in adopt {
            let id = c.existing.clone().unwrap_or_default();
            let ms = written
                .written
                .iter()
                .find(|r| r.id == id)
                .and_then(Record::last_modified_ms);
            out.push((c, id, ms));
        }
    }
    Ok(out)
}

/// Recovers the copies a failed run or a dead process left `creating` (the store says a copy
/// may exist, the copy is not on the deal) before they are written again.
///
/// The decision: such a copy either never existed, exists without its association (the
/// upsert went through, the association did not), or existed on the deal and a person deleted
/// it. The first two are told from the third by the copy's unique `dealsync_origin`:
/// - a live note holds it: the copy is adopted (the upsert rewrites it and associates it);
/// - an archived note holds it that is not the copy the pair last recorded (a copy dealsync
///   itself removed when the original was unshared, before it was shared again): a person
///   deleted this copy, and a deletion wins as it does for an active pair — the original is
///   deleted and no new copy is made;
/// - neither: it never existed, and it is made.
///
/// Without this a deletion made while the pair was `creating` (while dealsync was down, or
/// between a failed run and its retry) was undone by a new copy.
async fn recover_creating(
    intents: Vec<Intent>,
    views: [&SideView<'_>; 2],
) -> Result<(Vec<Intent>, HashSet<String>), MessageError> {
    let view = |side: Side| match side {
        Side::Partner => views[0],
        Side::Hubspot => views[1],
    };
    let mut out = Vec::with_capacity(intents.len());
    let mut adopted = HashSet::new();
    for intent in intents {
        let Intent::Create { mut pair, from } = intent else {
            out.push(intent);
            continue;
        };
        let to = other(from);
        let on_deal = id_on(&pair, to).is_some_and(|id| view(to).heads.contains_key(id));
        // Without a unique origin the deal's notes are all there is to look at, and the read
        // that decided looked (a copy is created with its association).
        if pair.state != ObjectState::Creating || on_deal || !view(to).finds_by_origin() {
            out.push(Intent::Create { pair, from });
            continue;
        }
        let client = view(to).client;
        let found = client
            .get_by("notes", &pair.origin, ORIGIN, &[ORIGIN.to_owned()])
            .await?;
        let live = found.is_some();
        if let Some(r) = found {
            // Off its deal (written by an upsert before this version): rewritten and associated.
            set_id(&mut pair, to, Some(r.id.clone()));
            adopted.insert(r.id);
        }
        let archived = if live {
            None
        } else {
            archived_by_origin(client, &pair.origin).await?
        };
        match deleted_copy(&pair, to, live, archived.as_deref()) {
            Some(copy) => {
                let id = id_on(&pair, from).unwrap_or_default().to_owned();
                set_id(&mut pair, to, Some(copy));
                pair.state = ObjectState::Removed;
                pair.note = Some("the copy was deleted".into());
                out.push(Intent::Remove {
                    pair,
                    side: from,
                    id,
                });
            }
            None => out.push(Intent::Create { pair, from }),
        }
    }
    Ok((out, adopted))
}

/// The copy of a `creating` pair a person deleted, if any: an archived note holding the
/// pair's origin, unless a live one holds it (only one can: the upsert would have found it)
/// or it is the copy the pair recorded before this creation (dealsync's own removal).
pub fn deleted_copy(
    pair: &ObjectLink,
    to: Side,
    live: bool,
    archived: Option<&str>,
) -> Option<String> {
    archived
        .filter(|a| !live && id_on(pair, to) != Some(*a))
        .map(str::to_owned)
}

/// The archived note holding `origin` as its `dealsync_origin`, by an `archived=true` read on
/// the unique property.
async fn archived_by_origin(client: &Client, origin: &str) -> Result<Option<String>, CrmError> {
    client.archived_id_by("notes", origin, ORIGIN).await
}

/// Copies the files of a new message's original to the other side; returns the copy's
/// attachment ids.
#[allow(clippy::too_many_arguments)]
async fn copy_new_files(
    settings: &MessageSettings,
    pair: &ObjectLink,
    from: Side,
    source: &Client,
    dest: &Client,
    content: &Content,
    files: &mut Vec<ObjectLink>,
    changed: &mut HashSet<String>,
    portal: &str,
) -> Result<Vec<String>, MessageError> {
    let mut ids = Vec::new();
    for fid in &content.attachments {
        let key = origin_key(portal, fid);
        let known = files.iter().position(|f| f.origin == key);
        if let Some(f) = known.map(|i| &files[i]) {
            match (f.state, id_on(f, other(from))) {
                // Copied before (a retry after a crash): reuse it.
                (ObjectState::Active, Some(c)) => {
                    ids.push(c.to_owned());
                    continue;
                }
                // Known to be too large or unreadable: not tried again.
                (ObjectState::Skipped | ObjectState::Unreadable, _) => continue,
                // Removed with an unshared message that is shared again: copy anew.
                _ => {}
            }
        }
        let mut f = ObjectLink {
            kind: "file".into(),
            origin: key.clone(),
            parent: Some(pair.origin.clone()),
            ..Default::default()
        };
        set_id(&mut f, from, Some(fid.clone()));
        if let Some(c) = copy_one(settings, source, dest, fid, &mut f, from).await? {
            ids.push(c);
        }
        changed.insert(key);
        match known {
            Some(i) => files[i] = f,
            None => files.push(f),
        }
    }
    Ok(ids)
}

/// Copies one file and records the outcome on its file pair; the new id when copied.
async fn copy_one(
    settings: &MessageSettings,
    source: &Client,
    dest: &Client,
    fid: &str,
    f: &mut ObjectLink,
    from: Side,
) -> Result<Option<String>, MessageError> {
    let copied = match source
        .copy_file_to(dest, fid, settings.max_attachment_bytes, &settings.folder)
        .await
    {
        // The destination refused this file (too large for it, a blocked type): a property of
        // the file, not of the portal, so it is skipped with the reason instead of failing the
        // link's job on every run.
        Err(e) if matches!(e.status(), Some(400 | 413 | 415)) => {
            f.state = ObjectState::Skipped;
            f.note = Some(format!("refused by {}: {e}", dest.portal()));
            tracing::warn!(file = %fid, portal = %dest.portal(), "attachment refused; skipped");
            return Ok(None);
        }
        other => other?,
    };
    match copied {
        FileCopy::Copied(new_id) => {
            set_id(f, other(from), Some(new_id.clone()));
            f.state = ObjectState::Active;
            f.note = None;
            Ok(Some(new_id))
        }
        FileCopy::Missing => {
            f.state = ObjectState::Unreadable;
            f.note = Some(format!(
                "unreadable in {} (deleted?); message synced without it",
                source.portal()
            ));
            tracing::warn!(file = %fid, portal = %source.portal(), "attachment unreadable; message synced without it");
            Ok(None)
        }
        FileCopy::TooLarge(size) => {
            f.state = ObjectState::Skipped;
            f.note = Some(format!(
                "{size} bytes, over messages.max_attachment_bytes ({}); not copied",
                settings.max_attachment_bytes
            ));
            tracing::warn!(file = %fid, size, "attachment over the size limit; skipped");
            Ok(None)
        }
    }
}

/// Brings a pair's attachments in step; returns the sides whose attachment list must change,
/// with the new list.
#[allow(clippy::too_many_arguments)]
async fn sync_files(
    settings: &MessageSettings,
    pair: &ObjectLink,
    views: [&SideView<'_>; 2],
    contents: [&Content; 2],
    files: &mut Vec<ObjectLink>,
    changed: &mut HashSet<String>,
    to_delete: &mut Vec<(Side, String)>,
    force: bool,
) -> Result<Vec<(Side, Vec<String>)>, MessageError> {
    let idx = |s: Side| match s {
        Side::Partner => 0,
        Side::Hubspot => 1,
    };
    let mut lists: [Vec<String>; 2] = [
        contents[0].attachments.clone(),
        contents[1].attachments.clone(),
    ];
    let before = lists.clone();
    // Linked files that left a message, or (checked on sweeps) were deleted: the file on the
    // other side goes too, and leaves its message. The side where someone acted is left as
    // they left it.
    for f in files
        .iter_mut()
        .filter(|f| f.parent.as_deref() == Some(&pair.origin) && f.state == ObjectState::Active)
    {
        let mut gone = [false, false];
        for s in [Side::Partner, Side::Hubspot] {
            let Some(id) = id_on(f, s) else { continue };
            gone[idx(s)] = !lists[idx(s)].iter().any(|a| a == id)
                || (force && !views[idx(s)].client.file_exists(id).await?);
        }
        if gone.iter().any(|g| *g) {
            // The copy dealsync made always goes (a failed run may already have detached it);
            // the original goes only while still attached, i.e. when someone acted on the copy.
            let copy_side = if f.origin.split_once(':').map(|(p, _)| p) == Some(views[0].portal) {
                Side::Hubspot
            } else {
                Side::Partner
            };
            for s in [Side::Partner, Side::Hubspot] {
                if let Some(id) = id_on(f, s) {
                    if !gone[idx(s)] || s == copy_side {
                        to_delete.push((s, id.to_owned()));
                    }
                    lists[idx(s)].retain(|a| a != id);
                }
            }
            f.state = ObjectState::Removed;
            f.note = Some("removed from the message or deleted on one side".into());
            changed.insert(f.origin.clone());
        }
    }
    // Files on either side not linked yet: copy them over.
    for s in [Side::Partner, Side::Hubspot] {
        let new: Vec<String> = lists[idx(s)]
            .iter()
            .filter(|a| !files.iter().any(|f| id_on(f, s) == Some(a.as_str())))
            .cloned()
            .collect();
        for fid in new {
            let key = origin_key(views[idx(s)].portal, &fid);
            let mut f = ObjectLink {
                kind: "file".into(),
                origin: key.clone(),
                parent: Some(pair.origin.clone()),
                ..Default::default()
            };
            set_id(&mut f, s, Some(fid.clone()));
            if let Some(c) = copy_one(
                settings,
                views[idx(s)].client,
                views[idx(other(s))].client,
                &fid,
                &mut f,
                s,
            )
            .await?
            {
                lists[idx(other(s))].push(c);
            }
            changed.insert(key);
            files.push(f);
        }
    }
    // A list that is written anyway leaves out files known to be unreadable there: HubSpot
    // refuses attachment ids that are not files.
    Ok([Side::Partner, Side::Hubspot]
        .into_iter()
        .filter(|s| lists[idx(*s)] != before[idx(*s)])
        .map(|s| {
            let mut list = lists[idx(s)].clone();
            list.retain(|a| {
                !files
                    .iter()
                    .any(|f| f.state == ObjectState::Unreadable && id_on(f, s) == Some(a.as_str()))
            });
            (s, list)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link {
            id: 1,
            partner: "partner-a".into(),
            partner_deal_id: "10".into(),
            hubspot_deal_id: "20".into(),
            deal_type: "channel".into(),
            state: crate::store::LinkState::Active,
            created_at: 0,
        }
    }

    fn deal(links: usize) -> DealContext {
        DealContext {
            links,
            ..Default::default()
        }
    }

    fn note(id: &str, shared: bool) -> NoteHead {
        NoteHead {
            id: id.into(),
            shared,
            ms: Some(1),
            ..Default::default()
        }
    }

    fn map(notes: &[NoteHead]) -> HashMap<String, NoteHead> {
        notes.iter().map(|n| (n.id.clone(), n.clone())).collect()
    }

    fn pair(origin: &str, p: Option<&str>, h: Option<&str>, state: &str) -> ObjectLink {
        ObjectLink {
            kind: "message".into(),
            origin: origin.into(),
            partner_object_id: p.map(Into::into),
            hubspot_object_id: h.map(Into::into),
            state: ObjectState::parse(state).expect("a state label"),
            partner_ms: Some(1),
            hubspot_ms: Some(1),
            ..Default::default()
        }
    }

    fn kinds(v: &[Intent]) -> Vec<String> {
        v.iter()
            .map(|i| match i {
                Intent::Create { pair, from } => format!("create {} from {from:?}", pair.origin),
                Intent::Sync { pair, .. } => format!("sync {}", pair.origin),
                Intent::Remove { pair, side, id } => {
                    format!("remove {id} on {side:?} ({})", pair.state)
                }
                Intent::RemoveByOrigin { pair, side } => {
                    format!(
                        "remove {} by origin on {side:?} ({})",
                        pair.origin, pair.state
                    )
                }
                Intent::Record(p) => format!("record {} {}", p.origin, p.state),
            })
            .collect()
    }

    #[test]
    fn private_notes_go_nowhere_and_leave_no_record() {
        let p = map(&[note("1", false)]);
        let h = map(&[note("2", false)]);
        assert!(intend(&link(), "hubspot", &deal(1), &p, &h, &[]).is_empty());
    }

    #[test]
    fn shared_originals_are_copied_both_ways() {
        let p = map(&[note("1", true)]);
        let h = map(&[note("2", true)]);
        assert_eq!(
            kinds(&intend(&link(), "hubspot", &deal(1), &p, &h, &[])),
            vec![
                "create partner-a:1 from Partner",
                "create hubspot:2 from Hubspot"
            ]
        );
    }

    #[test]
    fn copies_are_never_originals() {
        // Our own copy on HubSpot's side (origin set) and another partner's copy there.
        let mut ours = note("2", true);
        ours.origin = Some("partner-a:1".into());
        let mut theirs = note("3", true);
        theirs.origin = Some("partner-b:9".into());
        let p = map(&[note("1", true)]);
        let h = map(&[ours, theirs]);
        let pairs = [pair("partner-a:1", Some("1"), Some("2"), "active")];
        assert_eq!(
            kinds(&intend(&link(), "hubspot", &deal(2), &p, &h, &pairs)),
            vec!["sync partner-a:1"]
        );
    }

    #[test]
    fn deleting_either_side_removes_the_other() {
        let mut copy = note("2", true);
        copy.origin = Some("partner-a:1".into());
        let pairs = [pair("partner-a:1", Some("1"), Some("2"), "active")];
        // Original gone: archive the copy on HubSpot's side.
        let i = intend(
            &link(),
            "hubspot",
            &deal(1),
            &map(&[]),
            &map(&[copy]),
            &pairs,
        );
        assert_eq!(kinds(&i), vec!["remove 2 on Hubspot (removed)"]);
        // Copy gone: archive the original.
        let i = intend(
            &link(),
            "hubspot",
            &deal(1),
            &map(&[note("1", true)]),
            &map(&[]),
            &pairs,
        );
        assert_eq!(kinds(&i), vec!["remove 1 on Partner (removed)"]);
        // Both gone: record only, and once recorded, nothing more.
        let i = intend(&link(), "hubspot", &deal(1), &map(&[]), &map(&[]), &pairs);
        assert_eq!(kinds(&i), vec!["record partner-a:1 removed"]);
        let done = [pair("partner-a:1", Some("1"), Some("2"), "removed")];
        assert!(intend(&link(), "hubspot", &deal(1), &map(&[]), &map(&[]), &done).is_empty());
    }

    #[test]
    fn unsharing_the_original_removes_the_copy_but_unsharing_the_copy_detaches() {
        let mut copy = note("2", true);
        copy.origin = Some("partner-a:1".into());
        let pairs = [pair("partner-a:1", Some("1"), Some("2"), "active")];
        let i = intend(
            &link(),
            "hubspot",
            &deal(1),
            &map(&[note("1", false)]),
            &map(&[copy.clone()]),
            &pairs,
        );
        assert_eq!(kinds(&i), vec!["remove 2 on Hubspot (unshared)"]);
        copy.shared = false;
        let i = intend(
            &link(),
            "hubspot",
            &deal(1),
            &map(&[note("1", true)]),
            &map(&[copy]),
            &pairs,
        );
        assert_eq!(kinds(&i), vec!["record partner-a:1 detached"]);
    }

    #[test]
    fn a_detached_copy_is_never_deleted_or_overwritten() {
        let mut copy = note("2", false);
        copy.origin = Some("partner-a:1".into());
        let detached = [pair("partner-a:1", Some("1"), Some("2"), "detached")];
        // The original deleted, made private, or shared again: the private copy stays.
        for p in [map(&[]), map(&[note("1", false)]), map(&[note("1", true)])] {
            let i = intend(
                &link(),
                "hubspot",
                &deal(1),
                &p,
                &map(&[copy.clone()]),
                &detached,
            );
            assert!(i.is_empty(), "{:?}", kinds(&i));
        }
        // A private note carrying an origin the store never recorded is not adopted either.
        let i = intend(
            &link(),
            "hubspot",
            &deal(1),
            &map(&[note("1", true)]),
            &map(&[copy]),
            &[],
        );
        assert_eq!(kinds(&i), vec!["record partner-a:1 detached"]);
    }

    #[test]
    fn resharing_creates_a_new_copy() {
        let pairs = [pair("partner-a:1", Some("1"), Some("2"), "unshared")];
        let i = intend(
            &link(),
            "hubspot",
            &deal(1),
            &map(&[note("1", true)]),
            &map(&[]),
            &pairs,
        );
        assert_eq!(kinds(&i), vec!["create partner-a:1 from Partner"]);
    }

    #[test]
    fn hubspot_messages_on_a_deal_with_several_partners_need_a_target() {
        let h = map(&[note("2", true)]);
        let i = intend(&link(), "hubspot", &deal(2), &map(&[]), &h, &[]);
        assert_eq!(kinds(&i), vec!["record hubspot:2 needs_target"]);
        // Recorded once; not again.
        let recorded = [pair("hubspot:2", None, Some("2"), "needs_target")];
        assert!(intend(&link(), "hubspot", &deal(2), &map(&[]), &h, &recorded).is_empty());
        // Targeted at this partner: copied; at another: nothing.
        let mut t = note("2", true);
        t.target = Some("partner-a".into());
        let i = intend(
            &link(),
            "hubspot",
            &deal(2),
            &map(&[]),
            &map(&[t.clone()]),
            &recorded,
        );
        assert_eq!(kinds(&i), vec!["create hubspot:2 from Hubspot"]);
        t.target = Some("partner-b".into());
        assert!(intend(&link(), "hubspot", &deal(2), &map(&[]), &map(&[t]), &[]).is_empty());
    }

    #[test]
    fn another_partners_messages_on_the_hubspot_deal_never_reach_this_one() {
        // Link 2 (partner-b) shares the HubSpot deal. Note 5 is its copy of partner-b's
        // message, whose dealsync_origin someone cleared; note 6 an untargeted HubSpot message
        // partner-b got while it was the deal's only partner; note 7 a reply in that thread.
        let b_pairs = [
            pair("partner-b:40", None, Some("5"), "active"),
            pair("hubspot:6", None, Some("6"), "active"),
        ];
        let ctx = DealContext::new(1, 1, "hubspot", b_pairs.iter().map(|o| (2, o)));
        assert_eq!(ctx.other_copies, HashSet::from(["5".to_owned()]));
        assert_eq!(ctx.other_originals, HashSet::from(["6".to_owned()]));
        let mut reply = note("7", true);
        reply.reply_to = Some("6".into());
        let h = map(&[note("5", true), note("6", true), reply]);
        let i = intend(&link(), "hubspot", &ctx, &map(&[]), &h, &[]);
        assert_eq!(
            kinds(&i),
            vec![
                "record hubspot:6 needs_target",
                "record hubspot:7 needs_target"
            ],
            "partner-a gets none of partner-b's thread, even as the deal's only partner now"
        );
        // Named for partner-a, it goes.
        let mut t = note("6", true);
        t.target = Some("partner-a".into());
        let i = intend(&link(), "hubspot", &ctx, &map(&[]), &map(&[t]), &[]);
        assert_eq!(kinds(&i), vec!["create hubspot:6 from Hubspot"]);
        // The link's own pairs never count as another link's.
        let own = DealContext::new(1, 1, "hubspot", b_pairs.iter().map(|o| (1, o)));
        assert_eq!(own, deal(1));
    }

    #[test]
    fn a_copy_whose_origin_was_cleared_is_still_the_copy() {
        let h = map(&[note("2", true)]);
        // The partner-side copy 7 lost its dealsync_origin; the store knows it.
        let p = map(&[note("7", true)]);
        let shared = [pair("hubspot:2", Some("7"), Some("2"), "active")];
        let i = intend(&link(), "hubspot", &deal(1), &p, &h, &shared);
        assert_eq!(kinds(&i), vec!["sync hubspot:2"]);
        // Without the record it would look like a partner original.
        let i = intend(&link(), "hubspot", &deal(1), &p, &h, &[]);
        assert!(kinds(&i).contains(&"create partner-a:7 from Partner".to_owned()));
    }

    #[test]
    fn an_untargeted_message_keeps_its_decision_when_partners_come_and_go() {
        let h = map(&[note("2", true)]);
        // Copied while partner-a was the only partner; partner-b joins: the copy stays.
        let shared = [pair("hubspot:2", Some("7"), Some("2"), "active")];
        let p = map(&[{
            let mut c = note("7", true);
            c.origin = Some("hubspot:2".into());
            c
        }]);
        let i = intend(&link(), "hubspot", &deal(2), &p, &h, &shared);
        assert_eq!(kinds(&i), vec!["sync hubspot:2"]);
        // Held for a target while there were two; down to one partner: still held.
        let held = [pair("hubspot:2", None, Some("2"), "needs_target")];
        assert!(intend(&link(), "hubspot", &deal(1), &map(&[]), &h, &held).is_empty());
        // New ones are decided by the partners the deal has now.
        assert_eq!(
            kinds(&intend(&link(), "hubspot", &deal(1), &map(&[]), &h, &[])),
            vec!["create hubspot:2 from Hubspot"]
        );
    }

    #[test]
    fn a_reply_follows_its_thread_to_the_partner_it_belongs_to() {
        // On a deal with two partners, a HubSpot comment on partner-b's message goes to
        // partner-b only, and one on partner-a's message to partner-a.
        let mut from_b = note("5", true);
        from_b.origin = Some("partner-b:77".into());
        let mut reply = note("6", true);
        reply.reply_to = Some("5".into());
        let h = map(&[from_b, reply.clone()]);
        assert!(intend(&link(), "hubspot", &deal(2), &map(&[]), &h, &[]).is_empty());
        let mut from_a = note("5", true);
        from_a.origin = Some("partner-a:1".into());
        let h = map(&[from_a, reply]);
        let pairs = [pair("partner-a:1", Some("1"), Some("5"), "active")];
        let i = intend(
            &link(),
            "hubspot",
            &deal(2),
            &map(&[note("1", true)]),
            &h,
            &pairs,
        );
        assert_eq!(
            kinds(&i),
            vec!["sync partner-a:1", "create hubspot:6 from Hubspot"]
        );
    }

    #[test]
    fn a_copy_the_store_does_not_know_is_adopted_or_retired() {
        // Written just before a crash: the original is still shared, so the copy is rewritten
        // by the upsert (not duplicated).
        let mut copy = note("9", true);
        copy.origin = Some("partner-a:1".into());
        let h = map(&[copy.clone()]);
        let i = intend(
            &link(),
            "hubspot",
            &deal(1),
            &map(&[note("1", true)]),
            &h,
            &[],
        );
        assert_eq!(kinds(&i), vec!["create partner-a:1 from Partner"]);
        // The original was deleted meanwhile: the copy goes (the pair was recorded as being
        // created before the upsert).
        let creating = [pair("partner-a:1", Some("1"), None, "creating")];
        let i = intend(&link(), "hubspot", &deal(1), &map(&[]), &h, &creating);
        assert_eq!(kinds(&i), vec!["remove 9 on Hubspot (removed)"]);
        // Made private meanwhile: the copy goes too.
        let i = intend(
            &link(),
            "hubspot",
            &deal(1),
            &map(&[note("1", false)]),
            &h,
            &creating,
        );
        assert_eq!(kinds(&i), vec!["remove 9 on Hubspot (unshared)"]);
        // A copy this link knows nothing about, whose original is not on this link's deal,
        // belongs to another link of the same partner: left alone.
        assert!(intend(&link(), "hubspot", &deal(1), &map(&[]), &h, &[]).is_empty());
        // A copy being created when the process died may exist without its association: it is
        // looked up by origin.
        let creating = [pair("partner-a:1", Some("1"), None, "creating")];
        let i = intend(
            &link(),
            "hubspot",
            &deal(1),
            &map(&[]),
            &map(&[]),
            &creating,
        );
        assert_eq!(
            kinds(&i),
            vec!["remove partner-a:1 by origin on Hubspot (removed)"]
        );
        // Another partner's copy on the same HubSpot deal is none of this link's business.
        let mut theirs = copy;
        theirs.origin = Some("partner-b:1".into());
        assert!(intend(
            &link(),
            "hubspot",
            &deal(2),
            &map(&[]),
            &map(&[theirs]),
            &[]
        )
        .is_empty());
    }

    #[test]
    fn a_creating_copy_counts_as_deleted_only_when_archived_and_not_our_own_removal() {
        let first = pair("hubspot:2", None, Some("2"), "creating");
        // Never existed; or exists (live) without its association: made or adopted.
        assert_eq!(deleted_copy(&first, Side::Partner, false, None), None);
        assert_eq!(deleted_copy(&first, Side::Partner, true, None), None);
        // Archived, and dealsync never recorded it: a person deleted it.
        assert_eq!(
            deleted_copy(&first, Side::Partner, false, Some("7")),
            Some("7".into())
        );
        // Shared again after dealsync removed copy 7 on unsharing: 7 is not news.
        let again = pair("hubspot:2", Some("7"), Some("2"), "creating");
        assert_eq!(deleted_copy(&again, Side::Partner, false, Some("7")), None);
        assert_eq!(
            deleted_copy(&again, Side::Partner, false, Some("8")),
            Some("8".into())
        );
    }

    #[test]
    fn a_reply_loop_does_not_hang() {
        let mut a = note("1", true);
        a.reply_to = Some("2".into());
        let mut b = note("2", true);
        b.reply_to = Some("1".into());
        let h = map(&[a.clone(), b]);
        assert_eq!(thread_partner(&a, &h, "hubspot"), None);
    }

    #[test]
    fn reach_table() {
        assert_eq!(reach(Some("p"), "p", 3), Reach::Here);
        assert_eq!(reach(Some("q"), "p", 1), Reach::Elsewhere);
        assert_eq!(reach(None, "p", 0), Reach::Here);
        assert_eq!(reach(None, "p", 1), Reach::Here);
        assert_eq!(reach(None, "p", 2), Reach::NeedsTarget);
    }

    #[test]
    fn body_edits_follow_the_shadow_and_conflicts_keep_no_text() {
        let c = |body: &str, ms| Content {
            body: body.into(),
            ms: Some(ms),
            shared: true,
            ..Default::default()
        };
        let mut p = pair("partner-a:1", Some("1"), Some("2"), "active");
        p.shadow = Some(body_hash("old"));
        // Partner edited: write HubSpot.
        let (tp, th, sh, k) = decide_body(1, &p, &c("new", 5), &c("old", 1));
        assert_eq!((tp, th.as_deref(), k.is_none()), (None, Some("new"), true));
        assert_eq!(sh, body_hash("new"));
        // Both edited: the later wins, a conflict is recorded without either body.
        let (tp, th, _, k) = decide_body(1, &p, &c("secret-a", 5), &c("secret-b", 9));
        assert_eq!((tp.as_deref(), th), (Some("secret-b"), None));
        let k = k.expect("conflict");
        let text = format!("{k:?}");
        assert!(!text.contains("secret"), "{text}");
        // Nothing changed: nothing written.
        let (tp, th, _, k) = decide_body(1, &p, &c("old", 5), &c("old", 9));
        assert!(tp.is_none() && th.is_none() && k.is_none());
    }

    #[test]
    fn unchanged_pairs_need_no_content_read() {
        let p = pair("partner-a:1", Some("1"), Some("2"), "active");
        let (a, b) = (note("1", true), note("2", true));
        assert!(!changed(&p, &a, &b, false));
        assert!(changed(&p, &a, &b, true));
        let mut later = b.clone();
        later.ms = Some(2);
        assert!(changed(&p, &a, &later, false));
    }
}
