//! The deal team (SPEC §1.3, issue 7 item 8): each side edits only its own users, and each side
//! sees the other side's team on the shared deal.
//!
//! Decisions written down here:
//! - A side's team is its deal's owner (`hubspot_owner_id`) plus its collaborators
//!   (`hs_all_collaborator_owner_ids`), both owner ids of that side's own portal. People edit
//!   them in their own CRM as usual; dealsync never writes the other side's team properties,
//!   so a side can only ever change its own users.
//! - The other side's team is shown read-only: the partner deal's `dealsync_hubspot_team`
//!   lists HubSpot's team, and the HubSpot deal's `dealsync_partner_team` has one line per
//!   linked partner (`partner-a: Ann Lee <ann@…> (owner), …`). A partner never sees another
//!   partner's team (isolation, SPEC §1.2).
//! - To add someone by email, a user writes it in `dealsync_team_add` on their deal (several
//!   separated by `,` or `;`). A user of their own portal joins the collaborators; an email
//!   that belongs to the other account is refused with the reason, as is one nobody in the
//!   portal has. The answer goes to `dealsync_team_status` and the request is cleared.
//! - `hs_all_collaborator_owner_ids` is HubSpot's "Deal collaborator" property. The shared
//!   API notes do not confirm that every portal accepts writes to it; where a portal refuses,
//!   the request is cleared and `dealsync_team_status` carries the portal's reason.
//! - Owners are listed once per portal and kept for [`DIRECTORY_TTL`]; a failed listing skips
//!   the team display for that job (it never fails the sync) and the next job tries again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::crm::{Client, CrmError, Owner, Record};

/// Collaborators beyond the owner ("Deal collaborator"), owner ids joined by `;`.
pub const COLLABORATORS: &str = "hs_all_collaborator_owner_ids";

/// How long a portal's owner list is trusted.
pub const DIRECTORY_TTL: Duration = Duration::from_secs(300);
/// After a failed listing, how long before the portal is asked again (every batch would ask,
/// and warn, otherwise).
pub const DIRECTORY_RETRY: Duration = Duration::from_secs(30);

/// Deal properties that change a team (webhooks on them queue the link).
pub fn watched() -> [&'static str; 3] {
    [
        "hubspot_owner_id",
        COLLABORATORS,
        crate::properties::TEAM_ADD,
    ]
}

/// The owner ids on a deal's team: the owner first, then collaborators, each once.
pub fn members(deal: &Record) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let owner = deal.get("hubspot_owner_id").map(str::trim);
    let collaborators = deal.get(COLLABORATORS).unwrap_or("").split(';');
    for id in owner.into_iter().chain(collaborators).map(str::trim) {
        if !id.is_empty() && !out.iter().any(|o| o == id) {
            out.push(id.to_owned());
        }
    }
    out
}

/// A team as people read it; ids the directory does not know show as `user <id>`.
pub fn describe(deal: &Record, directory: &[Owner]) -> String {
    let owner = deal.get("hubspot_owner_id").map(str::trim);
    members(deal)
        .iter()
        .map(|id| {
            let who = directory
                .iter()
                .find(|o| &o.id == id)
                .map(Owner::label)
                .unwrap_or_else(|| format!("user {id}"));
            if Some(id.as_str()) == owner {
                format!("{who} (owner)")
            } else {
                who
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(p, t)| (p.trim().to_owned(), t.trim().to_owned()))
        .filter(|(p, _)| !p.is_empty())
        .collect()
}

/// The HubSpot deal's partner-team text with `partner`'s line set to `team` (removed when
/// blank); other partners' lines stay as they are, in name order.
pub fn with_partner_line(current: &str, partner: &str, team: &str) -> String {
    let mut m = lines(current);
    if team.is_empty() {
        m.remove(partner);
    } else {
        m.insert(partner.to_owned(), team.to_owned());
    }
    m.into_iter()
        .map(|(p, t)| format!("{p}: {t}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `partner`'s line in the HubSpot deal's partner-team text.
pub fn partner_line(text: &str, partner: &str) -> String {
    lines(text).remove(partner).unwrap_or_default()
}

/// What one requested email comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addition {
    /// Joins the team (an owner id of this side's portal).
    Add { id: String, who: String },
    /// Already the owner or a collaborator.
    Already(String),
    /// Refused, with the reason people read.
    Refused(String),
}

/// Decides each email in a `dealsync_team_add` request (pure).
///
/// `own` is this side's directory; `others` the directories of the accounts on the other side
/// of the link, by the name people know them by ("HubSpot", or the partner's name).
pub fn decide_additions(
    request: &str,
    current: &[String],
    own: &[Owner],
    others: &[(&str, &[Owner])],
) -> Vec<Addition> {
    let mut out = Vec::new();
    for email in request
        .split([',', ';', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let same = |o: &&Owner| o.email.eq_ignore_ascii_case(email);
        if let Some(o) = own.iter().find(same) {
            if current.iter().any(|c| c == &o.id) {
                out.push(Addition::Already(format!(
                    "{} is already on the deal team",
                    o.label()
                )));
            } else {
                out.push(Addition::Add {
                    id: o.id.clone(),
                    who: o.label(),
                });
            }
        } else if let Some((account, _)) =
            others.iter().find(|(_, dir)| dir.iter().any(|o| same(&o)))
        {
            out.push(Addition::Refused(format!(
                "refused {email}: a user of {account}'s account; each side adds only its own users, so ask {account} to add them on their deal"
            )));
        } else {
            out.push(Addition::Refused(format!(
                "refused {email}: no user with that email in this portal; add them as a user first"
            )));
        }
    }
    out
}

/// The collaborators after the additions, and the status text for `dealsync_team_status`.
pub fn apply_additions(deal: &Record, additions: &[Addition]) -> (Option<String>, String) {
    let mut collaborators: Vec<String> = deal
        .get(COLLABORATORS)
        .unwrap_or("")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let mut changed = false;
    let mut said = Vec::new();
    for a in additions {
        match a {
            Addition::Add { id, who } => {
                if !collaborators.contains(id) {
                    collaborators.push(id.clone());
                    changed = true;
                }
                said.push(format!("added {who}"));
            }
            Addition::Already(s) | Addition::Refused(s) => said.push(s.clone()),
        }
    }
    (changed.then(|| collaborators.join(";")), said.join("; "))
}

/// A portal's owners and when they were listed.
type Listing = (Instant, Arc<Vec<Owner>>);

/// Each portal's owners, listed at most once per [`DIRECTORY_TTL`].
#[derive(Debug, Default)]
pub struct Directory {
    cache: Mutex<HashMap<String, Listing>>,
    /// Per portal, held while listing it, so workers starting together list a portal once
    /// (and a slow portal holds up no other).
    listing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When each portal's last listing failed.
    failed: Mutex<HashMap<String, Instant>>,
}

impl Directory {
    pub async fn owners(&self, client: &Client) -> Result<Arc<Vec<Owner>>, CrmError> {
        let cached = || {
            self.cache
                .lock()
                .get(client.portal())
                .filter(|(at, _)| at.elapsed() < DIRECTORY_TTL)
                .map(|(_, list)| list.clone())
        };
        if let Some(list) = cached() {
            return Ok(list);
        }
        let gate = self
            .listing
            .lock()
            .entry(client.portal().to_owned())
            .or_default()
            .clone();
        let _one_at_a_time = gate.lock().await;
        if let Some(list) = cached() {
            return Ok(list);
        }
        if let Some(at) = self.failed.lock().get(client.portal()) {
            if at.elapsed() < DIRECTORY_RETRY {
                return Err(CrmError::Connect {
                    portal: client.portal().to_owned(),
                    call: format!("GET {}", client.path(crate::crm::Op::Owners)),
                    detail: format!(
                        "listing the users failed {} s ago; asked again after {} s",
                        at.elapsed().as_secs(),
                        DIRECTORY_RETRY.as_secs()
                    ),
                });
            }
        }
        let list = match client.owners().await {
            Ok(l) => Arc::new(l),
            Err(e) => {
                self.failed
                    .lock()
                    .insert(client.portal().to_owned(), Instant::now());
                return Err(e);
            }
        };
        self.failed.lock().remove(client.portal());
        self.cache
            .lock()
            .insert(client.portal().to_owned(), (Instant::now(), list.clone()));
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deal(owner: Option<&str>, collaborators: &str) -> Record {
        let mut r = Record {
            id: "1".into(),
            ..Default::default()
        };
        r.properties
            .insert("hubspot_owner_id".into(), owner.map(str::to_owned));
        r.properties
            .insert(COLLABORATORS.into(), Some(collaborators.to_owned()));
        r
    }

    fn owner(id: &str, email: &str, first: &str) -> Owner {
        Owner {
            id: id.into(),
            email: email.into(),
            first_name: first.into(),
            last_name: "Lee".into(),
        }
    }

    #[test]
    fn members_are_the_owner_then_collaborators_once_each() {
        assert_eq!(members(&deal(Some("1"), "2;1; 3;;")), ["1", "2", "3"]);
        assert_eq!(members(&deal(None, "")), Vec::<String>::new());
    }

    #[test]
    fn a_team_reads_with_names_and_marks_the_owner() {
        let dir = [
            owner("1", "ann@a.example", "Ann"),
            owner("2", "bo@a.example", ""),
        ];
        assert_eq!(
            describe(&deal(Some("1"), "2;9"), &dir),
            "Ann Lee <ann@a.example> (owner), Lee <bo@a.example>, user 9"
        );
    }

    #[test]
    fn partner_lines_replace_only_their_own_partner() {
        let t = with_partner_line("", "b", "Bo");
        let t = with_partner_line(&t, "a", "Ann");
        assert_eq!(t, "a: Ann\nb: Bo");
        let t = with_partner_line(&t, "b", "Cy, Di");
        assert_eq!(t, "a: Ann\nb: Cy, Di");
        assert_eq!(partner_line(&t, "b"), "Cy, Di");
        assert_eq!(with_partner_line(&t, "a", ""), "b: Cy, Di");
    }

    #[test]
    fn additions_take_own_users_and_refuse_the_other_account_with_a_reason() {
        let own = [
            owner("1", "ann@p.example", "Ann"),
            owner("2", "bo@p.example", "Bo"),
        ];
        let hubspot = [owner("7", "rep@hubspot.example", "Rep")];
        let got = decide_additions(
            "BO@p.example; rep@hubspot.example, nobody@x.example;ann@p.example",
            &["1".into()],
            &own,
            &[("HubSpot", &hubspot)],
        );
        assert_eq!(got.len(), 4);
        assert!(matches!(&got[0], Addition::Add { id, .. } if id == "2"));
        assert!(
            matches!(&got[1], Addition::Refused(s) if s.contains("HubSpot's account") && s.contains("rep@hubspot.example"))
        );
        assert!(matches!(&got[2], Addition::Refused(s) if s.contains("no user with that email")));
        assert!(matches!(&got[3], Addition::Already(_)));
        let (collaborators, status) = apply_additions(&deal(Some("1"), "3"), &got);
        assert_eq!(collaborators.as_deref(), Some("3;2"));
        assert!(status.starts_with("added Bo Lee <bo@p.example>; refused rep@hubspot.example"));
    }

    #[test]
    fn a_request_with_only_refusals_changes_no_team() {
        let got = decide_additions("x@y.example", &[], &[], &[]);
        let (collaborators, status) = apply_additions(&deal(None, "4"), &got);
        assert_eq!(collaborators, None);
        assert!(status.starts_with("refused x@y.example"));
    }
}
