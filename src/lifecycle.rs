//! The shared deal's lifecycle as HubSpot's side decides it (SPEC §1.4, issue 7): a rep
//! excludes a partner, or the HubSpot deal is closed won or lost. Pure: the engine reads the
//! HubSpot deal and asks [`decide`] what the link becomes and what the partner deal must show.
//!
//! Decisions written down here:
//! - A partner is excluded when its name is one of the `;`-separated names in the HubSpot
//!   deal's `dealsync_excluded_partners`. The job that sees it writes only the partner deal's
//!   status ("excluded", 0 active registrations) — no field, no message, in either direction —
//!   and the link leaves `active`, so nothing syncs after that.
//! - Closed won / closed lost are HubSpot stages (configurable; `closedwon`/`closedlost` by
//!   default). The job that sees one still syncs the fields (the partner sees the final stage),
//!   writes the banner ("customer purchased" / "deal lost") and the registration count (1 for
//!   won, 0 for lost), and the link becomes `closed_won` / `closed_lost`.
//! - Exclusion wins over a close seen in the same job. Nothing expires by itself: a link stays
//!   active until one of these happens. A closed or excluded link is not reopened by dealsync;
//!   a new registration links the deal again.

use crate::crm::Record;
use crate::properties::EXCLUDED_PARTNERS;
use crate::store::LinkState;

/// What the HubSpot deal says about one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Active,
    Excluded,
    ClosedWon,
    ClosedLost,
}

impl Lifecycle {
    /// The link state this stands for.
    pub fn link_state(self) -> LinkState {
        match self {
            Lifecycle::Active => LinkState::Active,
            Lifecycle::Excluded => LinkState::Excluded,
            Lifecycle::ClosedWon => LinkState::ClosedWon,
            Lifecycle::ClosedLost => LinkState::ClosedLost,
        }
    }

    /// The partner deal's banner and active-registration count.
    pub fn partner_view(self) -> (&'static str, &'static str) {
        match self {
            Lifecycle::Active => ("active", "1"),
            Lifecycle::Excluded => ("excluded", "0"),
            Lifecycle::ClosedWon => ("customer purchased", "1"),
            Lifecycle::ClosedLost => ("deal lost", "0"),
        }
    }

    /// Whether fields still sync in the job that sees this.
    pub fn syncs_fields(self) -> bool {
        self != Lifecycle::Excluded
    }
}

/// Which HubSpot stages close a deal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedStages {
    pub won: Vec<String>,
    pub lost: Vec<String>,
}

impl Default for ClosedStages {
    fn default() -> Self {
        ClosedStages {
            won: vec!["closedwon".into()],
            lost: vec!["closedlost".into()],
        }
    }
}

/// Decides one link's lifecycle from the HubSpot deal.
pub fn decide(hubspot: &Record, partner: &str, stages: &ClosedStages) -> Lifecycle {
    let excluded = hubspot
        .get(EXCLUDED_PARTNERS)
        .is_some_and(|v| v.split(';').map(str::trim).any(|p| p == partner));
    if excluded {
        return Lifecycle::Excluded;
    }
    match hubspot.get("dealstage") {
        Some(s) if stages.won.iter().any(|w| w == s) => Lifecycle::ClosedWon,
        Some(s) if stages.lost.iter().any(|l| l == s) => Lifecycle::ClosedLost,
        _ => Lifecycle::Active,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deal(excluded: Option<&str>, stage: Option<&str>) -> Record {
        let mut r = Record {
            id: "1".into(),
            ..Default::default()
        };
        r.properties
            .insert(EXCLUDED_PARTNERS.into(), excluded.map(str::to_owned));
        r.properties
            .insert("dealstage".into(), stage.map(str::to_owned));
        r
    }

    #[test]
    fn every_combination() {
        let s = ClosedStages::default();
        let cases = [
            (None, None, Lifecycle::Active),
            (None, Some("qualifiedtobuy"), Lifecycle::Active),
            (None, Some("closedwon"), Lifecycle::ClosedWon),
            (None, Some("closedlost"), Lifecycle::ClosedLost),
            (
                Some("partner-a"),
                Some("qualifiedtobuy"),
                Lifecycle::Excluded,
            ),
            (Some("partner-b; partner-a"), None, Lifecycle::Excluded),
            // Exclusion wins over a close.
            (Some("partner-a"), Some("closedwon"), Lifecycle::Excluded),
            // Another partner excluded, or a name that only contains ours: not us.
            (Some("partner-b"), Some("closedlost"), Lifecycle::ClosedLost),
            (Some("partner-ab"), None, Lifecycle::Active),
            (Some(""), None, Lifecycle::Active),
        ];
        for (ex, st, want) in cases {
            assert_eq!(
                decide(&deal(ex, st), "partner-a", &s),
                want,
                "{ex:?} {st:?}"
            );
        }
    }

    #[test]
    fn partner_views_and_states() {
        assert_eq!(Lifecycle::Excluded.partner_view(), ("excluded", "0"));
        assert_eq!(
            Lifecycle::ClosedWon.partner_view(),
            ("customer purchased", "1")
        );
        assert_eq!(Lifecycle::ClosedLost.partner_view(), ("deal lost", "0"));
        assert_eq!(Lifecycle::Active.partner_view(), ("active", "1"));
        assert!(!Lifecycle::Excluded.syncs_fields());
        assert!(Lifecycle::ClosedLost.syncs_fields());
        assert_eq!(Lifecycle::ClosedLost.link_state(), LinkState::ClosedLost);
    }

    #[test]
    fn configured_stages() {
        let s = ClosedStages {
            won: vec!["won".into()],
            lost: vec!["lost".into(), "dead".into()],
        };
        assert_eq!(
            decide(&deal(None, Some("dead")), "p", &s),
            Lifecycle::ClosedLost
        );
        assert_eq!(
            decide(&deal(None, Some("closedwon")), "p", &s),
            Lifecycle::Active
        );
    }
}
