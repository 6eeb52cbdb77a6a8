//! Notifications (issue 7, item 9), end to end against the sandbox: the outbound webhook is
//! the sandbox's own catcher (`/_sandbox/inbox`) and the SMTP relay a small one in this file,
//! both on 127.0.0.1. Covered: who is told of a shared message, a comment and a status change,
//! the HMAC signature, retries, a refused delivery dead-lettered and replayed, email, and that
//! a receiver that is down never holds up the sync.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::notes::note;
use common::{set_deal, wait_deal_prop};
use dealsync::daemon::DaemonHandle;
use dealsync::notify::{NotifySettings, SmtpSecurity, SmtpTarget, WebhookTarget};
use dealsync::secret::Secret;
use dealsync::store::{self, Store};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "notify-test-secret";
const LEAD: &str = "lead@partner-a.example";

struct World(common::Duo);

impl std::ops::Deref for World {
    type Target = common::Duo;
    fn deref(&self) -> &common::Duo {
        &self.0
    }
}

impl World {
    async fn new() -> World {
        World(common::Duo::new().await)
    }

    fn inbox_url(&self) -> String {
        format!("{}/_sandbox/inbox", self.sb.base_url)
    }

    fn notify(&self, url: Option<String>, smtp: Option<SmtpTarget>) -> NotifySettings {
        NotifySettings {
            webhook: url.map(|url| WebhookTarget {
                url,
                secret: Secret::new(SECRET),
            }),
            smtp,
            partner_leads: HashMap::from([("partner-a".to_owned(), LEAD.to_owned())]),
            max_attempts: 3,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(300),
            timeout: Duration::from_secs(5),
        }
    }

    async fn start(&self, notify: NotifySettings) -> DaemonHandle {
        let mut settings = self.lifecycle_settings();
        settings.notify = notify;
        self.0.start(settings).await
    }

    /// A linked pair with an owner on each side and a shared message written before the
    /// link, agreed on by a first sync (which carries the stage and the message over).
    async fn pair(&self, store: &Store) -> (String, String) {
        let owner = |p: &common::Portal| {
            let p = p.clone();
            async move { common::users(&p).await.remove(0).0 }
        };
        let props = |o: String, stage: &str| json!({"dealname": "Notified", "dealstage": stage, "hubspot_owner_id": o});
        let p = self
            .pa
            .create_deal(props(owner(&self.pa).await, "appointmentscheduled"))
            .await;
        let h = self
            .hs
            .create_deal(props(owner(&self.hs).await, "qualifiedtobuy"))
            .await;
        let old = note(&self.pa, &p, "history before the link", true, json!({})).await;
        // The link is made after the note's last change, to the millisecond.
        let written = self
            .pa
            .get(&format!(
                "/crm/v3/objects/notes/{old}?properties=hs_lastmodifieddate"
            ))
            .await
            .body["properties"]["hs_lastmodifieddate"]
            .as_str()
            .and_then(dealsync::crm::parse_ms)
            .expect("hs_lastmodifieddate");
        common::eventually("the clock passes the note's time", WAIT, || async {
            (store::now_ms() > written).then_some(())
        })
        .await;
        let (p2, h2) = (p.clone(), h.clone());
        let link = store
            .call(move |c| store::insert_link(c, "partner-a", &p2, &h2, "channel"))
            .await
            .unwrap();
        let id = link.id;
        store
            .call(move |c| store::enqueue_now(c, &[id], dealsync::store::JobReason::Manual))
            .await
            .unwrap();
        common::eventually("first sync, with the old message", WAIT, || async {
            let sh = store.call(move |c| store::shadows(c, &[id])).await.unwrap();
            let objects = store
                .call(move |c| store::object_links(c, &[id]))
                .await
                .unwrap();
            let copied = objects.get(&id).is_some_and(|o| {
                o.iter()
                    .any(|o| o.kind == "message" && o.state == dealsync::store::ObjectState::Active)
            });
            (sh.get(&id).is_some_and(|m| m.contains_key("dealstage")) && copied).then_some(())
        })
        .await;
        // Neither the first sync's stage nor the old message is news: nothing was queued.
        let (pending, dead, _) = store.call(|c| store::notification_counts(c)).await.unwrap();
        let what = store
            .call(|c| store::due_notifications(c, i64::MAX, 10))
            .await
            .unwrap();
        assert_eq!(
            (pending, dead),
            (0, 0),
            "the first sync announces nothing: {what:?}"
        );
        // Nor was anything already sent (a sent notice leaves the outbox).
        let sent = self.inbox().await;
        assert!(sent.is_empty(), "sent on the first sync: {sent:?}");
        (p, h)
    }

    async fn inbox(&self) -> Vec<Value> {
        let a = self.hs.get("/_sandbox/inbox").await;
        a.body["results"].as_array().cloned().unwrap_or_default()
    }

    /// Waits for a delivery of `event` to `side`.
    async fn delivered(&self, event: &str, side: &str) -> Value {
        common::eventually(&format!("{event} notification to {side}"), WAIT, || async {
            self.inbox()
                .await
                .into_iter()
                .find(|d| d["body"]["event"] == event && d["body"]["side"] == side)
        })
        .await
    }
}

fn emails(d: &Value) -> Vec<String> {
    d["body"]["recipients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["email"].as_str().map(str::to_owned))
        .collect()
}

fn signed(d: &Value) -> bool {
    let (Some(ts), Some(sig), Some(raw)) = (
        d["timestamp"].as_str(),
        d["signature"].as_str(),
        d["raw"].as_str(),
    ) else {
        return false;
    };
    dealsync::notify::verify(SECRET, ts, raw.as_bytes(), sig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiving_side_hears_of_messages_comments_and_status_by_signed_webhook() {
    let w = World::new().await;
    let d = w.start(w.notify(Some(w.inbox_url()), None)).await;
    let (p, h) = w.pair(&d.store).await;
    let hs_owner = "alex.rep@hubspot.example";
    let pa_owner = "alex.rep@partner-a.example";

    // The partner shares a message: HubSpot's deal team and the partner lead hear of it.
    let original = note(&w.pa, &p, "SHARED-BODY-MARKER first", true, json!({})).await;
    note(&w.pa, &p, "PRIVATE-BODY-MARKER", false, json!({})).await;
    let got = w.delivered("message_shared", "hubspot").await;
    assert!(signed(&got), "signature verifies: {got}");
    assert_eq!(got["body"]["deal_id"], h.as_str());
    assert_eq!(got["body"]["partner"], "partner-a");
    assert_eq!(got["body"]["deal_name"], "Notified");
    assert_eq!(emails(&got), [hs_owner, LEAD]);
    assert_eq!(got["body"]["recipients"][0]["role"], "owner");
    assert_eq!(got["delivery"], got["body"]["id"]);
    let copy = got["body"]["object_id"].as_str().unwrap().to_owned();
    assert_ne!(copy, original, "the id is the copy's, in HubSpot's portal");

    // HubSpot replies on the copy: the partner's team hears of the comment.
    note(
        &w.hs,
        &h,
        "reply",
        true,
        json!({dealsync::properties::REPLY_TO: copy.as_str()}),
    )
    .await;
    let got = w.delivered("comment_added", "partner").await;
    assert!(signed(&got));
    assert_eq!(got["body"]["deal_id"], p.as_str());
    assert_eq!(emails(&got), [pa_owner, LEAD]);

    // The partner moves the deal on: HubSpot hears of the stage.
    let now = common::deal_prop(&w.pa, &p, "dealstage").await.unwrap();
    let next = if now == "qualifiedtobuy" {
        "appointmentscheduled"
    } else {
        "qualifiedtobuy"
    };
    set_deal(&w.pa, &p, json!({ "dealstage": next })).await;
    let got = w.delivered("stage_changed", "hubspot").await;
    assert_eq!(got["body"]["status"], next);
    assert!(signed(&got));

    // HubSpot closes the deal lost: the partner hears of the new status.
    set_deal(&w.hs, &h, json!({"dealstage": "closedlost"})).await;
    wait_deal_prop(&w.pa, &p, dealsync::properties::DEAL_STATUS, "deal lost").await;
    let got = w.delivered("status_changed", "partner").await;
    assert_eq!(got["body"]["status"], "deal lost");
    assert!(got["body"]["summary"]
        .as_str()
        .unwrap()
        .contains("\"deal lost\""));

    // Never a message's text, private or shared, and never the secret.
    for d in w.inbox().await {
        let raw = d["raw"].as_str().unwrap();
        for marker in ["SHARED-BODY-MARKER", "PRIVATE-BODY-MARKER", SECRET] {
            assert!(!raw.contains(marker), "{marker} in a notification: {raw}");
        }
    }
    // Each event once, to one side: the echo of our own copy is not a second arrival, and
    // closing the deal is a status change, not also a stage change.
    let mut seen: Vec<(String, String)> = w
        .inbox()
        .await
        .iter()
        .map(|d| {
            (
                d["body"]["event"].as_str().unwrap_or("").to_owned(),
                d["body"]["side"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("comment_added".to_owned(), "partner".to_owned()),
            ("message_shared".to_owned(), "hubspot".to_owned()),
            ("stage_changed".to_owned(), "hubspot".to_owned()),
            ("status_changed".to_owned(), "partner".to_owned()),
        ]
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_dead_lettered_and_replayed_without_holding_up_sync() {
    let w = World::new().await;
    // A receiver that refuses everything (404): dead-lettered at once, and the sync goes on.
    let refusing = format!("{}/_sandbox/no-such-receiver", w.sb.base_url);
    let d = w.start(w.notify(Some(refusing), None)).await;
    let (p, h) = w.pair(&d.store).await;
    note(&w.pa, &p, "first", true, json!({})).await;
    set_deal(&w.pa, &p, json!({"dealname": "Synced anyway"})).await;
    wait_deal_prop(&w.hs, &h, "dealname", "Synced anyway").await;
    let dl = w.dir.path().join("dl.jsonl");
    let entry = common::eventually("a dead-lettered notification", WAIT, || async {
        let (entries, _) = dealsync::deadletter::read(&dl).ok()?;
        entries.into_iter().find(|e| e.class == "notification")
    })
    .await;
    assert_eq!(entry.reason, "notify:message_shared");
    assert!(
        entry.error.contains("HTTP 404") && entry.error.contains("webhook_url"),
        "{}",
        entry.error
    );
    assert!(!entry.error.contains(SECRET));
    let status = d
        .store
        .call(|c| store::notification_counts(c))
        .await
        .unwrap();
    assert_eq!((status.0, status.1), (0, 1), "none waiting, one dead");
    let st = common::overview(w.dir.path()).await;
    assert_eq!((st.notifications.pending, st.notifications.dead), (0, 1));
    let table = dealsync::status::render(&st);
    assert!(
        table.contains("NOTIFY    0 waiting (oldest -), 1 given up"),
        "{table}"
    );
    assert!(table.lines().all(|l| l.chars().count() <= 80), "{table}");
    d.shutdown().await;

    // Fixed configuration; a receiver that is briefly down (two 503s) gets it on a retry.
    w.hs.put("/_sandbox/inbox/fail", json!({"next": 2})).await;
    let d = w.start(w.notify(Some(w.inbox_url()), None)).await;
    let out = dealsync::replay::replay(&d.engine, &dl, std::slice::from_ref(&entry), |_, _| {})
        .await
        .expect("replay");
    assert!(out[0].ok, "{:?}", out[0]);
    let got = w.delivered("message_shared", "hubspot").await;
    assert!(signed(&got));
    assert_eq!(
        w.inbox().await.len(),
        1,
        "the refused tries were not recorded"
    );
    let after = w.hs.get("/_sandbox/inbox").await;
    assert_eq!(after.body["fail_next"], 0, "both refusals were used up");
    common::eventually("the outbox empties", WAIT, || async {
        let (pending, dead, _) = d
            .store
            .call(|c| store::notification_counts(c))
            .await
            .unwrap();
        (pending == 0 && dead == 0).then_some(())
    })
    .await;
    // Replaying it again finds nothing to do, and says so.
    let out = dealsync::replay::replay(&d.engine, &dl, &[entry], |_, _| {})
        .await
        .expect("replay");
    assert!(!out[0].ok);
    d.shutdown().await;
}

/// The lines a client sent in each email, and the recipients.
#[derive(Default)]
struct Mailbox {
    recipients: Vec<String>,
    data: Vec<String>,
}

/// A minimal SMTP relay on 127.0.0.1 that accepts every message.
async fn smtp_relay() -> (u16, Arc<Mutex<Mailbox>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mailbox = Arc::new(Mutex::new(Mailbox::default()));
    let mb = mailbox.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let mb = mb.clone();
            tokio::spawn(async move {
                let (r, mut wr) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = wr.write_all(b"220 relay.test ESMTP\r\n").await;
                let mut in_data = false;
                let mut data = String::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            mb.lock().data.push(std::mem::take(&mut data));
                            let _ = wr.write_all(b"250 queued\r\n").await;
                        } else {
                            data.push_str(&line);
                            data.push('\n');
                        }
                        continue;
                    }
                    let upper = line.to_ascii_uppercase();
                    let answer: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250 relay.test\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        let to = line[8..].trim().trim_matches(['<', '>']).to_owned();
                        mb.lock().recipients.push(to);
                        b"250 ok\r\n"
                    } else if upper.starts_with("DATA") {
                        in_data = true;
                        b"354 go on\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = wr.write_all(b"221 bye\r\n").await;
                        break;
                    } else {
                        b"250 ok\r\n"
                    };
                    let _ = wr.write_all(answer).await;
                }
            });
        }
    });
    (port, mailbox)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_to_the_deal_team_and_the_partner_lead() {
    let w = World::new().await;
    let (port, mailbox) = smtp_relay().await;
    let smtp = SmtpTarget {
        host: "127.0.0.1".into(),
        port,
        security: SmtpSecurity::None,
        from: "dealsync@hubspot.example".into(),
        username: None,
        password: None,
    };
    let d = w.start(w.notify(None, Some(smtp))).await;
    let (p, _h) = w.pair(&d.store).await;
    note(&w.pa, &p, "EMAIL-BODY-MARKER", true, json!({})).await;
    let data = common::eventually("an email", WAIT, || async {
        mailbox.lock().data.first().cloned()
    })
    .await;
    assert_eq!(
        mailbox.lock().recipients,
        ["alex.rep@hubspot.example", LEAD],
        "HubSpot's deal owner and the partner lead"
    );
    assert!(
        data.contains("Subject: dealsync: partner-a shared a message on \"Notified\""),
        "{data}"
    );
    assert!(!data.contains("EMAIL-BODY-MARKER"), "{data}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_hangs_times_out_is_dead_lettered_and_never_holds_up_sync() {
    let w = World::new().await;
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", silent.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let h2 = held.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = silent.accept().await {
            h2.lock().push(sock);
        }
    });
    let mut settings = w.notify(Some(url), None);
    settings.timeout = Duration::from_millis(300);
    settings.max_attempts = 2;
    let d = w.start(settings).await;
    let (p, h) = w.pair(&d.store).await;
    note(&w.pa, &p, "shared", true, json!({})).await;
    common::eventually("a delivery is hanging", WAIT, || async {
        (!held.lock().is_empty()).then_some(())
    })
    .await;
    // Fields keep flowing while the notification hangs.
    for i in 0..3 {
        let name = format!("Renamed {i}");
        set_deal(&w.pa, &p, json!({ "dealname": name })).await;
        wait_deal_prop(&w.hs, &h, "dealname", &name).await;
    }
    let dl = w.dir.path().join("dl.jsonl");
    let entry = common::eventually("the hanging delivery is dead-lettered", WAIT, || async {
        let (entries, _) = dealsync::deadletter::read(&dl).ok()?;
        entries.into_iter().find(|e| e.class == "notification")
    })
    .await;
    assert_eq!(entry.attempts, 2);
    assert!(entry.error.contains("cannot be reached"), "{}", entry.error);
    d.shutdown().await;
}
