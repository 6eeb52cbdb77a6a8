//! `dealsync probe`: checks a portal for everything dealsync relies on before it goes live,
//! so a missing scope or an unsupported note feature shows up in a table on the operator's
//! terminal instead of as dead letters against real partners. `setup` runs it first.
//!
//! What it writes, and only where a check needs a write: an unassociated note (created, then
//! archived at once), temporary properties named `dealsync_probe_…` in an existing group
//! (archived at once), and a small private file in the configured folder (deleted at once).
//! Nothing is associated with a deal, contact or company, so no timeline shows it and nobody
//! is notified; an admin can see the archived properties in the portal's settings. Where
//! dealsync's own note properties already exist (setup ran), they are checked instead of
//! creating temporary ones. Deal writes are never tried: a write shows in a deal's history.
//!
//! The note features are the ones no HubSpot page confirms (HUBSPOT-API.md §0): custom
//! properties on notes, a unique-value note property, batch upsert of notes.

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::crm::{AssocAction, CallKind, Client, CrmError, ErrorClass, Op, ReportedLimits};
use crate::properties;
use crate::store::Side;

/// One thing dealsync relies on in a portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Token,
    ApiVersion,
    ReadDeals,
    ReadAssociations,
    ReadOwners,
    ReadQuotes,
    DealProperties,
    Notes,
    NoteSearch,
    NoteProperties,
    UniqueNoteProperty,
    NoteUpsert,
    Files,
    RateLimits,
    WebhookSubscriptions,
    /// Not a capability: which marking shared messages get here, and why.
    MessageMarking,
}

impl Capability {
    pub fn label(self) -> &'static str {
        match self {
            Capability::Token => "token accepted",
            Capability::ApiVersion => "configured API version",
            Capability::ReadDeals => "read deals",
            Capability::ReadAssociations => "read associations",
            Capability::ReadOwners => "read owners",
            Capability::ReadQuotes => "read quotes",
            Capability::DealProperties => "custom deal properties",
            Capability::Notes => "read and write notes",
            Capability::NoteSearch => "search notes",
            Capability::NoteProperties => "custom note properties",
            Capability::UniqueNoteProperty => "unique-value note property",
            Capability::NoteUpsert => "batch upsert of notes",
            Capability::Files => "file upload and signed URL",
            Capability::RateLimits => "rate limits",
            Capability::WebhookSubscriptions => "webhook subscriptions",
            Capability::MessageMarking => "shared message marking",
        }
    }

    /// What goes wrong without it.
    pub fn consequence(self) -> &'static str {
        match self {
            Capability::Token => "nothing can be read or written",
            Capability::ApiVersion => "every call fails",
            Capability::ReadDeals => "no deal syncs",
            Capability::ReadAssociations => "messages and quotes are not found on deals",
            Capability::ReadOwners => "deal teams and owners cannot be matched",
            Capability::ReadQuotes => "partners see no quote summaries",
            Capability::DealProperties => "setup cannot create dealsync's deal properties",
            Capability::Notes | Capability::NoteSearch => "no shared message syncs",
            Capability::NoteProperties => {
                "shared messages fall back to tag marking (with marking = \"property\" none syncs)"
            }
            Capability::UniqueNoteProperty => {
                "a copy a person deletes while dealsync is stopped mid-copy is made again"
            }
            Capability::NoteUpsert => "none: copies are created with their deal association",
            Capability::MessageMarking => "",
            Capability::Files => "attachments are not copied",
            Capability::RateLimits => "the budget is above the portal's limit: 429s",
            Capability::WebhookSubscriptions => "without them, changes arrive by polling only",
        }
    }

    /// What the operator does about it.
    pub fn remedy(self) -> &'static str {
        match self {
            Capability::Token => {
                "check the portal's token_env, or its OAuth install (`dealsync install-link`)"
            }
            Capability::ApiVersion => "set the portal's api_version to one it serves",
            Capability::ReadDeals | Capability::ReadAssociations => {
                "grant the app crm.objects.deals.read and .write, then reinstall it"
            }
            Capability::ReadOwners => "grant the app crm.objects.owners.read",
            Capability::ReadQuotes => "grant the app crm.objects.quotes.read",
            Capability::DealProperties => {
                "grant the app crm.schemas.deals.write, or have an admin create the properties"
            }
            Capability::Notes | Capability::NoteSearch | Capability::Files => {
                "grant the app the scopes this call names, or set [messages] enabled = false"
            }
            Capability::NoteProperties => {
                "nothing with marking = \"auto\" or \"tag\" (README: tag marking); for property marking grant crm.schemas.notes.write"
            }
            Capability::UniqueNoteProperty | Capability::NoteUpsert => "nothing required",
            Capability::MessageMarking => "",
            Capability::RateLimits => "lower the portal's rate_limit_per_10s to the stated limit",
            Capability::WebhookSubscriptions => {
                "add them to the app's webhooks-hsmeta.json (`dealsync setup --project DIR`) and upload the project with HubSpot's CLI"
            }
        }
    }
}

/// The answer for one capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Missing,
    /// Not known: an earlier check failed, the portal did not answer, or the probe cannot
    /// check it.
    Unchecked,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Missing => "missing",
            Verdict::Unchecked => "unchecked",
        }
    }
}

/// One row of the probe's table.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub portal: String,
    pub capability: Capability,
    pub verdict: Verdict,
    /// Whether the configured setup cannot run without it.
    pub required: bool,
    /// What the probe saw (HubSpot's own message on a refusal; never a token).
    pub seen: String,
}

/// What the configuration asks of one portal.
#[derive(Debug, Clone)]
pub struct Needs {
    pub side: Side,
    /// `[messages] enabled`.
    pub messages: bool,
    /// `[messages] marking`.
    pub marking: crate::engine::marking::MarkingChoice,
    /// `[messages] tag`.
    pub tag: String,
    /// Where attachment copies go (the file check writes there).
    pub folder: String,
    /// The portal's configured budget (calls per 10 s).
    pub per_10s: u32,
}

impl Needs {
    fn requires(&self, c: Capability) -> bool {
        use Capability::*;
        match c {
            Token | ApiVersion | ReadDeals | ReadAssociations | ReadOwners | DealProperties
            | RateLimits => true,
            ReadQuotes => self.side == Side::Hubspot,
            Notes | NoteSearch | Files => self.messages,
            NoteProperties => {
                self.messages && self.marking == crate::engine::marking::MarkingChoice::Property
            }
            UniqueNoteProperty | NoteUpsert | WebhookSubscriptions | MessageMarking => false,
        }
    }
}

/// Every check of every probed portal.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether the configured setup can run: every required capability is there.
    pub fn ready(&self) -> bool {
        self.checks
            .iter()
            .all(|c| !c.required || c.verdict == Verdict::Ok)
    }

    /// Whether a required capability is unknown only because a portal did not answer (try
    /// again) rather than refused.
    pub fn only_unanswered(&self) -> bool {
        !self.ready()
            && self
                .checks
                .iter()
                .all(|c| !c.required || c.verdict != Verdict::Missing)
    }

    /// The table: portal | capability | result | seen / consequence | what to do.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 5]> = self
            .checks
            .iter()
            .map(|c| {
                let result = match (c.verdict, c.required) {
                    (Verdict::Ok, _) => "ok".to_owned(),
                    (v, true) => v.label().to_owned(),
                    (v, false) => format!("{} (optional)", v.label()),
                };
                let (said, todo) = match c.verdict {
                    Verdict::Ok => (c.seen.clone(), String::new()),
                    _ => (
                        format!("{} ({})", c.capability.consequence(), c.seen),
                        c.capability.remedy().to_owned(),
                    ),
                };
                [
                    c.portal.clone(),
                    c.capability.label().to_owned(),
                    result,
                    said,
                    todo,
                ]
            })
            .collect();
        let head = [
            "portal",
            "capability",
            "result",
            "seen / consequence",
            "what to do",
        ];
        let mut widths = head.map(str::len);
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 5]| {
            let mut s = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i == 4 {
                    s.push_str(cell);
                } else {
                    s.push_str(&format!("{cell:<w$} | "));
                }
            }
            s.trim_end().to_owned() + "\n"
        };
        let mut out = line(head);
        for r in &rows {
            out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
        }
        out
    }
}

/// Collects one portal's checks.
struct Recorder<'a> {
    portal: String,
    needs: &'a Needs,
    checks: Vec<Check>,
}

impl Recorder<'_> {
    fn put(&mut self, capability: Capability, verdict: Verdict, seen: impl Into<String>) {
        self.checks.push(Check {
            portal: self.portal.clone(),
            capability,
            verdict,
            required: self.needs.requires(capability),
            seen: seen.into(),
        });
    }

    /// A call's answer as a verdict: refused (4xx) is missing; unanswered (5xx, timeout) is
    /// unknown.
    fn result<T>(&mut self, capability: Capability, r: &Result<T, CrmError>, ok: &str) {
        match r {
            Ok(_) => self.put(capability, Verdict::Ok, ok),
            Err(e) => self.put(capability, verdict_of(e), e.to_string()),
        }
    }
}

fn verdict_of(e: &CrmError) -> Verdict {
    match e.class() {
        ErrorClass::Transient => Verdict::Unchecked,
        ErrorClass::Permanent | ErrorClass::Held => Verdict::Missing,
    }
}

/// Probes one portal. A unique suffix (`nonce`) names anything it writes.
pub async fn probe(client: &Client, needs: &Needs, nonce: &str) -> Vec<Check> {
    let mut r = Recorder {
        portal: client.portal().to_owned(),
        needs,
        checks: Vec::new(),
    };
    let Some(deal) = first_read(client, &mut r).await else {
        return r.checks;
    };
    let owners = get(client, Op::Owners).await;
    r.result(Capability::ReadOwners, &owners, "listed");
    if needs.side == Side::Hubspot {
        let quotes = get(client, Op::Objects { object: "quotes" }).await;
        r.result(Capability::ReadQuotes, &quotes, "listed");
    }
    let assoc = client
        .call(
            reqwest::Method::POST,
            &client.path(Op::AssociationBatch {
                from: "deals",
                to: "notes",
                action: AssocAction::Read,
            }),
            Some(&json!({ "inputs": [{ "id": deal }] })),
            CallKind::Ordinary,
        )
        .await;
    r.result(Capability::ReadAssociations, &assoc, "deal → notes read");
    deal_properties(client, &mut r, nonce).await;
    if needs.messages {
        notes(client, &mut r, nonce).await;
        marking(&mut r);
        files(client, &mut r, nonce).await;
    }
    rate_limits(client.reported_limits(), &mut r);
    r.checks
}

/// The row of the app's webhook subscriptions, read from HubSpot's app webhooks API with the
/// developer key (`[app]`) and compared with what dealsync needs (`project::subscriptions`).
/// Optional: without webhooks dealsync polls.
pub async fn app_webhooks(
    base_url: &str,
    app: Option<&crate::config::AppCredentials>,
    wanted: &[crate::project::Subscription],
) -> Check {
    let row = |portal: String, verdict, seen: String| Check {
        portal,
        capability: Capability::WebhookSubscriptions,
        verdict,
        required: false,
        seen,
    };
    let Some(app) = app else {
        return row(
            "app".into(),
            Verdict::Unchecked,
            "set [app] id and developer_key_env to check them".into(),
        );
    };
    let portal = format!("app {}", app.id);
    let key: String =
        form_urlencoded::byte_serialize(app.developer_key.expose().as_bytes()).collect();
    let url = format!(
        "{}/app-webhooks/2026-09/{}/subscriptions?hapikey={key}",
        base_url.trim_end_matches('/'),
        app.id
    );
    let answer = match crate::crm::shared_http() {
        Ok(http) => {
            http.get(&url)
                .timeout(std::time::Duration::from_secs(30))
                .send()
                .await
        }
        Err(e) => return row(portal, Verdict::Unchecked, e),
    };
    // The key rides in the query: an error must not carry the URL.
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return row(portal, Verdict::Unchecked, e.without_url().to_string()),
    };
    let status = answer.status();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let said = body["message"].as_str().unwrap_or_default();
        let verdict = if status.is_server_error() {
            Verdict::Unchecked
        } else {
            Verdict::Missing
        };
        return row(
            portal,
            verdict,
            format!("the app webhooks API answered {status}: {said}"),
        );
    }
    let listed = body["results"].as_array().cloned().unwrap_or_default();
    let (missing, paused) = compare_subscriptions(wanted, &listed);
    if missing.is_empty() && paused.is_empty() {
        return row(
            portal,
            Verdict::Ok,
            format!(
                "all {} subscriptions dealsync needs are active",
                wanted.len()
            ),
        );
    }
    let list = |v: &[String]| {
        let shown: Vec<&str> = v.iter().take(5).map(String::as_str).collect();
        let more = v.len().saturating_sub(5);
        let mut s = shown.join(", ");
        if more > 0 {
            s.push_str(&format!(" and {more} more"));
        }
        s
    };
    let mut seen = Vec::new();
    if !missing.is_empty() {
        seen.push(format!("missing: {}", list(&missing)));
    }
    if !paused.is_empty() {
        seen.push(format!("paused: {}", list(&paused)));
    }
    row(portal, Verdict::Missing, seen.join("; "))
}

/// What dealsync needs that the app lacks, and what it has but paused (labels).
pub fn compare_subscriptions(
    wanted: &[crate::project::Subscription],
    listed: &[Value],
) -> (Vec<String>, Vec<String>) {
    let (mut missing, mut paused) = (Vec::new(), Vec::new());
    for w in wanted {
        let found = listed.iter().find(|l| {
            l["eventType"].as_str() == Some(w.event_type.as_str())
                && l["propertyName"].as_str() == w.property.as_deref()
                && w.object_type_id
                    .is_none_or(|t| l["objectTypeId"].as_str() == Some(t))
        });
        match found {
            None => missing.push(w.label()),
            Some(l) if l["active"] == Value::Bool(false) => paused.push(w.label()),
            Some(_) => {}
        }
    }
    (missing, paused)
}

/// Which marking the portal's shared messages get, from the note-properties check.
fn marking(r: &mut Recorder<'_>) {
    use crate::engine::marking::MarkingChoice;
    let props = r
        .checks
        .iter()
        .find(|c| c.capability == Capability::NoteProperties)
        .map(|c| c.verdict);
    let tag = r.needs.tag.clone();
    let (verdict, seen) = match (r.needs.marking, props) {
        (MarkingChoice::Tag, _) => (
            Verdict::Ok,
            format!("tag (configured): notes whose text starts with {tag} are shared"),
        ),
        (MarkingChoice::Property, _) => (
            Verdict::Ok,
            "property (configured): dealsync_visibility = shared".to_owned(),
        ),
        (MarkingChoice::Auto, Some(Verdict::Ok)) => (
            Verdict::Ok,
            "property: the portal takes custom note properties (dealsync_visibility = shared)"
                .to_owned(),
        ),
        (MarkingChoice::Auto, Some(Verdict::Missing)) => (
            Verdict::Ok,
            format!("tag: the portal refuses custom note properties, so notes whose text starts with {tag} are shared"),
        ),
        (MarkingChoice::Auto, _) => (
            Verdict::Unchecked,
            "unknown until the note-properties check answers".to_owned(),
        ),
    };
    r.put(Capability::MessageMarking, verdict, seen);
}

impl Report {
    /// Whether setup should create dealsync's note properties in `portal`: property marking
    /// configured, or `auto` where the portal takes custom note properties.
    pub fn wants_note_properties(
        &self,
        portal: &str,
        choice: crate::engine::marking::MarkingChoice,
    ) -> bool {
        use crate::engine::marking::MarkingChoice;
        match choice {
            MarkingChoice::Property => true,
            MarkingChoice::Tag => false,
            MarkingChoice::Auto => self.checks.iter().any(|c| {
                c.portal == portal
                    && c.capability == Capability::NoteProperties
                    && c.verdict == Verdict::Ok
            }),
        }
    }
}

/// Lists deals: the token, the API version and the deals scope at once. Returns a deal id to
/// read associations of (`0` in an empty portal), or `None` when nothing further can be
/// checked.
async fn first_read(client: &Client, r: &mut Recorder<'_>) -> Option<String> {
    let version = format!("objects at {}", client.versions().objects.as_str());
    let after = [
        Capability::ReadOwners,
        Capability::ReadQuotes,
        Capability::ReadAssociations,
    ];
    match get(client, Op::Objects { object: "deals" }).await {
        Ok(v) => {
            r.put(Capability::Token, Verdict::Ok, "accepted");
            r.put(Capability::ApiVersion, Verdict::Ok, version);
            r.put(Capability::ReadDeals, Verdict::Ok, "listed");
            let first = v.pointer("/results/0/id").and_then(Value::as_str);
            Some(first.unwrap_or("0").to_owned())
        }
        Err(e) if e.status() == Some(403) => {
            r.put(Capability::Token, Verdict::Ok, "accepted");
            r.put(Capability::ApiVersion, Verdict::Ok, version);
            r.put(Capability::ReadDeals, Verdict::Missing, e.to_string());
            Some("0".to_owned())
        }
        Err(e) => {
            // 404: the version's path is not served; anything else is the token's or the
            // portal's answer to any call.
            let first = match e.status() {
                Some(404) => Capability::ApiVersion,
                _ => Capability::Token,
            };
            r.put(first, verdict_of(&e), e.to_string());
            let rest = format!("not checked: {} failed", first.label());
            for c in [
                Capability::Token,
                Capability::ApiVersion,
                Capability::ReadDeals,
            ]
            .into_iter()
            .chain(after)
            .filter(|c| *c != first)
            .filter(|c| *c != Capability::ReadQuotes || r.needs.side == Side::Hubspot)
            {
                r.put(c, Verdict::Unchecked, rest.clone());
            }
            None
        }
    }
}

/// `GET` the first page (one record) of a list.
async fn get(client: &Client, op: Op<'_>) -> Result<Value, CrmError> {
    let path = format!("{}?limit=1", client.path(op));
    client
        .call(reqwest::Method::GET, &path, None, CallKind::Ordinary)
        .await
}

/// Custom deal properties: dealsync's own if they exist, else a temporary one.
async fn deal_properties(client: &Client, r: &mut Recorder<'_>, nonce: &str) {
    let wanted: Vec<String> = properties::deal_properties()
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    match Schema::read(client, "deals").await {
        Err(e) => r.put(Capability::DealProperties, verdict_of(&e), e.to_string()),
        Ok(s) if wanted.iter().all(|w| s.has(w)) => r.put(
            Capability::DealProperties,
            Verdict::Ok,
            "dealsync's deal properties exist",
        ),
        Ok(s) => {
            let made = s.try_property(client, nonce, "deal", false).await;
            if let Ok(name) = &made {
                archive_property(client, "deals", name).await;
            }
            r.result(
                Capability::DealProperties,
                &made,
                "a temporary property was created and archived",
            );
        }
    }
}

/// A portal's properties and groups of one object type.
struct Schema {
    object: &'static str,
    inner: crate::crm::Schema,
}

impl Schema {
    async fn read(client: &Client, object: &'static str) -> Result<Schema, CrmError> {
        Ok(Schema {
            object,
            inner: client.schema(object).await?,
        })
    }

    fn has(&self, name: &str) -> bool {
        self.inner.has(name)
    }

    fn unique(&self, name: &str) -> bool {
        self.inner.unique(name)
    }

    /// Creates a temporary property (in dealsync's group if it exists, else the first one)
    /// and returns its name; the caller archives it.
    async fn try_property(
        &self,
        client: &Client,
        nonce: &str,
        kind: &str,
        unique: bool,
    ) -> Result<String, CrmError> {
        let group = self
            .inner
            .groups
            .iter()
            .find(|g| *g == properties::GROUP)
            .or(self.inner.groups.first())
            .cloned()
            .unwrap_or_else(|| properties::GROUP.to_owned());
        let name = properties::probe_name(kind, nonce);
        let mut def = json!({
            "name": name, "label": format!("dealsync probe {nonce} (archived at once)"),
            "type": "string", "fieldType": "text", "groupName": group,
        });
        if unique {
            def["hasUniqueValue"] = json!(true);
        }
        let object = self.object;
        client
            .call(
                reqwest::Method::POST,
                &client.path(Op::Properties { object }),
                Some(&def),
                CallKind::Ordinary,
            )
            .await?;
        Ok(name)
    }
}

/// Archives a temporary property; a failure is reported, not fatal.
async fn archive_property(client: &Client, object: &str, name: &str) {
    let archived = client
        .call(
            reqwest::Method::DELETE,
            &client.path(Op::Property { object, name }),
            None,
            CallKind::Ordinary,
        )
        .await;
    if let Err(e) = archived {
        tracing::warn!(portal = %client.portal(), property = name, error = %e, "cannot archive the probe's temporary property; archive it in the portal's settings");
    }
}

/// A note's properties: unassociated, with a body that says what it is.
fn probe_note(nonce: &str) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert(
        "hs_note_body".into(),
        json!(format!(
            "dealsync probe {nonce}: an unassociated note, archived at once"
        )),
    );
    p.insert(
        "hs_timestamp".into(),
        json!(crate::time::iso(crate::time::now_ms())),
    );
    p
}

/// Notes: read, write, search, then the three unconfirmed features.
async fn notes(client: &Client, r: &mut Recorder<'_>, nonce: &str) {
    let read = get(client, Op::Objects { object: "notes" }).await;
    let written = match read {
        Ok(_) => client
            .create("notes", &probe_note(nonce), json!([]))
            .await
            .map(|n| n.id),
        Err(e) => Err(e),
    };
    if let Ok(id) = &written {
        archive_note(client, id).await;
    }
    r.result(
        Capability::Notes,
        &written,
        "listed; an unassociated note was created and archived",
    );
    let search = client
        .search(
            "notes",
            &json!({ "limit": 1, "properties": ["hs_lastmodifieddate"] }),
        )
        .await;
    r.result(Capability::NoteSearch, &search, "searched");
    match Schema::read(client, "notes").await {
        Ok(s) => note_features(client, r, &s, nonce).await,
        Err(e) => {
            for c in [
                Capability::NoteProperties,
                Capability::UniqueNoteProperty,
                Capability::NoteUpsert,
            ] {
                r.put(c, verdict_of(&e), e.to_string());
            }
        }
    }
}

async fn archive_note(client: &Client, id: &str) {
    if let Err(e) = client.archive("notes", id).await {
        tracing::warn!(portal = %client.portal(), note = id, error = %e, "cannot archive the probe's note; it is unassociated, archive it by hand");
    }
}

/// Custom note properties, a unique one, and upsert on it.
async fn note_features(client: &Client, r: &mut Recorder<'_>, s: &Schema, nonce: &str) {
    let ours: Vec<String> = properties::note_properties()
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    let mut temporary = Vec::new();
    if ours.iter().all(|n| s.has(n)) {
        r.put(
            Capability::NoteProperties,
            Verdict::Ok,
            "dealsync's note properties exist",
        );
    } else {
        let made = s.try_property(client, nonce, "note", false).await;
        r.result(
            Capability::NoteProperties,
            &made,
            "a temporary property was created and archived",
        );
        temporary.extend(made.ok());
    }
    let key = if s.unique(properties::ORIGIN) {
        r.put(
            Capability::UniqueNoteProperty,
            Verdict::Ok,
            format!("{} is unique", properties::ORIGIN),
        );
        Some(properties::ORIGIN.to_owned())
    } else {
        let made = s.try_property(client, nonce, "unique", true).await;
        r.result(
            Capability::UniqueNoteProperty,
            &made,
            "a temporary unique property was created and archived",
        );
        temporary.extend(made.as_ref().ok().cloned());
        made.ok()
    };
    match key {
        Some(key) => {
            let upserted = client
                .batch_upsert(
                    "notes",
                    &key,
                    &[(format!("probe:{nonce}"), probe_note(nonce))],
                )
                .await;
            for n in upserted.iter().flatten() {
                archive_note(client, &n.id).await;
            }
            r.result(
                Capability::NoteUpsert,
                &upserted,
                "an unassociated note was upserted and archived",
            );
        }
        None => r.put(
            Capability::NoteUpsert,
            Verdict::Unchecked,
            "needs a unique note property",
        ),
    }
    for name in temporary {
        archive_property(client, "notes", &name).await;
    }
}

/// Upload a small private file, ask for its signed URL, delete it.
async fn files(client: &Client, r: &mut Recorder<'_>, nonce: &str) {
    let name = format!("dealsync-probe-{nonce}.txt");
    let body = b"dealsync probe: deleted at once".to_vec();
    let folder = r.needs.folder.clone();
    let checked = async {
        let id = client.upload_file(&name, body, &folder).await?;
        let signed = client
            .call(
                reqwest::Method::GET,
                &client.path(Op::FileSignedUrl { id: &id }),
                None,
                CallKind::Ordinary,
            )
            .await;
        if let Err(e) = client.delete_file(&id).await {
            tracing::warn!(portal = %client.portal(), file = %id, error = %e, "cannot delete the probe's file; delete it in the file manager");
        }
        signed
    }
    .await;
    r.result(
        Capability::Files,
        &checked,
        format!("uploaded to {folder}, signed URL read, deleted").as_str(),
    );
}

/// The limits the portal stated, against the configured budget.
fn rate_limits(stated: Option<ReportedLimits>, r: &mut Recorder<'_>) {
    // HubSpot states its limits on every answer; a portal that states none (a proxy, the
    // sandbox with limits off) has nothing to hold the budget against.
    let Some(l) = stated else {
        let seen = format!(
            "no X-HubSpot-RateLimit headers: the configured {} / 10 s is used as is",
            r.needs.per_10s
        );
        r.put(Capability::RateLimits, Verdict::Ok, seen);
        return;
    };
    let per_10s = match (l.max, l.interval_ms) {
        (Some(max), Some(ms)) if ms > 0 => Some(max * 10_000 / ms),
        _ => None,
    };
    let mut seen = per_10s.map_or("no window stated".to_owned(), |n| {
        format!("{n} calls / 10 s stated")
    });
    if let Some(d) = l.daily {
        seen.push_str(&format!(", {d} a day"));
    }
    seen.push_str(&format!(", configured {}", r.needs.per_10s));
    let verdict = match per_10s {
        Some(n) if u64::from(r.needs.per_10s) > n => Verdict::Missing,
        _ => Verdict::Ok,
    };
    r.put(Capability::RateLimits, verdict, seen);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::marking::MarkingChoice;

    fn needs(messages: bool) -> Needs {
        Needs {
            side: Side::Partner,
            messages,
            marking: MarkingChoice::Auto,
            tag: "#shared".into(),
            folder: "/dealsync".into(),
            per_10s: 100,
        }
    }

    fn check(c: Capability, verdict: Verdict, required: bool) -> Check {
        Check {
            portal: "partner-a".into(),
            capability: c,
            verdict,
            required,
            seen: "seen".into(),
        }
    }

    #[test]
    fn note_features_are_required_only_with_messages() {
        for c in [Capability::Notes, Capability::NoteSearch, Capability::Files] {
            assert!(needs(true).requires(c), "{c:?}");
            assert!(!needs(false).requires(c), "{c:?}");
        }
        // Custom note properties only for property marking: auto and tag fall back on tags.
        let property = |marking| Needs {
            marking,
            ..needs(true)
        };
        assert!(property(MarkingChoice::Property).requires(Capability::NoteProperties));
        for m in [MarkingChoice::Auto, MarkingChoice::Tag] {
            assert!(!property(m).requires(Capability::NoteProperties), "{m:?}");
        }
        // Copies are created with their association: upsert and a unique key are optional.
        for c in [Capability::UniqueNoteProperty, Capability::NoteUpsert] {
            assert!(!property(MarkingChoice::Property).requires(c), "{c:?}");
        }
        assert!(!needs(true).requires(Capability::ReadQuotes));
        let hubspot = Needs {
            side: Side::Hubspot,
            ..needs(true)
        };
        assert!(hubspot.requires(Capability::ReadQuotes));
    }

    #[test]
    fn ready_only_when_every_required_capability_is_ok() {
        let mut report = Report {
            checks: vec![
                check(Capability::Token, Verdict::Ok, true),
                check(Capability::WebhookSubscriptions, Verdict::Unchecked, false),
            ],
        };
        assert!(report.ready());
        report
            .checks
            .push(check(Capability::NoteUpsert, Verdict::Unchecked, true));
        assert!(!report.ready());
        assert!(report.only_unanswered());
        report
            .checks
            .push(check(Capability::NoteProperties, Verdict::Missing, true));
        assert!(!report.only_unanswered());
        let table = report.table();
        assert!(table.contains("custom note properties"), "{table}");
        assert!(
            table.contains(Capability::NoteProperties.remedy()),
            "{table}"
        );
        assert!(table.contains("unchecked (optional)"), "{table}");
    }

    #[test]
    fn a_budget_above_the_stated_limit_is_missing() {
        let mut r = Recorder {
            portal: "p".into(),
            needs: &Needs {
                per_10s: 190,
                ..needs(false)
            },
            checks: Vec::new(),
        };
        let stated = ReportedLimits {
            max: Some(100),
            interval_ms: Some(10_000),
            daily: Some(250_000),
            ..ReportedLimits::default()
        };
        rate_limits(Some(stated), &mut r);
        rate_limits(None, &mut r);
        assert_eq!(r.checks[0].verdict, Verdict::Missing);
        assert!(
            r.checks[0].seen.contains("100 calls / 10 s"),
            "{}",
            r.checks[0].seen
        );
        assert_eq!(
            r.checks[1].verdict,
            Verdict::Ok,
            "no headers: nothing to hold it against"
        );
    }
}
