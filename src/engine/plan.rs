//! Per-link decisions: from both sides' records and the shadows to the writes each side needs,
//! the new shadows and the conflicts to record. No I/O: the worker reads and writes around it.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::crm::Record;
use crate::rules::{self, Observed, Rule, ShadowUpdate};
use crate::store::{ConflictRecord, Link, Side};

/// How a field's values are compared and carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    /// `;`-separated multi-select: order and duplicates do not matter.
    MultiSelect,
    /// A deal stage: partner values go through the partner's stage map.
    Stage,
}

/// One synced field.
#[derive(Debug, Clone)]
pub struct FieldSpec {
    pub name: String,
    pub partner_property: String,
    pub hubspot_property: String,
    pub kind: FieldKind,
    pub rule: Rule,
}

impl FieldSpec {
    /// A field synced both ways with the latest change winning: the common case.
    pub fn both_ways(
        name: &str,
        partner_property: &str,
        hubspot_property: &str,
        kind: FieldKind,
    ) -> FieldSpec {
        FieldSpec {
            name: name.into(),
            partner_property: partner_property.into(),
            hubspot_property: hubspot_property.into(),
            kind,
            rule: Rule {
                direction: crate::rules::Direction::Both,
                conflict: crate::rules::ConflictPolicy::LatestWins,
                unless_blank: false,
            },
        }
    }
}

/// A partner's stage map, both ways.
#[derive(Debug, Clone, Default)]
pub struct StageMap {
    pub to_hubspot: HashMap<String, String>,
    pub to_partner: HashMap<String, String>,
}

/// Why a link cannot be synced now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    UnmappedStage {
        partner: String,
        stage: String,
        side: &'static str,
        deal: String,
    },
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::UnmappedStage { partner, stage, side, deal } => write!(
                f,
                "deal {deal} in {side}: stage `{stage}` has no mapping for partner {partner}; add it to the partner's stage_map and run `dealsync replay --class unmapped_stage`"
            ),
        }
    }
}

/// What one link needs.
#[derive(Debug, Default, Clone)]
pub struct LinkPlan {
    pub partner_writes: Map<String, Value>,
    pub hubspot_writes: Map<String, Value>,
    pub shadows: Vec<(String, Option<String>)>,
    pub conflicts: Vec<ConflictRecord>,
}

impl LinkPlan {
    /// Whether anything must happen (a write or a shadow to record).
    pub fn is_empty(&self) -> bool {
        self.partner_writes.is_empty() && self.hubspot_writes.is_empty() && self.shadows.is_empty()
    }
}

fn observed(r: &Record, prop: &str, kind: FieldKind) -> Observed {
    let value = r.get(prop).map(|v| match kind {
        FieldKind::MultiSelect => rules::normalize_multi(v),
        _ => v.to_owned(),
    });
    Observed {
        value,
        changed_at: r.changed_at.get(prop).copied(),
    }
}

/// Decides every field of one link. `shadows` maps field name to the stored value (`None`
/// inside means the agreed value is blank; a missing field was never synced).
pub fn plan_link(
    link: &Link,
    fields: &[FieldSpec],
    stages: &StageMap,
    shadows: &HashMap<String, Option<String>>,
    partner: &Record,
    hubspot: &Record,
) -> Result<LinkPlan, PlanError> {
    let mut plan = LinkPlan::default();
    for f in fields {
        let mut p = observed(partner, &f.partner_property, f.kind);
        let h = observed(hubspot, &f.hubspot_property, f.kind);
        if f.kind == FieldKind::Stage {
            // Compare in HubSpot's stage space.
            if let Some(v) = p.value.take() {
                let mapped = stages
                    .to_hubspot
                    .get(&v)
                    .ok_or_else(|| PlanError::UnmappedStage {
                        partner: link.partner.clone(),
                        stage: v.clone(),
                        side: "the partner portal",
                        deal: link.partner_deal_id.clone(),
                    })?;
                p.value = Some(mapped.clone());
            }
        }
        let shadow: Option<&str> = shadows.get(&f.name).map(|v| v.as_deref().unwrap_or(""));
        let d = rules::decide(&f.rule, shadow, &p, &h);
        if let Some(v) = d.write_partner {
            let v = if f.kind == FieldKind::Stage && !v.is_empty() {
                stages
                    .to_partner
                    .get(&v)
                    .cloned()
                    .ok_or_else(|| PlanError::UnmappedStage {
                        partner: link.partner.clone(),
                        stage: v.clone(),
                        side: "HubSpot's portal",
                        deal: link.hubspot_deal_id.clone(),
                    })?
            } else {
                v
            };
            plan.partner_writes
                .insert(f.partner_property.clone(), Value::String(v));
        }
        if let Some(v) = d.write_hubspot {
            plan.hubspot_writes
                .insert(f.hubspot_property.clone(), Value::String(v));
        }
        if let ShadowUpdate::Set(v) = d.shadow {
            let v = v.filter(|s| !s.is_empty());
            if shadows.get(&f.name) != Some(&v) {
                plan.shadows.push((f.name.clone(), v));
            }
        }
        if let Some(c) = d.conflict {
            plan.conflicts.push(ConflictRecord {
                link_id: link.id,
                field: f.name.clone(),
                partner_value: c.partner_value,
                hubspot_value: c.hubspot_value,
                winner: format!("{:?}", c.winner).to_lowercase(),
                // The config's own spelling (latest_wins, …), which status shows.
                policy: serde_json::to_value(c.policy)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            });
        }
    }
    Ok(plan)
}

/// Whether a value one side now holds for `field` is the value already agreed in the shadow —
/// our own write coming back, or a change already synced — so that it needs no job. A field
/// never synced (no shadow) is never an echo. Values compare as [`plan_link`] compares them:
/// multi-selects normalised, partner stages mapped into HubSpot's stage space.
pub fn is_echo(
    field: &FieldSpec,
    stages: &StageMap,
    side: Side,
    value: Option<&str>,
    shadow: Option<&Option<String>>,
) -> bool {
    let Some(shadow) = shadow else {
        return false;
    };
    let value = value.unwrap_or("");
    let value = match field.kind {
        FieldKind::MultiSelect => rules::normalize_multi(value),
        FieldKind::Stage if side == Side::Partner && !value.is_empty() => {
            match stages.to_hubspot.get(value) {
                Some(v) => v.clone(),
                None => return false,
            }
        }
        _ => value.to_owned(),
    };
    value == shadow.as_deref().unwrap_or("")
}
