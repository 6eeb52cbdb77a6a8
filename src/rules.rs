//! Field rules: for one synced field of one linked deal, decide what to write to which side, what
//! the new shadow is and whether a conflict happened.
//!
//! This module is pure. It never does I/O, never awaits, never logs and never reads a clock: the
//! engine reads both sides and the shadow, calls [`decide`], performs the writes, and commits the
//! shadow only after the writes succeed (SPEC §2).
//!
//! # Model
//!
//! - The **shadow** is the last value both sides agreed on. `None` means the field was never
//!   synced for this link (first sync); `Some("")` means they agreed on blank.
//! - **Blank**: `None` and `""` are the same value everywhere ([`is_blank`]). Writes of blank are
//!   `Some(String::new())` ("clear the property"); a blank shadow is `ShadowUpdate::Set(None)`.
//! - Values are compared as exact strings. Callers normalise first (stage ids mapped into one
//!   space, multi-selects through [`normalize_multi`]).
//! - A side **changed** when its value differs from the shadow. On first sync a non-blank side
//!   counts as changed and a blank side as unchanged: a blank carries no information yet.
//!
//! Change-source tags are never consulted. Echo suppression falls out of the shadow: our own
//! earlier write comes back equal to the shadow, so that side is unchanged.
//!
//! # Decisions
//!
//! Direction `none`: no writes, shadow kept, no conflict, whatever the values. Otherwise:
//!
//! | partner | hubspot | outcome |
//! |---|---|---|
//! | unchanged | unchanged | nothing (shadow kept) |
//! | equal values | equal values | no writes; shadow set to the value if it is news (this covers the first sync with equal sides, both blank included) |
//! | changed | unchanged | if the direction lets partner → HubSpot: write it to HubSpot, shadow = it; else nothing |
//! | unchanged | changed | mirror image |
//! | changed | changed, differently | conflict, see below |
//!
//! Under `both` + `latest_wins`, a side that equals the shadow but whose own `changed_at` is
//! later than the other side's counts as changed: it was set back to the agreed value after
//! the other side's edit (or the shadow is stale because a crash cut a job between its write
//! and its commit), so the last edit made anywhere wins, as a conflict.
//!
//! A change on the side that does not own a one-way field (say a HubSpot edit of a `to_hubspot`
//! field) is left alone with the shadow kept, so it is overwritten the next time the owner
//! changes the field and not before.
//!
//! **Conflicts** (both sides changed to different values) are always reported in
//! [`Decision::conflict`]. The winner is, for `both`, the policy's: `partner_wins`,
//! `hubspot_wins`, or `latest_wins` comparing each side's `changed_at` (a missing timestamp loses,
//! an exact tie or two missing timestamps go to HubSpot). For one-way fields the source side
//! always wins. The winner's value is written to the loser when the direction allows and becomes
//! the shadow.
//!
//! **`unless_blank`**: a blank never overwrites a non-blank value. A blank change that would clear
//! the other side is dropped with the shadow kept, so the next decision is the same. In a
//! conflict whose winner is blank, the non-blank side wins instead and the [`Conflict`] names it
//! as the winner. For a one-way field that hands the win to the target side: nothing is written
//! (the direction forbids it) and the shadow becomes the target's value, so the conflict is
//! reported once and later decisions treat the source's blank as a dropped blank change.
//!
//! # Invariants
//!
//! Checked exhaustively and by property tests at the bottom of this file:
//! - a write never targets a side that already holds the value, nor a side the direction forbids;
//! - after the writes succeed ([`apply`]), deciding again writes nothing and reports nothing;
//! - for `both` without `unless_blank`, after one decision both sides and the shadow agree;
//! - a conflict is reported iff the direction is not `none` and both sides changed to different
//!   values (with the `latest_wins` reading of "changed" above);
//! - a new shadow is always a value one side holds after the writes.

use serde::{Deserialize, Serialize};

/// Which way a field's changes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Changes on either side flow to the other; conflicts are settled by the policy.
    #[default]
    Both,
    /// HubSpot's portal owns the field: its changes flow to the partner, never back.
    ToPartner,
    /// The partner's portal owns the field: its changes flow to HubSpot, never back.
    ToHubspot,
    /// The field is not synced.
    None,
}

impl Direction {
    /// Whether a change on `from` may be written to the other side.
    pub fn allows(self, from: Side) -> bool {
        match self {
            Direction::Both => true,
            Direction::ToPartner => from == Side::Hubspot,
            Direction::ToHubspot => from == Side::Partner,
            Direction::None => false,
        }
    }
}

/// Who wins when both sides changed a `both` field to different values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// The side whose property history says it changed later; ties go to HubSpot.
    #[default]
    LatestWins,
    /// HubSpot's portal always wins.
    HubspotWins,
    /// The partner's portal always wins.
    PartnerWins,
}

impl ConflictPolicy {
    /// The configuration spelling (`latest_wins`, ...), for status output and records.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::LatestWins => "latest_wins",
            ConflictPolicy::HubspotWins => "hubspot_wins",
            ConflictPolicy::PartnerWins => "partner_wins",
        }
    }
}

/// One of the two portals of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Partner,
    Hubspot,
}

impl Side {
    /// The other portal.
    pub fn other(self) -> Side {
        match self {
            Side::Partner => Side::Hubspot,
            Side::Hubspot => Side::Partner,
        }
    }

    /// `partner` or `hubspot`, for status output and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Partner => "partner",
            Side::Hubspot => "hubspot",
        }
    }
}

/// How one field is synced. Every key is optional in configuration; the defaults are
/// `direction = "both"`, `conflict = "latest_wins"`, `unless_blank = false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Rule {
    pub direction: Direction,
    pub conflict: ConflictPolicy,
    /// A blank value never overwrites a non-blank one.
    pub unless_blank: bool,
}

/// One side's current value of the field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// The normalised value; `None` and `Some("")` both mean blank.
    pub value: Option<String>,
    /// When the property last changed on this side (ms since the epoch, from the property's own
    /// history), if known. Only `latest_wins` conflicts look at it.
    pub changed_at: Option<i64>,
}

/// What to do with the stored shadow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ShadowUpdate {
    /// Leave it as it is (including "still never synced").
    #[default]
    Keep,
    /// Store this as the agreed value; `None` means blank.
    Set(Option<String>),
}

/// Both sides changed the field to different values since they last agreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The partner's value at decision time (`None` when blank).
    pub partner_value: Option<String>,
    /// HubSpot's value at decision time (`None` when blank).
    pub hubspot_value: Option<String>,
    /// The side whose value was kept, after any `unless_blank` override.
    pub winner: Side,
    /// The configured policy (for one-way fields the source wins regardless).
    pub policy: ConflictPolicy,
}

/// The outcome of [`decide`] for one field of one link.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Value to write to the partner's portal; `Some("")` clears the property.
    pub write_partner: Option<String>,
    /// Value to write to HubSpot's portal; `Some("")` clears the property.
    pub write_hubspot: Option<String>,
    /// The shadow to commit once the writes have succeeded.
    pub shadow: ShadowUpdate,
    /// Set when both sides changed to different values; every conflict is to be recorded.
    pub conflict: Option<Conflict>,
}

impl Decision {
    /// No writes, shadow kept and no conflict: the field needs nothing.
    pub fn is_noop(&self) -> bool {
        self.write_partner.is_none()
            && self.write_hubspot.is_none()
            && self.shadow == ShadowUpdate::Keep
            && self.conflict.is_none()
    }

    fn agree(value: Option<&str>) -> Decision {
        Decision {
            shadow: ShadowUpdate::Set(value.map(str::to_owned)),
            ..Decision::default()
        }
    }

    /// Writes `value` to `target` and makes it the shadow.
    fn write(target: Side, value: Option<&str>) -> Decision {
        let mut d = Decision::agree(value);
        let w = Some(value.unwrap_or("").to_owned());
        match target {
            Side::Partner => d.write_partner = w,
            Side::Hubspot => d.write_hubspot = w,
        }
        d
    }
}

/// Whether a value is blank (`None` or `""`).
pub fn is_blank(value: Option<&str>) -> bool {
    matches!(value, None | Some(""))
}

/// Canonical form of a `;`-separated multi-select value: items trimmed, empty items dropped,
/// sorted and deduplicated, so two orderings of the same set compare equal.
pub fn normalize_multi(value: &str) -> String {
    let mut items: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    items.sort_unstable();
    items.dedup();
    items.join(";")
}

/// Blank as `None`, so `==` is blank-aware equality.
fn present(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

/// Decides what one field of one link needs. See the module documentation for the rules.
///
/// `shadow` is the stored agreed value (`None`: never synced, `Some("")`: agreed on blank).
pub fn decide(
    rule: &Rule,
    shadow: Option<&str>,
    partner: &Observed,
    hubspot: &Observed,
) -> Decision {
    if rule.direction == Direction::None {
        return Decision::default();
    }
    let p = present(partner.value.as_deref());
    let h = present(hubspot.value.as_deref());
    let agreed = shadow.map(|s| present(Some(s)));

    if p == h {
        // Covers echoes, both sides making the same edit, and a first sync that finds the sides
        // already equal (blank included, so later blank sides are judged against a real shadow).
        return if agreed == Some(p) {
            Decision::default()
        } else {
            Decision::agree(p)
        };
    }

    let (p_changed, h_changed) = match agreed {
        Some(s) => (p != s, h != s),
        // Nothing agreed yet: a blank side has no edit to propagate, a non-blank one does.
        None => (p.is_some(), h.is_some()),
    };
    // A side that equals the shadow may still hold the newest edit: set back to the agreed
    // value after the other side changed, or the shadow is stale because a crash cut a job
    // between its write and its commit. Under latest_wins its own change time decides, so the
    // last edit made anywhere wins.
    let later = |a: Option<i64>, b: Option<i64>| matches!((a, b), (Some(a), Some(b)) if a > b);
    let by_time = agreed.is_some()
        && rule.direction == Direction::Both
        && rule.conflict == ConflictPolicy::LatestWins;
    let (p_changed, h_changed) = match (p_changed, h_changed) {
        (true, false) if by_time && later(hubspot.changed_at, partner.changed_at) => (true, true),
        (false, true) if by_time && later(partner.changed_at, hubspot.changed_at) => (true, true),
        other => other,
    };
    match (p_changed, h_changed) {
        (true, true) => conflict(rule, p, h, partner.changed_at, hubspot.changed_at),
        (true, false) => propagate(rule, Side::Partner, p, h),
        (false, true) => propagate(rule, Side::Hubspot, h, p),
        // Unreachable: p != h, so at least one of them differs from any shadow, and with no
        // shadow at least one is non-blank. Doing nothing is the safe answer regardless.
        (false, false) => Decision::default(),
    }
}

/// Only `from` changed, to `value`; the other side still holds `target` (which differs).
fn propagate(rule: &Rule, from: Side, value: Option<&str>, target: Option<&str>) -> Decision {
    if !rule.direction.allows(from) {
        // An edit on the non-owning side of a one-way field: leave it until the owner changes.
        return Decision::default();
    }
    if rule.unless_blank && value.is_none() && target.is_some() {
        // Keeping the shadow makes the same blank look like the same change next time, so the
        // decision is stable instead of flapping.
        return Decision::default();
    }
    Decision::write(from.other(), value)
}

/// Both sides changed, to `p` and `h` respectively, which differ.
fn conflict(
    rule: &Rule,
    p: Option<&str>,
    h: Option<&str>,
    p_at: Option<i64>,
    h_at: Option<i64>,
) -> Decision {
    let mut winner = match rule.direction {
        Direction::Both => policy_winner(rule.conflict, p_at, h_at),
        Direction::ToHubspot => Side::Partner,
        Direction::ToPartner => Side::Hubspot,
        Direction::None => return Decision::default(),
    };
    let value_of = |side| match side {
        Side::Partner => p,
        Side::Hubspot => h,
    };
    if rule.unless_blank && value_of(winner).is_none() {
        // The values differ, so the other side is non-blank.
        winner = winner.other();
    }
    let value = value_of(winner);
    let mut d = if rule.direction.allows(winner) {
        Decision::write(winner.other(), value)
    } else {
        // A one-way target that won through unless_blank: it keeps its value, which becomes the
        // shadow so this conflict is reported once rather than on every pass.
        Decision::agree(value)
    };
    d.conflict = Some(Conflict {
        partner_value: p.map(str::to_owned),
        hubspot_value: h.map(str::to_owned),
        winner,
        policy: rule.conflict,
    });
    d
}

fn policy_winner(policy: ConflictPolicy, p_at: Option<i64>, h_at: Option<i64>) -> Side {
    match policy {
        ConflictPolicy::HubspotWins => Side::Hubspot,
        ConflictPolicy::PartnerWins => Side::Partner,
        ConflictPolicy::LatestWins => match (p_at, h_at) {
            (Some(p), Some(h)) if p > h => Side::Partner,
            (Some(_), None) => Side::Partner,
            // Neither side is later (a tie, or no usable timestamps): a fixed side keeps the
            // outcome deterministic, and the configured default is HubSpot's portal.
            _ => Side::Hubspot,
        },
    }
}

/// The state after `decision`'s writes have succeeded and its shadow has been committed:
/// `(partner, hubspot, shadow)`.
///
/// A written side takes the written value with `changed_at: None`: the write's own timestamp is
/// only known once the side is read back. A `Set(None)` shadow comes back as `Some("")` (agreed
/// on blank), distinct from `None` (never synced).
pub fn apply(
    decision: &Decision,
    partner: &Observed,
    hubspot: &Observed,
    shadow: Option<&str>,
) -> (Observed, Observed, Option<String>) {
    let written = |current: &Observed, write: &Option<String>| match write {
        Some(v) => Observed {
            value: Some(v.clone()),
            changed_at: None,
        },
        None => current.clone(),
    };
    let shadow = match &decision.shadow {
        ShadowUpdate::Keep => shadow.map(str::to_owned),
        ShadowUpdate::Set(v) => Some(v.clone().unwrap_or_default()),
    };
    (
        written(partner, &decision.write_partner),
        written(hubspot, &decision.write_hubspot),
        shadow,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DIRECTIONS: [Direction; 4] = [
        Direction::Both,
        Direction::ToPartner,
        Direction::ToHubspot,
        Direction::None,
    ];
    const POLICIES: [ConflictPolicy; 3] = [
        ConflictPolicy::LatestWins,
        ConflictPolicy::HubspotWins,
        ConflictPolicy::PartnerWins,
    ];
    /// Blank twice (both spellings), an agreed value and two others.
    const VALUES: [Option<&str>; 5] = [None, Some(""), Some("a"), Some("b"), Some("c")];
    /// Never synced, agreed on blank, agreed on a value.
    const SHADOWS: [Option<&str>; 3] = [None, Some(""), Some("a")];
    const STAMPS: [Option<i64>; 3] = [None, Some(1), Some(2)];

    fn obs(value: Option<&str>, changed_at: Option<i64>) -> Observed {
        Observed {
            value: value.map(str::to_owned),
            changed_at,
        }
    }

    fn at(value: &str, changed_at: i64) -> Observed {
        obs(Some(value), Some(changed_at))
    }

    fn rule(direction: Direction, conflict: ConflictPolicy, unless_blank: bool) -> Rule {
        Rule {
            direction,
            conflict,
            unless_blank,
        }
    }

    fn both(conflict: ConflictPolicy) -> Rule {
        rule(Direction::Both, conflict, false)
    }

    fn one_way(direction: Direction) -> Rule {
        rule(direction, ConflictPolicy::LatestWins, false)
    }

    fn set(v: &str) -> ShadowUpdate {
        ShadowUpdate::Set(present(Some(v)).map(str::to_owned))
    }

    fn w(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    // The test's own reading of the semantics, kept independent of the implementation's helpers.

    fn changed(shadow: Option<&str>, v: Option<&str>) -> bool {
        match shadow {
            Some(s) => is_blank(Some(s)) != is_blank(v) || (!is_blank(v) && v != Some(s)),
            None => !is_blank(v),
        }
    }

    fn same(a: Option<&str>, b: Option<&str>) -> bool {
        (is_blank(a) && is_blank(b)) || a == b
    }

    fn expect_conflict(r: &Rule, shadow: Option<&str>, p: &Observed, h: &Observed) -> bool {
        let (pv, hv) = (p.value.as_deref(), h.value.as_deref());
        let later = |a: Option<i64>, b: Option<i64>| matches!((a, b), (Some(a), Some(b)) if a > b);
        let by_time = shadow.is_some()
            && r.direction == Direction::Both
            && r.conflict == ConflictPolicy::LatestWins;
        // A side back at the shadow value but changed after the other side counts as changed.
        let p_changed = changed(shadow, pv) || (by_time && later(p.changed_at, h.changed_at));
        let h_changed = changed(shadow, hv) || (by_time && later(h.changed_at, p.changed_at));
        r.direction != Direction::None && p_changed && h_changed && !same(pv, hv)
    }

    fn write_for(d: &Decision, side: Side) -> Option<&str> {
        match side {
            Side::Partner => d.write_partner.as_deref(),
            Side::Hubspot => d.write_hubspot.as_deref(),
        }
    }

    /// Every invariant of the module doc, for one input and its decision. Panics with the inputs.
    fn check(r: &Rule, shadow: Option<&str>, p: &Observed, h: &Observed) -> Decision {
        let d = decide(r, shadow, p, h);
        let ctx = format!("rule {r:?} shadow {shadow:?} partner {p:?} hubspot {h:?} -> {d:?}");
        let value = |side| match side {
            Side::Partner => p.value.as_deref(),
            Side::Hubspot => h.value.as_deref(),
        };

        if r.direction == Direction::None {
            assert!(d.is_noop(), "direction none acted: {ctx}");
            return d;
        }
        for target in [Side::Partner, Side::Hubspot] {
            if let Some(v) = write_for(&d, target) {
                assert!(
                    r.direction.allows(target.other()),
                    "write against direction: {ctx}"
                );
                assert!(!same(Some(v), value(target)), "no-op write: {ctx}");
                if r.unless_blank {
                    assert!(!is_blank(Some(v)), "blank overwrote a value: {ctx}");
                }
            }
        }
        assert!(
            !(d.write_partner.is_some() && d.write_hubspot.is_some()),
            "wrote both sides: {ctx}"
        );

        // Echo: both sides still hold the agreed value.
        if let Some(s) = shadow {
            if same(value(Side::Partner), Some(s)) && same(value(Side::Hubspot), Some(s)) {
                assert!(d.is_noop(), "echo not suppressed: {ctx}");
            }
        }

        assert_eq!(
            d.conflict.is_some(),
            expect_conflict(r, shadow, p, h),
            "conflict: {ctx}"
        );
        if let Some(c) = &d.conflict {
            assert_eq!(
                c.partner_value.as_deref(),
                present(value(Side::Partner)),
                "{ctx}"
            );
            assert_eq!(
                c.hubspot_value.as_deref(),
                present(value(Side::Hubspot)),
                "{ctx}"
            );
            assert_eq!(c.policy, r.conflict, "{ctx}");
            let base = match r.direction {
                Direction::Both => match r.conflict {
                    ConflictPolicy::PartnerWins => Side::Partner,
                    ConflictPolicy::HubspotWins => Side::Hubspot,
                    ConflictPolicy::LatestWins => match (p.changed_at, h.changed_at) {
                        (Some(pt), Some(ht)) if pt > ht => Side::Partner,
                        (Some(_), None) => Side::Partner,
                        _ => Side::Hubspot,
                    },
                },
                Direction::ToHubspot => Side::Partner,
                _ => Side::Hubspot,
            };
            let winner = if r.unless_blank && is_blank(value(base)) {
                base.other()
            } else {
                base
            };
            assert_eq!(c.winner, winner, "winner: {ctx}");
            assert_eq!(
                d.shadow,
                ShadowUpdate::Set(present(value(winner)).map(str::to_owned))
            );
        }

        let (p2, h2, s2) = apply(&d, p, h, shadow);
        let (pv, hv) = (p2.value.as_deref(), h2.value.as_deref());
        if let ShadowUpdate::Set(v) = &d.shadow {
            assert!(
                same(v.as_deref(), pv) || same(v.as_deref(), hv),
                "shadow held by neither: {ctx}"
            );
        }

        // Idempotence: the state after the writes needs nothing more.
        let again = decide(r, s2.as_deref(), &p2, &h2);
        assert!(
            again.is_noop(),
            "second decision not a no-op: {ctx} then {again:?}"
        );

        // Convergence.
        if r.direction == Direction::Both && !r.unless_blank {
            assert!(
                same(pv, hv) && same(pv, s2.as_deref()),
                "not converged: {ctx}"
            );
        }
        let source = match r.direction {
            Direction::ToHubspot => Some(Side::Partner),
            Direction::ToPartner => Some(Side::Hubspot),
            _ => None,
        };
        if let Some(src) = source {
            let sv = value(src);
            if changed(shadow, sv) && !(r.unless_blank && is_blank(sv)) {
                let tv = if src == Side::Partner { hv } else { pv };
                assert!(same(tv, sv), "target does not follow its source: {ctx}");
            }
            // The target's own edit is left alone.
            if !changed(shadow, sv) {
                assert!(write_for(&d, src.other()).is_none(), "{ctx}");
                if shadow.is_some() && !same(value(src.other()), sv) {
                    assert_eq!(d.shadow, ShadowUpdate::Keep, "{ctx}");
                }
            }
        }
        d
    }

    #[test]
    fn exhaustive_table_holds_every_invariant() {
        let mut cases = 0;
        let (mut conflicts, mut writes, mut noops, mut overrides) = (0, 0, 0, 0);
        for direction in DIRECTIONS {
            for policy in POLICIES {
                for unless_blank in [false, true] {
                    let r = rule(direction, policy, unless_blank);
                    for shadow in SHADOWS {
                        for pv in VALUES {
                            for hv in VALUES {
                                for pt in STAMPS {
                                    for ht in STAMPS {
                                        let d = check(&r, shadow, &obs(pv, pt), &obs(hv, ht));
                                        cases += 1;
                                        noops += usize::from(d.is_noop());
                                        writes += usize::from(
                                            d.write_partner.is_some() || d.write_hubspot.is_some(),
                                        );
                                        if let Some(c) = &d.conflict {
                                            conflicts += 1;
                                            let blank_won = match c.winner {
                                                Side::Partner => c.hubspot_value.is_none(),
                                                Side::Hubspot => c.partner_value.is_none(),
                                            };
                                            overrides += usize::from(unless_blank && blank_won);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 4 * 3 * 2 * 3 * 5 * 5 * 3 * 3);
        // The table must actually exercise every branch.
        assert!(conflicts > 0 && writes > 0 && noops > 0 && overrides > 0);
    }

    #[test]
    fn echo_of_our_own_write_is_ignored() {
        for r in [
            both(ConflictPolicy::LatestWins),
            one_way(Direction::ToHubspot),
        ] {
            let d = decide(&r, Some("a"), &at("a", 5), &at("a", 9));
            assert!(d.is_noop());
        }
        // None and "" are the same blank.
        let d = decide(
            &both(ConflictPolicy::LatestWins),
            Some(""),
            &obs(None, None),
            &at("", 1),
        );
        assert!(d.is_noop());
    }

    #[test]
    fn both_one_sided_change_flows_to_the_other_side() {
        let r = both(ConflictPolicy::LatestWins);
        let d = decide(&r, Some("a"), &at("b", 1), &at("a", 0));
        assert_eq!(
            d,
            Decision {
                write_hubspot: w("b"),
                shadow: set("b"),
                ..Decision::default()
            }
        );
        let d = decide(&r, Some("a"), &at("a", 0), &at("c", 1));
        assert_eq!(
            d,
            Decision {
                write_partner: w("c"),
                shadow: set("c"),
                ..Decision::default()
            }
        );
    }

    #[test]
    fn both_without_unless_blank_clears_the_other_side() {
        let d = decide(
            &both(ConflictPolicy::LatestWins),
            Some("a"),
            &obs(None, None),
            &at("a", 0),
        );
        assert_eq!(
            d,
            Decision {
                write_hubspot: w(""),
                shadow: set(""),
                ..Decision::default()
            }
        );
    }

    #[test]
    fn same_change_on_both_sides_only_moves_the_shadow() {
        let d = decide(
            &both(ConflictPolicy::LatestWins),
            Some("a"),
            &at("b", 1),
            &at("b", 2),
        );
        assert_eq!(
            d,
            Decision {
                shadow: set("b"),
                ..Decision::default()
            }
        );
        let d = decide(
            &one_way(Direction::ToHubspot),
            Some("a"),
            &at("b", 1),
            &at("b", 2),
        );
        assert_eq!(
            d,
            Decision {
                shadow: set("b"),
                ..Decision::default()
            }
        );
    }

    #[test]
    fn latest_wins_compares_property_timestamps() {
        let r = both(ConflictPolicy::LatestWins);
        let d = decide(&r, Some("a"), &at("b", 20), &at("c", 10));
        assert_eq!(d.write_hubspot, w("b"));
        assert_eq!(d.shadow, set("b"));
        assert_eq!(
            d.conflict,
            Some(Conflict {
                partner_value: w("b"),
                hubspot_value: w("c"),
                winner: Side::Partner,
                policy: ConflictPolicy::LatestWins,
            })
        );
        let d = decide(&r, Some("a"), &at("b", 10), &at("c", 20));
        assert_eq!(
            (d.write_partner, d.conflict.map(|c| c.winner)),
            (w("c"), Some(Side::Hubspot))
        );
    }

    #[test]
    fn latest_wins_tie_goes_to_hubspot_and_a_missing_timestamp_loses() {
        let r = both(ConflictPolicy::LatestWins);
        let winner =
            |p: Observed, h: Observed| decide(&r, Some("a"), &p, &h).conflict.unwrap().winner;
        assert_eq!(winner(at("b", 7), at("c", 7)), Side::Hubspot);
        assert_eq!(
            winner(obs(Some("b"), None), obs(Some("c"), None)),
            Side::Hubspot
        );
        assert_eq!(winner(obs(Some("b"), None), at("c", 1)), Side::Hubspot);
        assert_eq!(winner(at("b", 1), obs(Some("c"), None)), Side::Partner);
    }

    #[test]
    fn fixed_policies_ignore_timestamps() {
        let d = decide(
            &both(ConflictPolicy::HubspotWins),
            Some("a"),
            &at("b", 99),
            &at("c", 1),
        );
        assert_eq!(
            (d.write_partner, d.write_hubspot, d.shadow),
            (w("c"), None, set("c"))
        );
        let d = decide(
            &both(ConflictPolicy::PartnerWins),
            Some("a"),
            &at("b", 1),
            &at("c", 99),
        );
        assert_eq!(
            (d.write_partner, d.write_hubspot, d.shadow),
            (None, w("b"), set("b"))
        );
    }

    #[test]
    fn one_way_source_overwrites_a_target_edit_and_records_the_conflict() {
        // HubSpot's edit is newer, but the partner owns the field.
        let r = rule(Direction::ToHubspot, ConflictPolicy::HubspotWins, false);
        let d = decide(&r, Some("a"), &at("b", 1), &at("c", 2));
        assert_eq!(d.write_hubspot, w("b"));
        assert_eq!(d.write_partner, None);
        assert_eq!(d.shadow, set("b"));
        assert_eq!(
            d.conflict.map(|c| (c.winner, c.policy)),
            Some((Side::Partner, r.conflict))
        );

        let d = decide(
            &one_way(Direction::ToPartner),
            Some("a"),
            &at("b", 2),
            &at("c", 1),
        );
        assert_eq!((d.write_partner, d.write_hubspot), (w("c"), None));
        assert_eq!(d.conflict.map(|c| c.winner), Some(Side::Hubspot));
    }

    #[test]
    fn one_way_target_edit_is_left_alone_until_the_source_changes() {
        let r = one_way(Direction::ToHubspot);
        assert!(decide(&r, Some("a"), &at("a", 1), &at("c", 2)).is_noop());
        assert!(decide(&r, Some("a"), &at("a", 1), &obs(None, Some(2))).is_noop());
        // Then the partner changes: it wins, and the HubSpot edit is reported as overwritten.
        let d = decide(&r, Some("a"), &at("b", 3), &at("c", 2));
        assert_eq!(d.write_hubspot, w("b"));
        assert!(d.conflict.is_some());

        let r = one_way(Direction::ToPartner);
        assert!(decide(&r, Some("a"), &at("c", 2), &at("a", 1)).is_noop());
        let d = decide(&r, Some("a"), &at("a", 2), &at("b", 1));
        assert_eq!(
            d,
            Decision {
                write_partner: w("b"),
                shadow: set("b"),
                ..Decision::default()
            }
        );
    }

    #[test]
    fn direction_none_never_acts() {
        let r = rule(Direction::None, ConflictPolicy::PartnerWins, false);
        assert!(decide(&r, None, &at("a", 1), &obs(None, None)).is_noop());
        assert!(decide(&r, None, &at("a", 1), &at("a", 1)).is_noop());
        assert!(decide(&r, Some("a"), &at("b", 1), &at("c", 2)).is_noop());
    }

    #[test]
    fn unless_blank_drops_a_blank_change_and_keeps_the_shadow() {
        let r = rule(Direction::Both, ConflictPolicy::LatestWins, true);
        let d = decide(&r, Some("a"), &obs(Some(""), Some(5)), &at("a", 1));
        assert!(d.is_noop());
        let d = decide(&r, Some("a"), &at("a", 1), &obs(None, Some(5)));
        assert!(d.is_noop());
        // A non-blank change still flows.
        let d = decide(&r, Some("a"), &at("b", 5), &at("a", 1));
        assert_eq!(d.write_hubspot, w("b"));
        let r = rule(Direction::ToHubspot, ConflictPolicy::LatestWins, true);
        assert!(decide(&r, Some("a"), &obs(None, Some(5)), &at("a", 1)).is_noop());
    }

    #[test]
    fn unless_blank_hands_a_blank_winner_s_conflict_to_the_non_blank_side() {
        // The partner cleared the field later, HubSpot changed it earlier: HubSpot's value stays.
        let r = rule(Direction::Both, ConflictPolicy::LatestWins, true);
        let d = decide(&r, Some("a"), &obs(None, Some(9)), &at("c", 1));
        assert_eq!(
            (d.write_partner, d.write_hubspot, d.shadow),
            (w("c"), None, set("c"))
        );
        assert_eq!(
            d.conflict,
            Some(Conflict {
                partner_value: None,
                hubspot_value: w("c"),
                winner: Side::Hubspot,
                policy: ConflictPolicy::LatestWins,
            })
        );
        // Without unless_blank the clearing wins.
        let r = rule(Direction::Both, ConflictPolicy::LatestWins, false);
        let d = decide(&r, Some("a"), &obs(None, Some(9)), &at("c", 1));
        assert_eq!(
            (d.write_partner, d.write_hubspot, d.shadow),
            (None, w(""), set(""))
        );
    }

    #[test]
    fn unless_blank_one_way_blank_source_loses_to_the_target_without_a_write() {
        let r = rule(Direction::ToHubspot, ConflictPolicy::LatestWins, true);
        let (p, h) = (obs(Some(""), Some(9)), at("c", 1));
        let d = decide(&r, Some("a"), &p, &h);
        assert_eq!(
            (d.write_partner.as_deref(), d.write_hubspot.as_deref()),
            (None, None)
        );
        assert_eq!(d.shadow, set("c"));
        assert_eq!(d.conflict.as_ref().map(|c| c.winner), Some(Side::Hubspot));
        // Reported once: the next pass sees a dropped blank change.
        let (p2, h2, s2) = apply(&d, &p, &h, Some("a"));
        assert!(decide(&r, s2.as_deref(), &p2, &h2).is_noop());
    }

    #[test]
    fn first_sync_equal_sides_record_the_shadow() {
        for r in [
            both(ConflictPolicy::LatestWins),
            one_way(Direction::ToPartner),
        ] {
            let d = decide(&r, None, &at("a", 1), &at("a", 2));
            assert_eq!(
                d,
                Decision {
                    shadow: set("a"),
                    ..Decision::default()
                }
            );
            let d = decide(&r, None, &obs(None, None), &obs(Some(""), None));
            assert_eq!(
                d,
                Decision {
                    shadow: ShadowUpdate::Set(None),
                    ..Decision::default()
                }
            );
        }
    }

    #[test]
    fn first_sync_blank_side_takes_the_other_value() {
        let r = both(ConflictPolicy::HubspotWins);
        let d = decide(&r, None, &at("a", 1), &obs(None, Some(5)));
        assert_eq!(
            d,
            Decision {
                write_hubspot: w("a"),
                shadow: set("a"),
                ..Decision::default()
            }
        );
        let d = decide(&r, None, &obs(Some(""), None), &at("b", 1));
        assert_eq!(
            d,
            Decision {
                write_partner: w("b"),
                shadow: set("b"),
                ..Decision::default()
            }
        );
        // One-way: only the source's value flows; a lone target value waits, unreported.
        let r = one_way(Direction::ToHubspot);
        assert_eq!(
            decide(&r, None, &at("a", 1), &obs(None, None)).write_hubspot,
            w("a")
        );
        assert!(decide(&r, None, &obs(None, None), &at("b", 1)).is_noop());
    }

    #[test]
    fn first_sync_different_values_are_a_conflict() {
        let d = decide(
            &both(ConflictPolicy::LatestWins),
            None,
            &at("a", 2),
            &at("b", 1),
        );
        assert_eq!((d.write_hubspot, d.shadow), (w("a"), set("a")));
        assert_eq!(d.conflict.map(|c| c.winner), Some(Side::Partner));
        // One-way: the source wins whatever the policy.
        let r = rule(Direction::ToPartner, ConflictPolicy::PartnerWins, false);
        let d = decide(&r, None, &at("a", 2), &at("b", 1));
        assert_eq!((d.write_partner, d.shadow), (w("b"), set("b")));
        assert_eq!(d.conflict.map(|c| c.winner), Some(Side::Hubspot));
    }

    #[test]
    fn apply_describes_the_state_after_the_writes() {
        let d = Decision {
            write_hubspot: w(""),
            shadow: ShadowUpdate::Set(None),
            ..Decision::default()
        };
        let (p, h, s) = apply(&d, &at("x", 1), &at("a", 1), Some("a"));
        assert_eq!(
            (p, h, s),
            (at("x", 1), obs(Some(""), None), Some(String::new()))
        );
        let (_, _, s) = apply(&Decision::default(), &at("x", 1), &at("a", 1), None);
        assert_eq!(s, None);
    }

    #[test]
    fn normalize_multi_is_a_set() {
        assert_eq!(normalize_multi("b;a; c ;;a"), "a;b;c");
        assert_eq!(normalize_multi(" ; ;"), "");
        assert_eq!(normalize_multi(""), "");
        assert_eq!(normalize_multi("x"), "x");
        assert_eq!(normalize_multi("c;b;a"), normalize_multi("a;b;c;b"));
    }

    #[test]
    fn blank_is_none_or_empty() {
        assert!(is_blank(None));
        assert!(is_blank(Some("")));
        assert!(!is_blank(Some(" ")));
        assert!(!is_blank(Some("a")));
    }

    #[test]
    fn rules_load_from_config_with_defaults() {
        let r: Rule = serde_json::from_str(r#"{"direction": "to_hubspot"}"#).unwrap();
        assert_eq!(
            r,
            rule(Direction::ToHubspot, ConflictPolicy::LatestWins, false)
        );
        let r: Rule = serde_json::from_str("{}").unwrap();
        assert_eq!(r, Rule::default());
        assert_eq!(r, rule(Direction::Both, ConflictPolicy::LatestWins, false));
        let r: Rule = serde_json::from_str(
            r#"{"direction": "none", "conflict": "partner_wins", "unless_blank": true}"#,
        )
        .unwrap();
        assert_eq!(r, rule(Direction::None, ConflictPolicy::PartnerWins, true));
        assert!(serde_json::from_str::<Rule>(r#"{"direction": "toHubspot"}"#).is_err());
        for d in DIRECTIONS {
            let back: Direction = serde_json::from_value(serde_json::to_value(d).unwrap()).unwrap();
            assert_eq!(back, d);
        }
        for p in POLICIES {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        assert_eq!(
            serde_json::to_value(Side::Hubspot).unwrap(),
            Side::Hubspot.as_str()
        );
    }

    // Property tests over small alphabets so that equal values, blanks and echoes are frequent.

    fn value_s() -> impl Strategy<Value = Option<String>> {
        prop::sample::select(VALUES.to_vec()).prop_map(|v| v.map(str::to_owned))
    }

    fn observed_s() -> impl Strategy<Value = Observed> {
        (value_s(), prop::option::of(0i64..3))
            .prop_map(|(value, changed_at)| Observed { value, changed_at })
    }

    fn shadow_s() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop::sample::select(vec!["", "a", "b", "c"]).prop_map(str::to_owned))
    }

    fn rule_s() -> impl Strategy<Value = Rule> {
        (
            prop::sample::select(DIRECTIONS.to_vec()),
            prop::sample::select(POLICIES.to_vec()),
            any::<bool>(),
        )
            .prop_map(|(d, c, u)| rule(d, c, u))
    }

    /// One step of a random history: an edit on one side at a time, or a sync.
    #[derive(Debug, Clone)]
    enum Step {
        EditPartner(Option<String>),
        EditHubspot(Option<String>),
        Sync,
    }

    fn step_s() -> impl Strategy<Value = Step> {
        prop_oneof![
            value_s().prop_map(Step::EditPartner),
            value_s().prop_map(Step::EditHubspot),
            Just(Step::Sync),
        ]
    }

    proptest! {
        #[test]
        fn prop_every_invariant_holds(r in rule_s(), s in shadow_s(), p in observed_s(), h in observed_s()) {
            check(&r, s.as_deref(), &p, &h);
        }

        #[test]
        fn prop_idempotent(r in rule_s(), s in shadow_s(), p in observed_s(), h in observed_s()) {
            let d = decide(&r, s.as_deref(), &p, &h);
            let (p2, h2, s2) = apply(&d, &p, &h, s.as_deref());
            let again = decide(&r, s2.as_deref(), &p2, &h2);
            prop_assert_eq!(again.write_partner, None);
            prop_assert_eq!(again.write_hubspot, None);
            prop_assert_eq!(again.conflict, None);
            match again.shadow {
                ShadowUpdate::Keep => {}
                ShadowUpdate::Set(v) => prop_assert!(same(v.as_deref(), s2.as_deref())),
            }
        }

        #[test]
        fn prop_converges(r in rule_s(), s in shadow_s(), p in observed_s(), h in observed_s()) {
            let d = decide(&r, s.as_deref(), &p, &h);
            let (p2, h2, s2) = apply(&d, &p, &h, s.as_deref());
            let (pv, hv) = (p2.value.as_deref(), h2.value.as_deref());
            match r.direction {
                Direction::Both if !r.unless_blank => {
                    prop_assert!(same(pv, hv), "{:?} {:?}", p2, h2);
                    prop_assert!(same(pv, s2.as_deref()));
                }
                Direction::ToHubspot | Direction::ToPartner => {
                    let (src, tgt) = if r.direction == Direction::ToHubspot { (&p, hv) } else { (&h, pv) };
                    let sv = src.value.as_deref();
                    if changed(s.as_deref(), sv) && !(r.unless_blank && is_blank(sv)) {
                        prop_assert!(same(tgt, sv));
                    }
                }
                _ => {}
            }
        }

        #[test]
        fn prop_echo_is_silent(
            r in rule_s(),
            s in prop::sample::select(vec!["", "a", "b"]),
            pick in (any::<bool>(), any::<bool>()),
            stamps in (prop::option::of(0i64..3), prop::option::of(0i64..3)),
        ) {
            // A blank shadow may come back as either spelling of blank.
            let echo = |none: bool| if s.is_empty() && none { None } else { Some(s) };
            let d = decide(&r, Some(s), &obs(echo(pick.0), stamps.0), &obs(echo(pick.1), stamps.1));
            prop_assert!(d.is_noop(), "{:?}", d);
        }

        #[test]
        fn prop_conflict_iff_both_changed_differently(
            r in rule_s(), s in shadow_s(), p in observed_s(), h in observed_s(),
        ) {
            let d = decide(&r, s.as_deref(), &p, &h);
            prop_assert_eq!(d.conflict.is_some(), expect_conflict(&r, s.as_deref(), &p, &h));
        }

        #[test]
        fn prop_direction_none_never_writes(
            c in prop::sample::select(POLICIES.to_vec()), u in any::<bool>(),
            s in shadow_s(), p in observed_s(), h in observed_s(),
        ) {
            let d = decide(&rule(Direction::None, c, u), s.as_deref(), &p, &h);
            prop_assert!(d.is_noop());
        }

        #[test]
        fn prop_histories_settle_after_every_sync(
            r in rule_s(), steps in prop::collection::vec(step_s(), 1..24),
        ) {
            let (mut p, mut h, mut s) = (Observed::default(), Observed::default(), None::<String>);
            for (clock, step) in (1i64..).zip(steps) {
                match step {
                    Step::EditPartner(v) => p = Observed { value: v, changed_at: Some(clock) },
                    Step::EditHubspot(v) => h = Observed { value: v, changed_at: Some(clock) },
                    Step::Sync => {
                        let d = check(&r, s.as_deref(), &p, &h);
                        (p, h, s) = apply(&d, &p, &h, s.as_deref());
                        prop_assert!(decide(&r, s.as_deref(), &p, &h).is_noop());
                        if r.direction == Direction::Both && !r.unless_blank {
                            prop_assert!(same(p.value.as_deref(), h.value.as_deref()));
                        }
                    }
                }
            }
        }
    }
}
