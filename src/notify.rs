//! Notifications (SPEC §1.4, issue 7 item 9): when the other side shares a message, comments
//! on one, or the deal's status or stage changes, the receiving side's deal team and the
//! partner's lead recipient are told — by a signed JSON webhook and, optionally, by email.
//!
//! Decisions written down here:
//! - **Durable and off the sync path.** The engine writes a [`Notice`] into the store's outbox
//!   in the same transaction as the job outcome that caused it; a separate [`Notifier`] task
//!   sends it. A slow or broken receiver never delays or fails a sync, and a notice is not
//!   lost to a restart. A crash between a write to a portal and the job's commit re-runs the
//!   job, which announces what it writes again: a receiver may see an event twice (with two
//!   delivery ids) but never miss one. A stop in the middle of a delivery leaves it queued,
//!   and it goes out again under the same delivery id.
//! - **Not news.** The first sync of a link announces no stage (the deal was just created
//!   there), and messages last changed before the link existed (a converted deal's history)
//!   are copied without a notice each.
//! - **What is told.** Events are `message_shared`, `comment_added` (a copy arrived on the
//!   receiving side), `status_changed` (the partner deal's banner: excluded, customer
//!   purchased, deal lost) and `stage_changed` (a stage carried over to the receiving side).
//!   A notice carries kinds, ids, the deal's name and the people to tell — never a message's
//!   text: the text stays in the CRMs, where access is controlled, and a private note is never
//!   read at all.
//! - **Who is told.** The receiving deal's owner and collaborators (their portal's users, by
//!   email), and the partner's `lead_email` from its `[[partners]]` entry, whichever side
//!   receives: the partner lead follows all of that partner's shared deals.
//! - **Webhook.** `POST` to `[notifications] webhook_url` with `X-Dealsync-Delivery` (stable
//!   across retries, for de-duplication), `X-Dealsync-Timestamp` (ms) and
//!   `X-Dealsync-Signature: v1=<hex HMAC-SHA256 of "{timestamp}.{body}">` keyed with the
//!   configured secret ([`sign`], [`verify`]). 2xx is delivered; 408, 429, 5xx and transport
//!   errors are retried (a couple of quick tries, then with growing delays from the outbox);
//!   any other status is the receiver refusing it and is dead-lettered at once.
//! - **Email.** With `[notifications.smtp]`, one plain-text email per notice to all its
//!   recipients. Webhook and email are tracked apart: a retry redoes only the channel that
//!   failed.
//! - **Dead letters.** A notice past `max_attempts` (or refused) is kept in the store as dead
//!   and written to the dead-letter file with class `notification`; `dealsync replay` puts it
//!   back in the outbox. After 30 days the store forgets it (the dead letter stays, and
//!   replay then says it can no longer be sent), so a receiver gone for good cannot grow the
//!   store without bound.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::crm::{Client, CrmError};
use crate::deadletter;
use crate::secret::Secret;
use crate::store::{self, Link, Outgoing, Side, Store};
use crate::team::{self, Directory};

/// Where the webhook goes and the key it is signed with.
#[derive(Clone)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: Secret,
}

impl std::fmt::Debug for WebhookTarget {
    // The URL may carry a token of the receiver's (many hook services put one in the path).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = reqwest::Url::parse(&self.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        f.debug_struct("WebhookTarget")
            .field("host", &host)
            .finish_non_exhaustive()
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// TLS from the first byte (port 465).
    Tls,
    /// STARTTLS, required (port 587).
    Starttls,
    /// Plain text: only for a relay on the same machine (refused for other hosts).
    None,
}

/// The mail relay.
#[derive(Debug, Clone)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub from: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// `[notifications]`, resolved.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub webhook: Option<WebhookTarget>,
    pub smtp: Option<SmtpTarget>,
    /// Partner name → its lead's email.
    pub partner_leads: HashMap<String, String>,
    pub max_attempts: i64,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Per webhook call or email.
    pub timeout: Duration,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            webhook: None,
            smtp: None,
            partner_leads: HashMap::new(),
            max_attempts: 8,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
        }
    }
}

impl NotifySettings {
    /// Whether anything is sent at all (otherwise no notice is even recorded).
    pub fn enabled(&self) -> bool {
        self.webhook.is_some() || self.smtp.is_some()
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    MessageShared,
    CommentAdded,
    StatusChanged,
    StageChanged,
}

/// One notification, as stored in the outbox and sent (plus its recipients).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub event: Event,
    pub link_id: i64,
    pub partner: String,
    /// The side told (`partner` or `hubspot` in the outbox's JSON).
    pub side: Side,
    /// The portal told, and its deal.
    pub portal: String,
    pub deal_id: String,
    pub partner_deal_id: String,
    pub hubspot_deal_id: String,
    /// The copy that arrived (messages and comments), in the told portal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// The new status or stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    pub at: String,
}

impl Notice {
    /// A notice for the `to` side of `link`, whose portal is `portal`.
    pub fn new(
        event: Event,
        link: &Link,
        to: Side,
        portal: &str,
        object_id: Option<String>,
        status: Option<String>,
    ) -> Notice {
        let deal_id = match to {
            Side::Partner => &link.partner_deal_id,
            Side::Hubspot => &link.hubspot_deal_id,
        };
        Notice {
            event,
            link_id: link.id,
            partner: link.partner.clone(),
            side: to,
            portal: portal.to_owned(),
            deal_id: deal_id.clone(),
            partner_deal_id: link.partner_deal_id.clone(),
            hubspot_deal_id: link.hubspot_deal_id.clone(),
            object_id,
            status,
            at: crate::time::iso(store::now_ms()),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Who did it, as the receiving side knows them.
    fn actor(&self) -> &str {
        if self.side == Side::Partner {
            "HubSpot"
        } else {
            &self.partner
        }
    }

    /// One line saying what happened.
    pub fn summary(&self, deal_name: Option<&str>) -> String {
        let what = match self.event {
            Event::MessageShared => format!("{} shared a message", self.actor()),
            Event::CommentAdded => format!("{} commented on a shared message", self.actor()),
            Event::StatusChanged => format!(
                "the shared deal's status is now \"{}\"",
                self.status.as_deref().unwrap_or("?")
            ),
            Event::StageChanged => format!(
                "{} moved the deal to stage {}",
                self.actor(),
                self.status.as_deref().unwrap_or("?")
            ),
        };
        match deal_name {
            Some(n) => format!(
                "{what} on \"{n}\" (deal {} in {})",
                self.deal_id, self.portal
            ),
            None => format!("{what} on deal {} in {}", self.deal_id, self.portal),
        }
    }
}

/// A person told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipient {
    pub email: String,
    pub name: String,
    /// `owner`, `team` or `partner_lead`.
    pub role: String,
}

/// What the webhook receives.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    id: &'a str,
    #[serde(flatten)]
    notice: &'a Notice,
    summary: String,
    deal_name: Option<&'a str>,
    recipients: &'a [Recipient],
}

type HmacSha256 = Hmac<Sha256>;

/// The `X-Dealsync-Signature` value for a body sent at `timestamp`.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

/// Checks a signature in constant time (for receivers, and the tests).
pub fn verify(secret: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.strip_prefix("v1=") else {
        return false;
    };
    let Some(given) = decode_hex(hex) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// Why a channel did not take a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: String,
    /// Retrying will not help (the receiver refused it, a bad address).
    pub permanent: bool,
}

fn transient(error: String) -> Failure {
    Failure {
        error,
        permanent: false,
    }
}

/// Sends the outbox.
pub struct Notifier {
    pub store: Store,
    pub settings: NotifySettings,
    pub hubspot: Client,
    pub partners: HashMap<String, Client>,
    pub directory: Arc<Directory>,
    pub dead_letter_path: PathBuf,
}

/// Notices sent per round.
const ROUND: usize = 20;
/// How often an idle notifier looks at the outbox.
const IDLE: Duration = Duration::from_millis(500);
/// How long a dead notification can still be replayed before the store forgets it.
pub const DEAD_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);

impl Notifier {
    /// Runs until cancelled. Never returns an error: a failure is retried or dead-lettered.
    pub async fn run(self, cancel: CancellationToken) {
        let http = match reqwest::Client::builder()
            .timeout(self.settings.timeout)
            .user_agent(concat!("dealsync/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the notification HTTP client; notifications stay queued");
                return;
            }
        };
        let mailer = match self
            .settings
            .smtp
            .as_ref()
            .map(|s| mailer(s, self.settings.timeout))
            .transpose()
        {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e.error, "cannot set up the SMTP relay; notifications stay queued");
                return;
            }
        };
        let mut pruned_at: Option<std::time::Instant> = None;
        loop {
            if pruned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
                pruned_at = Some(std::time::Instant::now());
                let before = store::now_ms() - DEAD_KEPT.as_millis() as i64;
                match self
                    .store
                    .call(move |c| store::prune_dead_notifications(c, before))
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        forgotten = n,
                        "dead notifications older than 30 days forgotten (their dead letters stay)"
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot prune dead notifications"),
                }
            }
            let due = self
                .store
                .call(|c| store::due_notifications(c, store::now_ms(), ROUND))
                .await;
            let due = match due {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the notification outbox");
                    Vec::new()
                }
            };
            if due.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(IDLE) => continue,
                }
            }
            for n in due {
                // A stop mid-delivery leaves the notice queued; it goes out after the restart.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.deliver(&http, mailer.as_ref(), n) => {}
                }
            }
        }
    }

    async fn deliver(
        &self,
        http: &reqwest::Client,
        mailer: Option<&AsyncSmtpTransport<Tokio1Executor>>,
        mut n: Outgoing,
    ) {
        let notice: Notice = match serde_json::from_str(&n.notice) {
            Ok(x) => x,
            Err(e) => {
                let f = Failure {
                    error: format!("the stored notice cannot be read ({e}); it is dropped"),
                    permanent: true,
                };
                return self.failed(n, None, f).await;
            }
        };
        let (deal_name, recipients) = match self.recipients(&notice).await {
            Ok(r) => r,
            // The last attempt goes out to the partner lead alone rather than to nobody.
            Err(e) if n.attempts + 1 >= self.settings.max_attempts => {
                tracing::warn!(notification = n.id, error = %e, "cannot look up the deal team; telling the partner lead only");
                (None, self.lead(&notice).into_iter().collect())
            }
            Err(e) => {
                let f = Failure {
                    error: format!("cannot look up who to tell: {e}"),
                    permanent: false,
                };
                return self.failed(n, Some(&notice), f).await;
            }
        };
        let delivery = format!("{}-{}", n.id, n.created_at);
        let mut failure: Option<Failure> = None;
        match &self.settings.webhook {
            Some(w) if !n.webhook_done => {
                let payload = Payload {
                    id: &delivery,
                    notice: &notice,
                    summary: notice.summary(deal_name.as_deref()),
                    deal_name: deal_name.as_deref(),
                    recipients: &recipients,
                };
                match post(http, w, &delivery, &payload).await {
                    Ok(()) => n.webhook_done = true,
                    Err(f) => failure = Some(f),
                }
            }
            _ => n.webhook_done = true,
        }
        match (mailer, &self.settings.smtp) {
            (Some(m), Some(s)) if !n.email_done && !recipients.is_empty() => {
                let sent = email(m, s, &notice, deal_name.as_deref(), &recipients);
                match sent.await {
                    Ok(()) => n.email_done = true,
                    Err(f) => {
                        failure = Some(match failure {
                            Some(w) => Failure {
                                error: format!("{}; {}", w.error, f.error),
                                permanent: w.permanent || f.permanent,
                            },
                            None => f,
                        })
                    }
                }
            }
            _ => n.email_done = true,
        }
        match failure {
            None => {
                let id = n.id;
                if let Err(e) = self
                    .store
                    .call(move |c| store::notification_sent(c, id))
                    .await
                {
                    tracing::warn!(error = %e, "cannot mark a notification sent; it may go out twice");
                }
                tracing::info!(event = ?notice.event, link = notice.link_id, portal = %notice.portal, recipients = recipients.len(), "notification sent");
            }
            Some(f) => self.failed(n, Some(&notice), f).await,
        }
    }

    /// The receiving deal's name and the people to tell.
    async fn recipients(
        &self,
        notice: &Notice,
    ) -> Result<(Option<String>, Vec<Recipient>), CrmError> {
        let mut out: Vec<Recipient> = Vec::new();
        let client = if notice.side == Side::Hubspot {
            Some(&self.hubspot)
        } else {
            self.partners.get(&notice.partner)
        };
        let mut deal_name = None;
        if let Some(client) = client {
            let props = ["dealname", "hubspot_owner_id", team::COLLABORATORS].map(String::from);
            if let Some(deal) = client.get("deals", &notice.deal_id, &props).await? {
                deal_name = deal.get("dealname").map(str::to_owned);
                let owner = deal.get("hubspot_owner_id").map(str::to_owned);
                let directory = self.directory.owners(client).await?;
                for id in team::members(&deal) {
                    if let Some(o) = directory.iter().find(|o| o.id == id) {
                        let name = format!("{} {}", o.first_name, o.last_name);
                        out.push(Recipient {
                            email: o.email.clone(),
                            name: name.trim().to_owned(),
                            role: if owner.as_deref() == Some(id.as_str()) {
                                "owner".into()
                            } else {
                                "team".into()
                            },
                        });
                    }
                }
            }
        }
        if let Some(lead) = self.lead(notice) {
            if !out
                .iter()
                .any(|r| r.email.eq_ignore_ascii_case(&lead.email))
            {
                out.push(lead);
            }
        }
        out.retain(|r| !r.email.is_empty());
        Ok((deal_name, out))
    }

    /// The partner's lead recipient, when configured.
    fn lead(&self, notice: &Notice) -> Option<Recipient> {
        self.settings
            .partner_leads
            .get(&notice.partner)
            .map(|email| Recipient {
                email: email.clone(),
                name: format!("{} partner lead", notice.partner),
                role: "partner_lead".into(),
            })
    }

    /// Schedules the next try, or gives up and dead-letters the notice.
    async fn failed(&self, n: Outgoing, notice: Option<&Notice>, f: Failure) {
        let dead = f.permanent || n.attempts + 1 >= self.settings.max_attempts;
        let delay = backoff(&self.settings, n.attempts);
        let due = store::now_ms() + delay.as_millis() as i64;
        let (row, error) = (n.clone(), f.error.clone());
        if let Err(e) = self
            .store
            .call(move |c| store::notification_failed(c, &row, due, &error, dead))
            .await
        {
            tracing::warn!(error = %e, "cannot record a failed notification");
            return;
        }
        if !dead {
            tracing::warn!(notification = n.id, attempt = n.attempts + 1, retry_in_ms = delay.as_millis() as u64, error = %f.error, "notification not delivered; retrying later");
            return;
        }
        let subject = notice
            .map(|x| deadletter::Subject {
                link_id: x.link_id,
                partner: x.partner.clone(),
                partner_deal_id: x.partner_deal_id.clone(),
                hubspot_deal_id: x.hubspot_deal_id.clone(),
            })
            .unwrap_or_default();
        let reason = match notice {
            Some(x) => format!("notify:{}", event_name(x.event)),
            None => "notify".into(),
        };
        let entry = deadletter::Entry::for_notice(
            subject,
            reason,
            f.error.clone(),
            n.attempts + 1,
            n.created_at,
            n.id,
        );
        let path = self.dead_letter_path.clone();
        let written =
            tokio::task::spawn_blocking(move || deadletter::append(&path, &[entry])).await;
        match written {
            Ok(Ok(())) => {
                tracing::error!(notification = n.id, error = %f.error, "notification dead-lettered")
            }
            Ok(Err(e)) => {
                tracing::error!(notification = n.id, error = %e, "notification failed and cannot be dead-lettered; it stays in the store as dead")
            }
            Err(e) => tracing::error!(error = %e, "dead-letter writer failed"),
        }
    }
}

fn event_name(e: Event) -> &'static str {
    match e {
        Event::MessageShared => "message_shared",
        Event::CommentAdded => "comment_added",
        Event::StatusChanged => "status_changed",
        Event::StageChanged => "stage_changed",
    }
}

/// The wait before attempt `attempts + 1`: doubling from the base, capped, without jitter so
/// an operator can tell when a notification will be tried again.
fn backoff(s: &NotifySettings, attempts: i64) -> Duration {
    crate::backoff::Backoff {
        base: s.retry_base,
        max: s.retry_max,
        jitter: crate::backoff::Jitter::None,
    }
    .ceiling(attempts)
}

/// One webhook delivery, with a couple of quick retries for passing trouble.
async fn post(
    http: &reqwest::Client,
    w: &WebhookTarget,
    delivery: &str,
    payload: &Payload<'_>,
) -> Result<(), Failure> {
    let body = serde_json::to_vec(payload).map_err(|e| Failure {
        error: format!("cannot encode the notification: {e}"),
        permanent: true,
    })?;
    let once = || async {
        let timestamp = store::now_ms().to_string();
        let resp = http
            .post(&w.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Dealsync-Delivery", delivery)
            .header("X-Dealsync-Timestamp", &timestamp)
            .header(
                "X-Dealsync-Signature",
                sign(w.secret.expose(), &timestamp, &body),
            )
            .body(body.clone())
            .send()
            .await
            // The URL may carry a token of the receiver's: never in an error.
            .map_err(|e| {
                transient(format!(
                    "the notification webhook cannot be reached: {}",
                    e.without_url()
                ))
            })?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => Ok(()),
            408 | 429 | 500..=599 => Err(transient(format!(
                "the notification webhook answered HTTP {status}"
            ))),
            _ => Err(Failure {
                error: format!("the notification webhook refused it with HTTP {status}; check [notifications] webhook_url and the secret the receiver verifies with"),
                permanent: true,
            }),
        }
    };
    once.retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(2)
            .with_jitter(),
    )
    .when(|f: &Failure| !f.permanent)
    .await
}

/// The longest one email may take, all SMTP commands together.
const EMAIL_BOUND: Duration = Duration::from_secs(120);

/// The SMTP transport for the relay; `timeout` bounds each command.
fn mailer(
    s: &SmtpTarget,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, Failure> {
    let bad = |e: lettre::transport::smtp::Error| Failure {
        error: format!("SMTP relay {}: {e}", s.host),
        permanent: true,
    };
    let mut b = match s.security {
        SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host).map_err(bad)?,
        SmtpSecurity::Starttls => {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host).map_err(bad)?
        }
        SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host),
    }
    .port(s.port)
    .timeout(Some(timeout));
    if let (Some(u), Some(p)) = (&s.username, &s.password) {
        b = b.credentials(Credentials::new(u.clone(), p.expose().to_owned()));
    }
    Ok(b.build())
}

/// One email to every recipient with a well-formed address.
async fn email(
    mailer: &AsyncSmtpTransport<Tokio1Executor>,
    s: &SmtpTarget,
    notice: &Notice,
    deal_name: Option<&str>,
    recipients: &[Recipient],
) -> Result<(), Failure> {
    let from = s.from.parse().map_err(|e| Failure {
        error: format!(
            "[notifications.smtp] from {:?} is not an address: {e}",
            s.from
        ),
        permanent: true,
    })?;
    let summary = notice.summary(deal_name);
    let mut m = lettre::Message::builder()
        .from(from)
        .subject(format!("dealsync: {summary}"));
    let mut any = false;
    for r in recipients {
        match r.email.parse() {
            Ok(to) => {
                m = m.to(to);
                any = true;
            }
            Err(_) => {
                tracing::warn!(notification_role = %r.role, "a recipient's email is not a valid address; skipped")
            }
        }
    }
    if !any {
        return Ok(());
    }
    let text = format!(
        "{summary}.\n\nOpen the deal in your CRM to read it. Partner: {}; partner deal {}; HubSpot deal {}.\n\n-- dealsync\n",
        notice.partner, notice.partner_deal_id, notice.hubspot_deal_id
    );
    let message = m
        .header(ContentType::TEXT_PLAIN)
        .body(text)
        .map_err(|e| Failure {
            error: format!("cannot build the email: {e}"),
            permanent: true,
        })?;
    // The transport has its own per-command timeout; this bounds the whole conversation.
    let send = tokio::time::timeout(EMAIL_BOUND, mailer.send(message)).await;
    match send {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Failure {
            error: format!("SMTP relay {}: {e}", s.host),
            permanent: e.is_permanent(),
        }),
        Err(_) => Err(transient(format!("SMTP relay {} timed out", s.host))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_reject_any_change() {
        let s = sign("key", "1700000000000", b"{\"a\":1}");
        assert!(s.starts_with("v1=") && s.len() == 3 + 64);
        assert!(verify("key", "1700000000000", b"{\"a\":1}", &s));
        assert!(!verify("other", "1700000000000", b"{\"a\":1}", &s));
        assert!(!verify("key", "1700000000001", b"{\"a\":1}", &s));
        assert!(!verify("key", "1700000000000", b"{\"a\":2}", &s));
        assert!(!verify("key", "1700000000000", b"{\"a\":1}", &s[3..]));
        assert!(!verify("key", "1700000000000", b"{\"a\":1}", "v1=zz"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = NotifySettings {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(10),
            ..Default::default()
        };
        let got: Vec<u64> = (0..6).map(|a| backoff(&s, a).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(&s, i64::MAX), Duration::from_secs(10));
    }

    #[test]
    fn summaries_name_who_did_what_and_never_a_text() {
        let link = Link {
            id: 1,
            partner: "partner-a".into(),
            partner_deal_id: "p1".into(),
            hubspot_deal_id: "h1".into(),
            ..Default::default()
        };
        let n = Notice::new(
            Event::MessageShared,
            &link,
            Side::Hubspot,
            "hubspot",
            Some("n9".into()),
            None,
        );
        assert_eq!(
            n.summary(Some("Acme")),
            "partner-a shared a message on \"Acme\" (deal h1 in hubspot)"
        );
        let n = Notice::new(
            Event::StatusChanged,
            &link,
            Side::Partner,
            "partner-a",
            None,
            Some("deal lost".into()),
        );
        assert_eq!(
            n.summary(None),
            "the shared deal's status is now \"deal lost\" on deal p1 in partner-a"
        );
        let back: Notice = serde_json::from_str(&n.to_json()).unwrap();
        assert_eq!(back, n);
        // The outbox keeps the side as the text it always had, so rows queued by an older
        // version are still read.
        assert!(
            n.to_json().contains(r#""side":"partner""#),
            "{}",
            n.to_json()
        );
    }
}
