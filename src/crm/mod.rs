//! The HubSpot client: typed calls for the endpoints dealsync uses, batching (100 objects per
//! call), a per-portal rate budget, timeouts, and retries with exponential backoff and jitter
//! (`backon`) for transient failures only. Every error is classified once, in
//! [`CrmError::class`].
//!
//! The client never logs or returns its token.

mod budget;
mod error;
mod paths;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::Method;
use serde_json::{json, Map, Value};

pub use budget::{Budget, CallKind};
pub use error::{CrmError, ErrorClass};
pub use paths::{ApiVersion, ApiVersions, AssocAction, BatchAction, Op, Surface, VersionError};

/// HubSpot's batch size.
pub const BATCH: usize = 100;
/// Inputs per batch read that asks for `propertiesWithHistory`.
pub const HISTORY_BATCH: usize = 50;
/// Ids per associations batch read.
pub const ASSOC_BATCH: usize = 1_000;
/// HubSpot's search page size.
pub const SEARCH_PAGE: usize = 200;

/// How a client retries transient failures within one call.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 4,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A CRM record as dealsync reads it.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub id: String,
    pub properties: HashMap<String, Option<String>>,
    /// Newest change time per property (from `propertiesWithHistory`), in ms.
    pub changed_at: HashMap<String, i64>,
    pub updated_at_ms: Option<i64>,
    pub archived: bool,
}

impl Record {
    pub fn get(&self, prop: &str) -> Option<&str> {
        self.properties
            .get(prop)
            .and_then(|v| v.as_deref())
            .filter(|v| !v.is_empty())
    }

    fn parse(v: &Value) -> Option<Record> {
        let id = v.get("id")?.as_str()?.to_owned();
        let mut r = Record {
            id,
            archived: v.get("archived").and_then(Value::as_bool).unwrap_or(false),
            updated_at_ms: v
                .get("updatedAt")
                .and_then(Value::as_str)
                .and_then(parse_ms),
            ..Record::default()
        };
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, val) in props {
                r.properties
                    .insert(k.clone(), val.as_str().map(str::to_owned));
            }
        }
        if let Some(hist) = v.get("propertiesWithHistory").and_then(Value::as_object) {
            for (k, entries) in hist {
                let newest = entries
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| {
                        e.get("timestamp")
                            .and_then(Value::as_str)
                            .and_then(parse_ms)
                    })
                    .max();
                if let Some(ts) = newest {
                    r.changed_at.insert(k.clone(), ts);
                }
            }
        }
        Some(r)
    }

    /// `hs_lastmodifieddate` in ms.
    pub fn last_modified_ms(&self) -> Option<i64> {
        self.get("hs_lastmodifieddate")
            .and_then(parse_ms)
            .or(self.updated_at_ms)
    }
}

pub use crate::time::parse_ms;

/// Outcome of a batch write: records written, and per-id failures.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub written: Vec<Record>,
    pub failed: Vec<(String, CrmError)>,
}

/// What copying one file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileCopy {
    /// The new file's id in the destination portal.
    Copied(String),
    /// The source file is gone (404) or its URL no longer serves it.
    Missing,
    /// The file is larger than the configured limit (its size in bytes).
    TooLarge(u64),
}

/// A portal's user, as its deal owner and deal team name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub id: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
}

impl Owner {
    /// "First Last <email>", or just the email when the name is blank. Control characters
    /// are dropped: a name with a line break must not pose as another line of a team list.
    pub fn label(&self) -> String {
        let name: String = format!("{} {}", self.first_name, self.last_name)
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        let name = name.trim();
        if name.is_empty() {
            self.email.clone()
        } else {
            format!("{name} <{}>", self.email)
        }
    }
}

/// HubSpot's association type of a note to a deal (HUBSPOT-API.md §1.2).
pub const NOTE_TO_DEAL: u32 = 214;

/// The `associations` of a create call linking the new record to a deal with `type_id`.
pub fn to_deal(deal_id: &str, type_id: u32) -> Value {
    json!([{ "to": { "id": deal_id }, "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id }] }])
}

/// The `results` of a list answer.
fn listed(v: &Value) -> impl Iterator<Item = &Value> {
    v.get("results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// An object's properties and property groups, as the properties API lists them.
#[derive(Debug, Default)]
pub struct Schema {
    /// (name, hasUniqueValue).
    pub properties: Vec<(String, bool)>,
    pub groups: Vec<String>,
}

impl Schema {
    pub fn has(&self, name: &str) -> bool {
        self.properties.iter().any(|(n, _)| n == name)
    }

    pub fn unique(&self, name: &str) -> bool {
        self.properties.iter().any(|(n, u)| n == name && *u)
    }
}

/// One page of search results.
#[derive(Debug, Default)]
pub struct SearchPage {
    pub records: Vec<Record>,
    pub total: u64,
    pub next_after: Option<String>,
}

/// How a client authenticates: a static token (a static-auth app installed in one account, or
/// a service key for a polling-only portal) or an OAuth install's access tokens.
#[derive(Clone)]
pub enum Auth {
    Static(Arc<str>),
    OAuth(Arc<crate::oauth::Session>),
}

impl Auth {
    async fn token(&self) -> Result<String, CrmError> {
        match self {
            Auth::Static(t) => Ok(t.to_string()),
            Auth::OAuth(s) => s.access_token().await,
        }
    }
}

/// The one HTTP client of the process, shared by every portal (and the OAuth token calls):
/// one connection pool and one TLS configuration instead of one per portal, which at a
/// thousand partner portals was most of an idle daemon's memory (issue 20 item 7). A call's
/// timeout is set per request (its portal's `request_timeout_ms`); the client's own default
/// only bounds requests that set none.
pub fn shared_http() -> Result<reqwest::Client, String> {
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(c) = HTTP.get() {
        return Ok(c.clone());
    }
    let built = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("dealsync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())?;
    Ok(HTTP.get_or_init(|| built).clone())
}

/// A client for one portal.
#[derive(Clone)]
pub struct Client {
    portal: String,
    base: String,
    auth: Auth,
    http: reqwest::Client,
    budget: Arc<Budget>,
    retry: RetryPolicy,
    versions: ApiVersions,
    /// The limits the portal's last answer reported in its headers.
    reported: Arc<std::sync::Mutex<Option<ReportedLimits>>>,
}

/// The limits a portal states in its `X-HubSpot-RateLimit-*` headers (HubSpot's "API usage
/// guidelines and limits" page names them; the sandbox sends the same).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReportedLimits {
    /// Calls per window (`-Max`) and the window (`-Interval-Milliseconds`).
    pub max: Option<u64>,
    pub interval_ms: Option<u64>,
    /// Calls per second (`-Secondly`), where the portal states it.
    pub secondly: Option<u64>,
    /// Calls per day (`-Daily`) and what is left of them (`-Daily-Remaining`).
    pub daily: Option<u64>,
    pub daily_remaining: Option<u64>,
}

impl ReportedLimits {
    fn from_headers(h: &reqwest::header::HeaderMap) -> Option<ReportedLimits> {
        let num = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let limits = ReportedLimits {
            max: num("x-hubspot-ratelimit-max"),
            interval_ms: num("x-hubspot-ratelimit-interval-milliseconds"),
            secondly: num("x-hubspot-ratelimit-secondly"),
            daily: num("x-hubspot-ratelimit-daily"),
            daily_remaining: num("x-hubspot-ratelimit-daily-remaining"),
        };
        (limits != ReportedLimits::default()).then_some(limits)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("portal", &self.portal)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(
        portal: &str,
        base_url: &str,
        token: &str,
        budget: Arc<Budget>,
        retry: RetryPolicy,
    ) -> Result<Client, CrmError> {
        let http = shared_http().map_err(|detail| CrmError::Connect {
            portal: portal.to_owned(),
            call: "client setup".into(),
            detail,
        })?;
        Ok(Client {
            portal: portal.to_owned(),
            base: base_url.trim_end_matches('/').to_owned(),
            auth: Auth::Static(Arc::from(token)),
            http,
            budget,
            retry,
            versions: ApiVersions::default(),
            reported: Arc::default(),
        })
    }

    /// The same client authenticating with `auth` instead of the static token it was made
    /// with.
    pub fn with_auth(mut self, auth: Auth) -> Client {
        self.auth = auth;
        self
    }

    /// The OAuth session, when the portal uses one.
    pub fn oauth(&self) -> Option<&Arc<crate::oauth::Session>> {
        match &self.auth {
            Auth::OAuth(s) => Some(s),
            Auth::Static(_) => None,
        }
    }

    /// The same client calling each surface at `versions` (default: [`ApiVersions::default`]).
    pub fn with_versions(mut self, versions: ApiVersions) -> Client {
        self.versions = versions;
        self
    }

    pub fn versions(&self) -> &ApiVersions {
        &self.versions
    }

    /// The path of `op` at this portal's configured version.
    pub fn path(&self, op: Op<'_>) -> String {
        self.versions.path(&op)
    }

    pub fn portal(&self) -> &str {
        &self.portal
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// The limits the portal's latest answer stated, if it stated any.
    pub fn reported_limits(&self) -> Option<ReportedLimits> {
        *self.reported.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One HTTP call with the budget, classification and retries.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        kind: CallKind,
    ) -> Result<Value, CrmError> {
        self.call_retrying(method, path, body, kind, CrmError::is_transient)
            .await
    }

    /// [`Client::call`] for a write that must not be repeated blind (a create: a second one
    /// makes a second record). Retried only after a 429, which HubSpot answers without
    /// applying the call; a 5xx or a timeout may have applied it and is returned, for the
    /// caller to look before it writes again.
    pub async fn call_unrepeated(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CrmError> {
        self.call_retrying(method, path, body, CallKind::Ordinary, |e| {
            e.status() == Some(429)
        })
        .await
    }

    async fn call_retrying(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        kind: CallKind,
        retry_when: fn(&CrmError) -> bool,
    ) -> Result<Value, CrmError> {
        let call_name = format!("{method} {}", path.split('?').next().unwrap_or(path));
        // Inputs only, never the body: it can carry note text and property values.
        let inputs = body
            .and_then(|b| b.get("inputs"))
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        tracing::debug!(portal = %self.portal, call = %call_name, inputs, "HubSpot call");
        let attempt = || self.once(method.clone(), path, body, kind, &call_name);
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(self.retry.min_delay)
                    .with_max_delay(self.retry.max_delay)
                    .with_max_times(self.retry.max_retries)
                    .with_jitter(),
            )
            .when(retry_when)
            // Honour Retry-After, but only while the backoff still allows a retry (`d` is
            // `None` once retries are exhausted): a portal stuck at a limit must not hang us.
            .adjust(|e, d| match (e, d) {
                (CrmError::Http { retry_after: Some(r), .. }, Some(_)) => Some(*r),
                (_, d) => d,
            })
            .notify(|e, d| {
                tracing::debug!(portal = %self.portal, error = %e, delay_ms = d.as_millis() as u64, "retrying HubSpot call");
            })
            .await
    }

    /// One request; with OAuth, a 401 drops the access token and the request is made once
    /// more with a fresh one (HubSpot may retire a token before the expiry it announced).
    async fn once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        kind: CallKind,
        call: &str,
    ) -> Result<Value, CrmError> {
        let token = self.auth.token().await?;
        match self
            .send(method.clone(), path, body, kind, call, &token)
            .await
        {
            Err(e) if e.status() == Some(401) => match &self.auth {
                Auth::OAuth(session) => {
                    session.invalidate(&token).await;
                    let token = self.auth.token().await?;
                    self.send(method, path, body, kind, call, &token).await
                }
                Auth::Static(_) => Err(e),
            },
            other => other,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        kind: CallKind,
        call: &str,
        token: &str,
    ) -> Result<Value, CrmError> {
        let slot = self.budget.acquire(kind).await;
        let mut rb = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .timeout(self.retry.timeout)
            .bearer_auth(token);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.map_err(|e| self.transport_error(call, e));
        // The server has counted the call by now (or never will).
        drop(slot);
        self.answer(resp?, call).await
    }

    /// Reads an answer: the JSON body of a 2xx, or the classified error.
    async fn answer(&self, resp: reqwest::Response, call: &str) -> Result<Value, CrmError> {
        let status = resp.status().as_u16();
        if let Some(limits) = ReportedLimits::from_headers(resp.headers()) {
            *self.reported.lock().unwrap_or_else(|e| e.into_inner()) = Some(limits);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            // HubSpot's longest window is a day; anything longer is a broken header.
            .map(|s| Duration::from_secs(s.min(86_400)));
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(call, e))?;
        if (200..300).contains(&status) {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| CrmError::Decode {
                portal: self.portal.clone(),
                call: call.to_owned(),
                detail: e.to_string(),
            });
        }
        let err: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let text = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_owned);
        let category = text("category")
            .or_else(|| text("errorType"))
            .unwrap_or_else(|| "UNKNOWN".into());
        let mut message = text("message")
            .unwrap_or_else(|| format!("HTTP {status} without a HubSpot error body"));
        if let Some(scopes) = required_scopes(&err) {
            message.push_str(&format!(" (required scopes: {scopes})"));
        }
        let retry_after = if status == 429 {
            // Honour the window HubSpot names; without Retry-After, wait it out.
            let d = retry_after.unwrap_or(match text("policyName").as_deref() {
                Some("SECONDLY") => Duration::from_secs(1),
                Some("DAILY") => Duration::from_secs(600),
                _ => Duration::from_secs(10),
            });
            self.budget.pause(d);
            tracing::warn!(portal = %self.portal, call, wait_ms = d.as_millis() as u64, "HubSpot rate limit hit; pausing this portal");
            Some(d)
        } else {
            None
        };
        Err(CrmError::Http {
            portal: self.portal.clone(),
            call: call.to_owned(),
            status,
            category,
            message,
            retry_after,
        })
    }

    fn transport_error(&self, call: &str, e: reqwest::Error) -> CrmError {
        if e.is_timeout() {
            CrmError::Timeout {
                portal: self.portal.clone(),
                call: call.to_owned(),
            }
        } else if e.is_decode() || e.is_body() {
            CrmError::Decode {
                portal: self.portal.clone(),
                call: call.to_owned(),
                detail: e.to_string(),
            }
        } else {
            // reqwest's text can include the URL but never the Authorization header.
            CrmError::Connect {
                portal: self.portal.clone(),
                call: call.to_owned(),
                detail: e.to_string(),
            }
        }
    }

    /// Reads records by id, 100 per call. Ids that do not exist (or are archived) are absent
    /// from the result.
    pub async fn batch_read(
        &self,
        object: &str,
        ids: &[String],
        props: &[String],
        with_history: bool,
    ) -> Result<Vec<Record>, CrmError> {
        let history: &[String] = if with_history { props } else { &[] };
        self.batch_read_with_history(object, ids, props, history)
            .await
    }

    /// [`Client::batch_read`] with the change history of `history` only.
    pub async fn batch_read_with_history(
        &self,
        object: &str,
        ids: &[String],
        props: &[String],
        history: &[String],
    ) -> Result<Vec<Record>, CrmError> {
        let mut out = Vec::with_capacity(ids.len());
        // HubSpot refuses more than 50 inputs when histories are asked for ("The maximum
        // number of inputs supported in a batch request for property histories is 50").
        let size = if history.is_empty() {
            BATCH
        } else {
            HISTORY_BATCH
        };
        for chunk in ids.chunks(size) {
            let mut body = json!({
                "inputs": chunk.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>(),
                "properties": props,
            });
            if !history.is_empty() {
                body["propertiesWithHistory"] = json!(history);
            }
            let v = self
                .call(
                    Method::POST,
                    &self.path(Op::Batch {
                        object,
                        action: BatchAction::Read,
                    }),
                    Some(&body),
                    CallKind::Ordinary,
                )
                .await?;
            out.extend(records(&v, &self.portal, "batch read")?);
        }
        Ok(out)
    }

    /// Updates records, 100 per call. Per-record failures (207) come back in `failed`; a
    /// whole-call failure fails every id of that call.
    pub async fn batch_update(
        &self,
        object: &str,
        updates: &[(String, Map<String, Value>)],
    ) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        for chunk in updates.chunks(BATCH) {
            let body = json!({
                // A distinct objectWriteTraceId per input lets HubSpot fail one input alone
                // (a portal rule, a bad value) instead of the whole call (docs "Error handling").
                "inputs": chunk.iter().map(|(id, p)| json!({ "id": id, "properties": p, "objectWriteTraceId": id })).collect::<Vec<_>>(),
            });
            match self
                .call(
                    Method::POST,
                    &self.path(Op::Batch {
                        object,
                        action: BatchAction::Update,
                    }),
                    Some(&body),
                    CallKind::Ordinary,
                )
                .await
            {
                Ok(v) => {
                    let errors = v
                        .get("errors")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let written = match records(&v, &self.portal, "batch update") {
                        Ok(w) => w,
                        // A 207 with only errors may carry no results at all.
                        Err(_) if !errors.is_empty() => Vec::new(),
                        // A 2xx of the wrong shape says nothing about any id: transient.
                        Err(e) => {
                            out.failed
                                .extend(chunk.iter().map(|(id, _)| (id.clone(), e.clone())));
                            continue;
                        }
                    };
                    let sent: std::collections::HashSet<&str> =
                        chunk.iter().map(|(id, _)| id.as_str()).collect();
                    // Only what we sent counts as written.
                    let written: Vec<Record> = written
                        .into_iter()
                        .filter(|r| sent.contains(r.id.as_str()))
                        .collect();
                    let done: std::collections::HashSet<&str> =
                        written.iter().map(|r| r.id.as_str()).collect();
                    for (id, _) in chunk {
                        if !done.contains(id.as_str()) {
                            let err = match errors
                                .iter()
                                .find(|e| error_mentions(e, id))
                                .or(errors.first())
                            {
                                Some(why) => {
                                    batch_error(&self.portal, Some(why)).on_record(object, id)
                                }
                                // Neither written nor named in an error: a broken answer.
                                None => decode(
                                    &self.portal,
                                    "batch update",
                                    "the answer neither wrote this record nor gave an error",
                                ),
                            };
                            out.failed.push((id.clone(), err));
                        }
                    }
                    out.written.extend(written);
                }
                Err(e) => out
                    .failed
                    .extend(chunk.iter().map(|(id, _)| (id.clone(), e.clone()))),
            }
        }
        out
    }

    /// An object's properties (with whether each has unique values) and property groups.
    pub async fn schema(&self, object: &str) -> Result<Schema, CrmError> {
        let properties = self.property_names(object).await?;
        let groups = self
            .call(
                Method::GET,
                &self.path(Op::PropertyGroups { object }),
                None,
                CallKind::Ordinary,
            )
            .await?;
        Ok(Schema {
            properties,
            groups: listed(&groups)
                .filter_map(|g| g.get("name")?.as_str().map(str::to_owned))
                .collect(),
        })
    }

    /// An object's property names, each with whether it has unique values.
    pub async fn property_names(&self, object: &str) -> Result<Vec<(String, bool)>, CrmError> {
        let v = self
            .call(
                Method::GET,
                &self.path(Op::Properties { object }),
                None,
                CallKind::Ordinary,
            )
            .await?;
        Ok(listed(&v)
            .filter_map(|p| {
                let name = p.get("name")?.as_str()?.to_owned();
                Some((name, p.get("hasUniqueValue") == Some(&Value::Bool(true))))
            })
            .collect())
    }

    /// One search page.
    pub async fn search(&self, object: &str, body: &Value) -> Result<SearchPage, CrmError> {
        let v = self
            .call(
                Method::POST,
                &self.path(Op::Search { object }),
                Some(body),
                CallKind::Search,
            )
            .await?;
        Ok(SearchPage {
            records: records(&v, &self.portal, "search")?,
            total: v.get("total").and_then(Value::as_u64).unwrap_or(0),
            next_after: v.pointer("/paging/next/after").and_then(|a| {
                a.as_str()
                    .map(str::to_owned)
                    .or_else(|| a.as_u64().map(|n| n.to_string()))
            }),
        })
    }

    pub async fn create(
        &self,
        object: &str,
        properties: &Map<String, Value>,
        associations: Value,
    ) -> Result<Record, CrmError> {
        let body = json!({ "properties": properties, "associations": associations });
        let v = self
            .call(
                Method::POST,
                &self.path(Op::Objects { object }),
                Some(&body),
                CallKind::Ordinary,
            )
            .await?;
        Record::parse(&v).ok_or_else(|| decode(&self.portal, "create", "no id in the answer"))
    }

    pub async fn update(
        &self,
        object: &str,
        id: &str,
        properties: &Map<String, Value>,
    ) -> Result<Record, CrmError> {
        let body = json!({ "properties": properties });
        let v = self
            .call(
                Method::PATCH,
                &self.path(Op::Object { object, id }),
                Some(&body),
                CallKind::Ordinary,
            )
            .await?;
        Record::parse(&v).ok_or_else(|| decode(&self.portal, "update", "no id in the answer"))
    }

    /// Reads one record; `None` when it does not exist or is archived.
    pub async fn get(
        &self,
        object: &str,
        id: &str,
        props: &[String],
    ) -> Result<Option<Record>, CrmError> {
        let path = format!(
            "{}?properties={}",
            self.path(Op::Object { object, id }),
            props.join(",")
        );
        match self
            .call(Method::GET, &path, None, CallKind::Ordinary)
            .await
        {
            Ok(v) => Ok(Record::parse(&v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The id of the archived record (recycle bin) holding a unique property's value, if any:
    /// how a retry tells "my copy never existed" from "a person deleted it".
    pub async fn archived_id_by(
        &self,
        object: &str,
        value: &str,
        id_property: &str,
    ) -> Result<Option<String>, CrmError> {
        let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let path = format!(
            "{}?idProperty={id_property}&archived=true&properties={id_property}",
            self.path(Op::Object { object, id: &value }),
        );
        match self
            .call(Method::GET, &path, None, CallKind::Ordinary)
            .await
        {
            Ok(v) => Ok(Record::parse(&v).filter(|r| r.archived).map(|r| r.id)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads one record by a unique property's value; `None` when none holds it.
    pub async fn get_by(
        &self,
        object: &str,
        value: &str,
        id_property: &str,
        props: &[String],
    ) -> Result<Option<Record>, CrmError> {
        let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let path = format!(
            "{}?idProperty={id_property}&properties={}",
            self.path(Op::Object { object, id: &value }),
            props.join(",")
        );
        match self
            .call(Method::GET, &path, None, CallKind::Ordinary)
            .await
        {
            Ok(v) => Ok(Record::parse(&v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn archive(&self, object: &str, id: &str) -> Result<(), CrmError> {
        self.call(
            Method::DELETE,
            &self.path(Op::Object { object, id }),
            None,
            CallKind::Ordinary,
        )
        .await
        .map(|_| ())
    }

    /// Creates or updates records keyed by the unique property `id_property`, 100 per call:
    /// writing the same key twice finds the first record instead of making a second one.
    pub async fn batch_upsert(
        &self,
        object: &str,
        id_property: &str,
        inputs: &[(String, Map<String, Value>)],
    ) -> Result<Vec<Record>, CrmError> {
        let mut out = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(BATCH) {
            let body = json!({
                "inputs": chunk.iter().map(|(key, p)| json!({ "id": key, "idProperty": id_property, "properties": p })).collect::<Vec<_>>(),
            });
            let v = self
                .call(
                    Method::POST,
                    &self.path(Op::Batch {
                        object,
                        action: BatchAction::Upsert,
                    }),
                    Some(&body),
                    CallKind::Ordinary,
                )
                .await?;
            out.extend(all_or_nothing(&v, &self.portal, "batch upsert")?);
        }
        Ok(out)
    }

    /// Creates records, 100 per call, each with its associations in the same call (so a note
    /// is never on its own between two calls). All or nothing per call: no input carries an
    /// `objectWriteTraceId`, and HubSpot then fails the whole batch on one bad input
    /// (HUBSPOT-API.md §1). The answer's order is not relied on.
    pub async fn batch_create(
        &self,
        object: &str,
        inputs: &[(Map<String, Value>, Value)],
    ) -> Result<Vec<Record>, CrmError> {
        let mut out = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(BATCH) {
            let body = json!({
                "inputs": chunk.iter().map(|(p, a)| json!({ "properties": p, "associations": a })).collect::<Vec<_>>(),
            });
            let v = self
                .call_unrepeated(
                    Method::POST,
                    &self.path(Op::Batch {
                        object,
                        action: BatchAction::Create,
                    }),
                    Some(&body),
                )
                .await?;
            out.extend(all_or_nothing(&v, &self.portal, "batch create")?);
        }
        Ok(out)
    }

    /// Archives records, 100 per call. Records already gone count as archived.
    pub async fn batch_archive(&self, object: &str, ids: &[String]) -> Result<(), CrmError> {
        for chunk in ids.chunks(BATCH) {
            let body =
                json!({ "inputs": chunk.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>() });
            self.call(
                Method::POST,
                &self.path(Op::Batch {
                    object,
                    action: BatchAction::Archive,
                }),
                Some(&body),
                CallKind::Ordinary,
            )
            .await?;
        }
        Ok(())
    }

    /// The ids of the `to` objects associated with each `from` id (associations batch
    /// read, 1,000 ids per call). Ids without associations are absent.
    pub async fn associations(
        &self,
        from: &str,
        to: &str,
        ids: &[String],
    ) -> Result<HashMap<String, Vec<String>>, CrmError> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for chunk in ids.chunks(ASSOC_BATCH) {
            // (id, after): a deal with more associations than one page comes back with
            // `paging.next.after` and is asked for again from there, or its later notes would
            // look deleted.
            let mut inputs: Vec<(String, Option<String>)> =
                chunk.iter().map(|id| (id.clone(), None)).collect();
            for _ in 0..10_000 {
                if inputs.is_empty() {
                    break;
                }
                let body = json!({
                    "inputs": inputs.iter().map(|(id, after)| match after {
                        Some(a) => json!({ "id": id, "after": a }),
                        None => json!({ "id": id }),
                    }).collect::<Vec<_>>(),
                });
                let v = self
                    .call(
                        Method::POST,
                        &self.path(Op::AssociationBatch {
                            from,
                            to,
                            action: AssocAction::Read,
                        }),
                        Some(&body),
                        CallKind::Ordinary,
                    )
                    .await?;
                let results = v.get("results").and_then(Value::as_array).ok_or_else(|| {
                    decode(&self.portal, "association batch read", "no results array")
                })?;
                let mut next = Vec::new();
                for r in results {
                    let Some(from_id) = r.pointer("/from/id").and_then(id_text) else {
                        return Err(decode(
                            &self.portal,
                            "association batch read",
                            "a result has no from.id",
                        ));
                    };
                    let tos = r
                        .get("to")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|t| t.get("toObjectId").and_then(id_text));
                    out.entry(from_id.clone()).or_default().extend(tos);
                    if let Some(after) = r.pointer("/paging/next/after").and_then(id_text) {
                        next.push((from_id, Some(after)));
                    }
                }
                inputs = next;
            }
        }
        Ok(out)
    }

    /// Every active user (owner) of the portal, 100 per page.
    pub async fn owners(&self) -> Result<Vec<Owner>, CrmError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        // A bound on pages: a paging loop in a broken answer must not spin forever.
        for _ in 0..1_000 {
            let path = match &after {
                Some(a) => format!(
                    "{}?limit=100&after={}",
                    self.path(Op::Owners),
                    form_urlencoded::byte_serialize(a.as_bytes()).collect::<String>()
                ),
                None => format!("{}?limit=100", self.path(Op::Owners)),
            };
            let v = self
                .call(Method::GET, &path, None, CallKind::Ordinary)
                .await?;
            let results = v
                .get("results")
                .and_then(Value::as_array)
                .ok_or_else(|| decode(&self.portal, "owners", "no results array"))?;
            for o in results {
                let text = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                let Some(id) = o.get("id").and_then(id_text) else {
                    continue;
                };
                if o.get("archived").and_then(Value::as_bool) == Some(true) {
                    continue;
                }
                out.push(Owner {
                    id,
                    email: text("email"),
                    first_name: text("firstName"),
                    last_name: text("lastName"),
                });
            }
            after = v.pointer("/paging/next/after").and_then(id_text);
            if after.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Associates pairs with HubSpot's default association type (idempotent).
    pub async fn associate_default(
        &self,
        from: &str,
        to: &str,
        pairs: &[(String, String)],
    ) -> Result<(), CrmError> {
        for chunk in pairs.chunks(BATCH) {
            let body = json!({
                "inputs": chunk.iter().map(|(f, t)| json!({ "from": { "id": f }, "to": { "id": t } })).collect::<Vec<_>>(),
            });
            self.call(
                Method::POST,
                &self.path(Op::AssociationBatch {
                    from,
                    to,
                    action: AssocAction::AssociateDefault,
                }),
                Some(&body),
                CallKind::Ordinary,
            )
            .await?;
        }
        Ok(())
    }

    /// Whether a file exists (and is not deleted).
    pub async fn file_exists(&self, id: &str) -> Result<bool, CrmError> {
        match self
            .call(
                Method::GET,
                &self.path(Op::File { id }),
                None,
                CallKind::Ordinary,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes a file; one already gone counts as deleted.
    pub async fn delete_file(&self, id: &str) -> Result<(), CrmError> {
        match self
            .call(
                Method::DELETE,
                &self.path(Op::File { id }),
                None,
                CallKind::Ordinary,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Copies a file from this portal to `dest`: a signed URL here, then the download streamed
    /// straight into `dest`'s upload, so a large file is never held whole in memory.
    pub async fn copy_file_to(
        &self,
        dest: &Client,
        id: &str,
        max_bytes: u64,
        folder: &str,
    ) -> Result<FileCopy, CrmError> {
        let signed = match self
            .call(
                Method::GET,
                &format!(
                    "{}?expirationSeconds=600",
                    self.path(Op::FileSignedUrl { id })
                ),
                None,
                CallKind::Ordinary,
            )
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_not_found() => return Ok(FileCopy::Missing),
            Err(e) => return Err(e),
        };
        let url = signed
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| decode(&self.portal, "file signed url", "no url in the answer"))?;
        let size = signed.get("size").and_then(Value::as_u64);
        if size.is_some_and(|s| s > max_bytes) {
            return Ok(FileCopy::TooLarge(size.unwrap_or_default()));
        }
        let name = match (
            signed.get("name").and_then(Value::as_str),
            signed.get("extension").and_then(Value::as_str),
        ) {
            (Some(n), Some(e)) if !e.is_empty() => format!("{n}.{e}"),
            (Some(n), _) => n.to_owned(),
            _ => format!("file-{id}"),
        };
        let call = "GET file download";
        // The signed URL carries its own authorisation and is not an API call.
        let download = self
            .http
            .get(url)
            .timeout(self.retry.timeout.max(Duration::from_secs(300)))
            .send()
            .await
            .map_err(|e| self.transport_error(call, e))?;
        match download.status().as_u16() {
            200..=299 => {}
            404 | 403 => return Ok(FileCopy::Missing),
            status => {
                return Err(CrmError::Http {
                    portal: self.portal.clone(),
                    call: call.into(),
                    status,
                    category: "DOWNLOAD_FAILED".into(),
                    message: "the file's signed URL did not serve it".into(),
                    retry_after: None,
                })
            }
        }
        let len = download.content_length().or(size);
        if len.is_some_and(|l| l > max_bytes) {
            return Ok(FileCopy::TooLarge(len.unwrap_or_default()));
        }
        let stream = reqwest::Body::wrap_stream(download.bytes_stream());
        let part = match len {
            Some(l) => reqwest::multipart::Part::stream_with_length(stream, l),
            None => reqwest::multipart::Part::stream(stream),
        };
        dest.upload(part, &name, folder).await.map(FileCopy::Copied)
    }

    /// Uploads a file (private access) and returns its id.
    pub async fn upload_file(
        &self,
        name: &str,
        content: Vec<u8>,
        folder: &str,
    ) -> Result<String, CrmError> {
        self.upload(reqwest::multipart::Part::bytes(content), name, folder)
            .await
    }

    /// One multipart upload: budgeted, classified, not retried (a stream cannot be replayed;
    /// the job retries the whole copy).
    async fn upload(
        &self,
        part: reqwest::multipart::Part,
        name: &str,
        folder: &str,
    ) -> Result<String, CrmError> {
        let form = reqwest::multipart::Form::new()
            .part("file", part.file_name(name.to_owned()))
            .text("fileName", name.to_owned())
            .text("folderPath", folder.to_owned())
            .text("options", r#"{"access":"PRIVATE"}"#);
        let path = self.path(Op::Files);
        let call = &format!("POST {path}");
        let token = self.auth.token().await?;
        let slot = self.budget.acquire(CallKind::Ordinary).await;
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .timeout(self.retry.timeout.max(Duration::from_secs(300)))
            .multipart(form)
            .send()
            .await
            .map_err(|e| self.transport_error(call, e));
        drop(slot);
        let v = self.answer(resp?, call).await?;
        v.get("id")
            .and_then(id_text)
            .ok_or_else(|| decode(&self.portal, "file upload", "no id in the answer"))
    }

    /// Creates a property (with its group) unless it exists. Returns whether it was created.
    pub async fn ensure_property(
        &self,
        object: &str,
        definition: &Value,
    ) -> Result<bool, CrmError> {
        let name = definition
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match self
            .call(
                Method::GET,
                &self.path(Op::Property { object, name }),
                None,
                CallKind::Ordinary,
            )
            .await
        {
            Ok(_) => return Ok(false),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        match self
            .call(
                Method::POST,
                &self.path(Op::Properties { object }),
                Some(definition),
                CallKind::Ordinary,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a property group unless it exists.
    pub async fn ensure_group(
        &self,
        object: &str,
        name: &str,
        label: &str,
    ) -> Result<bool, CrmError> {
        let body = json!({ "name": name, "label": label });
        match self
            .call(
                Method::POST,
                &self.path(Op::PropertyGroups { object }),
                Some(&body),
                CallKind::Ordinary,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(409) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The scopes a `MISSING_SCOPES` answer names in `errors[].context.requiredScopes`.
fn required_scopes(err: &Value) -> Option<String> {
    let scopes: Vec<&str> = err
        .get("errors")?
        .as_array()?
        .iter()
        .filter_map(|e| e.pointer("/context/requiredScopes")?.as_array())
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    (!scopes.is_empty()).then(|| scopes.join(", "))
}

fn decode(portal: &str, call: &str, detail: &str) -> CrmError {
    CrmError::Decode {
        portal: portal.to_owned(),
        call: call.to_owned(),
        detail: detail.to_owned(),
    }
}

/// An id written as a string or a number.
fn id_text(v: &Value) -> Option<String> {
    v.as_str()
        .map(str::to_owned)
        .or_else(|| v.as_u64().map(|n| n.to_string()))
}

fn records(v: &Value, portal: &str, call: &str) -> Result<Vec<Record>, CrmError> {
    let results = v
        .get("results")
        .and_then(Value::as_array)
        .ok_or_else(|| decode(portal, call, "no results array"))?;
    // A result that is not a record is a broken answer, not a missing deal: dropping it would
    // make the engine treat the deal as deleted.
    results
        .iter()
        .map(|r| {
            Record::parse(r)
                .ok_or_else(|| decode(portal, call, "a result is not a record (no string id)"))
        })
        .collect()
}

fn error_mentions(e: &Value, id: &str) -> bool {
    e.get("context")
        .and_then(Value::as_object)
        .is_some_and(|c| {
            c.values().any(|v| {
                v.as_array()
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(id)))
            })
        })
}

/// The records of a batch write's answer, or its first error: a write that must land whole.
fn all_or_nothing(v: &Value, portal: &str, call: &str) -> Result<Vec<Record>, CrmError> {
    if let Some(e) = v
        .get("errors")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return Err(batch_error(portal, Some(e)));
    }
    records(v, portal, call)
}

fn batch_error(portal: &str, e: Option<&Value>) -> CrmError {
    let text = |k: &str| {
        e.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let category = text("category").unwrap_or_else(|| "UNKNOWN".into());
    let status = match category.as_str() {
        "OBJECT_NOT_FOUND" => 404,
        "RATE_LIMITS" => 429,
        "CONFLICT" => 409,
        _ => 400,
    };
    CrmError::Http {
        portal: portal.to_owned(),
        call: "batch update".into(),
        status,
        category,
        message: text("message").unwrap_or_else(|| "the record was not written".into()),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_scopes_answer_names_its_scopes() {
        let err = json!({
            "category": "MISSING_SCOPES",
            "errors": [{"message": "One or more of the following scopes are required.",
                        "context": {"requiredScopes": ["crm.objects.quotes.read", "oauth"]}}],
        });
        assert_eq!(
            required_scopes(&err).as_deref(),
            Some("crm.objects.quotes.read, oauth")
        );
        assert_eq!(required_scopes(&json!({"message": "x"})), None);
    }
}
