//! A portal's own write-validation rules, and their enforcement on 2026-09 writes.
//!
//! Since the 2026-09 API version HubSpot enforces "admin-configured validation rules on all CRM
//! API write paths": conditionally required properties (its example: the close date becomes
//! required once `dealstage` is `closedwon`), required fields on the Create Record form, and
//! user-level association permissions; a violation is a 400 `VALIDATION_ERROR` (developer
//! changelog "Breaking Change: CRM API Write Validation Enforcement Starting with the 2026-09
//! API Version", developers.hubspot.com/changelog/crm-api-write-validation-enforcement).
//!
//! Two kinds of rule live here:
//! - **Property validation rules** (`MAX_LENGTH`, `MIN_NUMBER`, …), set and read through
//!   HubSpot's own `/crm/property-validations/2026-09/{objectTypeId}/{propertyName}/rule-type/
//!   {ruleType}` (PUT, GET), `…/{objectTypeId}/{propertyName}` and `…/{objectTypeId}` (GET), with
//!   the shapes of `hubspot-openapi/2026-09/crm-property-validations.json`. The spec's rule
//!   types have no "required" and no condition; the sandbox enforces the ones in
//!   [`ENFORCED_RULE_TYPES`] and refuses to store the others (a rule it accepted but ignored would
//!   let a test pass against a rule that does nothing).
//! - **Required properties**, plain (the create form) or conditional. HubSpot configures these
//!   in its UI and publishes no API for them, so the sandbox takes them through a test control,
//!   `PUT /_sandbox/portals/{portal}/required-properties/{objectType}` (docs/sandbox.md).
//!
//! Where enforced: only on `/crm/objects/2026-09/…` writes. HubSpot says the enforcement starts
//! "with the /2026-09/ API version"; 2026-03 and the legacy v3 paths keep the old behaviour (the
//! rules were UI-only), which is also what a client still on those versions sees today.
//!
//! The error body. Confirmed: status 400, `category: "VALIDATION_ERROR"`, a `message` (the 2026-09
//! changelog's example elides the rest: `{ "category": "VALIDATION_ERROR", "message": "...", "e…`).
//! HubSpot's earlier announcement of property-validation enforcement (changelog "Upcoming:
//! Property Validations Rules will be enforced for APIs and Integrations", 2023) shows the frame
//! the sandbox copies: `message: "Property values were not valid: [{\"isValid\":false,\"message\":
//! \"Enter only letters\",\"error\":\"INVALID_ALPHA\",\"name\":\"firstname\"}]"`. Unconfirmed, and
//! the sandbox's own choice: every error code but `INVALID_ALPHA` (by analogy, `INVALID_<RULE>`;
//! `CONDITIONAL_PROPERTY_REQUIRED` and `CREATE_FORM_PROPERTY_REQUIRED` for the required kinds),
//! and the `ruleType` beside each detail and in each `errors[].context` — added so a client can
//! tell a portal's rule from an ordinary invalid value (`crm::CrmError::fine_class` reads both).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};
use super::gate::Ctx;
use super::model::{Object, ObjectType};
use super::objects::reply;
use super::params::{object_type, Json};
use super::{Portal, Shared};

/// The API version whose writes enforce a portal's rules.
pub const ENFORCED_FROM: &str = "2026-09";

/// Every `ruleType` the 2026-09 spec lists.
pub const SPEC_RULE_TYPES: [&str; 27] = [
    "AFTER_DATETIME_DURATION",
    "AFTER_DURATION",
    "ALPHANUMERIC",
    "BEFORE_DATETIME_DURATION",
    "BEFORE_DURATION",
    "DAYS_OF_WEEK",
    "DECIMAL",
    "DOMAIN",
    "EMAIL",
    "EMAIL_ALLOWED_DOMAINS",
    "EMAIL_BLOCKED_DOMAINS",
    "END_DATE",
    "END_DATETIME",
    "FORMAT",
    "MAX_LENGTH",
    "MAX_NUMBER",
    "MIN_LENGTH",
    "MIN_NUMBER",
    "PHONE_NUMBER_WITH_EXPLICIT_COUNTRY_CODE",
    "REGEX",
    "SPECIAL_CHARACTERS",
    "START_DATE",
    "START_DATETIME",
    "URL",
    "URL_ALLOWED_DOMAINS",
    "URL_BLOCKED_DOMAINS",
    "WHITESPACE",
];

/// The rule types the sandbox enforces (the others are refused on PUT, naming these).
pub const ENFORCED_RULE_TYPES: [&str; 5] = [
    "MAX_LENGTH",
    "MIN_LENGTH",
    "MAX_NUMBER",
    "MIN_NUMBER",
    "ALPHANUMERIC",
];

/// `ALPHANUMERIC` arguments. `NUMERIC_ONLY` is HubSpot's (its product update on creating
/// property validations by API); the other two are the sandbox's names (unconfirmed).
const ALPHANUMERIC_ARGS: [&str; 3] = ["NUMERIC_ONLY", "ALPHA_ONLY", "ALPHANUMERIC_ONLY"];

/// `ruleType` of the required kinds, in error bodies (sandbox names; HubSpot's are unknown).
pub const CONDITIONAL_REQUIRED: &str = "CONDITIONAL_REQUIRED";
pub const CREATE_FORM_REQUIRED: &str = "CREATE_FORM_REQUIRED";

/// One property validation rule (`PublicPropertyValidationRule`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueRule {
    pub rule_type: String,
    pub rule_arguments: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub should_apply_normalization: Option<bool>,
}

/// The body of a PUT (`PublicPropertyValidationRuleUpdate`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleUpdate {
    rule_arguments: Vec<String>,
    should_apply_normalization: Option<bool>,
}

/// A required property: always on create (the create form) when `when_property` is absent,
/// otherwise on any write after which `when_property` holds one of `when_values`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Required {
    pub property_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_property: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when_values: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredBody {
    required: Vec<Required>,
}

/// One portal's rules. Kept beside its data (not in it): rules are configuration, and state
/// files written before rules existed load unchanged. Not persisted; `/_sandbox/reset` clears.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    values: BTreeMap<ObjectType, BTreeMap<String, BTreeMap<String, ValueRule>>>,
    required: BTreeMap<ObjectType, Vec<Required>>,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub property: String,
    pub rule_type: String,
    pub code: String,
    pub message: String,
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.values.values().all(BTreeMap::is_empty) && self.required.values().all(Vec::is_empty)
    }

    pub fn clear(&mut self) {
        *self = Rules::default();
    }

    /// What a write would break. `existing` is the record before an update (`None` on create);
    /// `props` the values written. Value rules judge the values written (a cleared value is not
    /// judged by them). Conditional requirements judge the record as it would be after the write,
    /// but only when the write touches the condition or the required property: a deal that was
    /// closed won before the rule existed can still be renamed (HubSpot's behaviour for such
    /// records is unconfirmed).
    pub fn violations(
        &self,
        t: ObjectType,
        existing: Option<&Object>,
        props: &Map<String, Value>,
    ) -> Vec<Violation> {
        let mut out = Vec::new();
        if let Some(by_prop) = self.values.get(&t) {
            for (name, raw) in props {
                let value = text(raw);
                if value.is_empty() {
                    continue;
                }
                for rule in by_prop.get(name).into_iter().flat_map(BTreeMap::values) {
                    if let Some(v) = judge(name, rule, &value) {
                        out.push(v);
                    }
                }
            }
        }
        let after = |name: &str| -> String {
            match props.get(name) {
                Some(v) => text(v),
                None => existing.and_then(|o| o.get(name)).unwrap_or_default(),
            }
        };
        for r in self.required.get(&t).into_iter().flatten() {
            match &r.when_property {
                None if existing.is_none() && after(&r.property_name).is_empty() => {
                    out.push(Violation {
                        property: r.property_name.clone(),
                        rule_type: CREATE_FORM_REQUIRED.into(),
                        code: "CREATE_FORM_PROPERTY_REQUIRED".into(),
                        message: format!(
                            "{} is required when creating {} (a required field of the portal's create form)",
                            r.property_name,
                            t.name()
                        ),
                    });
                }
                None => {}
                Some(when) => {
                    let touched = props.contains_key(when) || props.contains_key(&r.property_name);
                    let cond = after(when);
                    if touched
                        && r.when_values.contains(&cond)
                        && after(&r.property_name).is_empty()
                    {
                        out.push(Violation {
                            property: r.property_name.clone(),
                            rule_type: CONDITIONAL_REQUIRED.into(),
                            code: "CONDITIONAL_PROPERTY_REQUIRED".into(),
                            message: format!(
                                "{} is required when {when} is {cond} (a conditionally required property of the portal)",
                                r.property_name
                            ),
                        });
                    }
                }
            }
        }
        out
    }

    /// [`Rules::violations`] as HubSpot's 400.
    pub fn check(
        &self,
        t: ObjectType,
        existing: Option<&Object>,
        props: &Map<String, Value>,
    ) -> ApiResult<()> {
        let v = self.violations(t, existing, props);
        if v.is_empty() {
            Ok(())
        } else {
            Err(refusal(&v))
        }
    }
}

/// Checks a write against the rules a handler took for it (`None`: not enforced here).
pub fn check(
    rules: Option<&Rules>,
    t: ObjectType,
    existing: Option<&Object>,
    props: &Map<String, Value>,
) -> ApiResult<()> {
    rules.map_or(Ok(()), |r| r.check(t, existing, props))
}

/// The portal's rules for a write to `path`, when that path's version enforces them. A copy,
/// so the check runs under the data lock without taking a second one.
pub fn for_write(portal: &Portal, path: &str) -> Option<Rules> {
    if !path.split('/').any(|seg| seg == ENFORCED_FROM) {
        return None;
    }
    let rules = portal.validations.lock();
    (!rules.is_empty()).then(|| rules.clone())
}

/// A property value as the string HubSpot stores (numbers and booleans written bare).
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn judge(name: &str, rule: &ValueRule, value: &str) -> Option<Violation> {
    let arg = rule
        .rule_arguments
        .first()
        .map(String::as_str)
        .unwrap_or("");
    let broken = |code: &str, message: String| {
        Some(Violation {
            property: name.to_owned(),
            rule_type: rule.rule_type.clone(),
            code: code.to_owned(),
            message,
        })
    };
    match rule.rule_type.as_str() {
        "MAX_LENGTH" => {
            let max: usize = arg.parse().ok()?;
            (value.chars().count() > max).then_some(())?;
            broken(
                "INVALID_MAX_LENGTH",
                format!("{name} must be at most {max} characters"),
            )
        }
        "MIN_LENGTH" => {
            let min: usize = arg.parse().ok()?;
            (value.chars().count() < min).then_some(())?;
            broken(
                "INVALID_MIN_LENGTH",
                format!("{name} must be at least {min} characters"),
            )
        }
        "MAX_NUMBER" | "MIN_NUMBER" => {
            let bound: f64 = arg.parse().ok()?;
            let n: f64 = value.trim().parse().ok()?;
            let max = rule.rule_type == "MAX_NUMBER";
            ((max && n > bound) || (!max && n < bound)).then_some(())?;
            broken(
                if max {
                    "INVALID_MAX_NUMBER"
                } else {
                    "INVALID_MIN_NUMBER"
                },
                format!(
                    "{name} must be {} {arg}",
                    if max { "at most" } else { "at least" }
                ),
            )
        }
        "ALPHANUMERIC" => {
            let (ok, code, what): (fn(char) -> bool, _, _) = match arg {
                "NUMERIC_ONLY" => (|c| c.is_ascii_digit(), "INVALID_NUMERIC", "numbers"),
                "ALPHA_ONLY" => (char::is_alphabetic, "INVALID_ALPHA", "letters"),
                _ => (
                    char::is_alphanumeric,
                    "INVALID_ALPHANUMERIC",
                    "letters and numbers",
                ),
            };
            (!value.chars().all(ok)).then_some(())?;
            broken(code, format!("Enter only {what}"))
        }
        _ => None,
    }
}

/// HubSpot's "Property values were not valid" frame, each detail naming its rule.
pub fn refusal(violations: &[Violation]) -> ApiError {
    let details: Vec<Value> = violations
        .iter()
        .map(|v| {
            json!({
                "isValid": false,
                "message": v.message,
                "error": v.code,
                "name": v.property,
                "ruleType": v.rule_type,
                "localizedErrorMessage": v.message,
            })
        })
        .collect();
    let message = format!(
        "Property values were not valid: {}",
        serde_json::to_string(&details).unwrap_or_default()
    );
    let errors = violations
        .iter()
        .map(|v| {
            json!({
                "message": v.message,
                "code": v.code,
                "context": { "propertyName": [v.property], "ruleType": [v.rule_type] },
            })
        })
        .collect();
    ApiError::validation(message).with_errors(errors)
}

/// HubSpot's property-validation paths, inside the gate (auth, counters, limits). The spec's
/// operation ids name the v3 path beside the 2026-09 one; both are served.
pub fn routes(mut api: Router<Arc<Shared>>) -> Router<Arc<Shared>> {
    for p in [
        "/crm/v3/property-validations".to_owned(),
        format!("/crm/property-validations/{ENFORCED_FROM}"),
    ] {
        api = api
            .route(&format!("{p}/{{object_type}}"), get(list_object))
            .route(&format!("{p}/{{object_type}}/{{name}}"), get(list_property))
            .route(
                &format!("{p}/{{object_type}}/{{name}}/rule-type/{{rule_type}}"),
                get(read_rule).put(put_rule),
            );
    }
    api
}

/// The test control for required properties (outside the gate, like every `/_sandbox/` path).
pub fn control_router() -> Router<Arc<Shared>> {
    Router::new().route(
        "/_sandbox/portals/{portal}/required-properties/{object_type}",
        get(get_required).put(put_required).delete(clear_required),
    )
}

async fn list_object(Extension(ctx): Extension<Ctx>, Path(t): Path<String>) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let rules = ctx.portal.validations.lock();
    let results: Vec<Value> = rules
        .values
        .get(&t)
        .into_iter()
        .flatten()
        .filter(|(_, r)| !r.is_empty())
        .map(|(name, r)| {
            json!({
                "propertyName": name,
                "propertyValidationRules": r.values().collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(reply(StatusCode::OK, json!({ "results": results })))
}

async fn list_property(
    Extension(ctx): Extension<Ctx>,
    Path((t, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    known_property(&ctx.portal, t, &name)?;
    let rules = ctx.portal.validations.lock();
    let results: Vec<&ValueRule> = rules
        .values
        .get(&t)
        .and_then(|m| m.get(&name))
        .into_iter()
        .flat_map(BTreeMap::values)
        .collect();
    Ok(reply(StatusCode::OK, json!({ "results": results })))
}

async fn read_rule(
    Extension(ctx): Extension<Ctx>,
    Path((t, name, rule_type)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let rule_type = spec_rule_type(&rule_type)?;
    let rules = ctx.portal.validations.lock();
    let rule = rules
        .values
        .get(&t)
        .and_then(|m| m.get(&name))
        .and_then(|m| m.get(rule_type))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "No {rule_type} validation rule exists for property {name} of {}",
                t.name()
            ))
        })?;
    Ok(reply(StatusCode::OK, json!(rule)))
}

/// Creates or replaces one rule type of a property, leaving its other rules alone.
async fn put_rule(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((t, name, rule_type)): Path<(String, String, String)>,
    Json(body): Json<RuleUpdate>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let rule_type = spec_rule_type(&rule_type)?;
    known_property(&ctx.portal, t, &name)?;
    check_arguments(rule_type, &body.rule_arguments)?;
    ctx.portal
        .validations
        .lock()
        .values
        .entry(t)
        .or_default()
        .entry(name)
        .or_default()
        .insert(
            rule_type.to_owned(),
            ValueRule {
                rule_type: rule_type.to_owned(),
                rule_arguments: body.rule_arguments,
                should_apply_normalization: body.should_apply_normalization,
            },
        );
    shared.touched();
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn spec_rule_type(s: &str) -> ApiResult<&'static str> {
    let Some(known) = SPEC_RULE_TYPES.iter().find(|r| **r == s) else {
        return Err(ApiError::validation(format!(
            "{s} is not a ruleType; use one of {}",
            SPEC_RULE_TYPES.join(", ")
        )));
    };
    Ok(known)
}

fn known_property(portal: &Portal, t: ObjectType, name: &str) -> ApiResult<()> {
    if portal.data.lock().property(t, name).is_none() {
        return Err(ApiError::not_found(format!(
            "Property {name} does not exist on {}",
            t.name()
        )));
    }
    Ok(())
}

fn check_arguments(rule_type: &str, args: &[String]) -> ApiResult<()> {
    let one = || -> ApiResult<&str> {
        match args {
            [a] => Ok(a.as_str()),
            _ => Err(ApiError::validation(format!(
                "{rule_type} takes exactly one rule argument, got {}",
                args.len()
            ))),
        }
    };
    match rule_type {
        "MAX_LENGTH" | "MIN_LENGTH" => {
            let a = one()?;
            a.parse::<usize>().map(drop).map_err(|_| {
                ApiError::validation(format!(
                    "{rule_type} needs a whole number of characters, got {a}"
                ))
            })
        }
        "MAX_NUMBER" | "MIN_NUMBER" => {
            let a = one()?;
            match a.parse::<f64>() {
                Ok(n) if n.is_finite() => Ok(()),
                _ => Err(ApiError::validation(format!(
                    "{rule_type} needs a number, got {a}"
                ))),
            }
        }
        "ALPHANUMERIC" => {
            let a = one()?;
            if ALPHANUMERIC_ARGS.contains(&a) {
                Ok(())
            } else {
                Err(ApiError::validation(format!(
                    "ALPHANUMERIC takes one of {}, got {a}",
                    ALPHANUMERIC_ARGS.join(", ")
                )))
            }
        }
        other => Err(ApiError::validation(format!(
            "the sandbox does not enforce {other} rules, so it does not store them; it enforces {}",
            ENFORCED_RULE_TYPES.join(", ")
        ))
        .with_sub_category("SANDBOX_UNSUPPORTED_RULE_TYPE")),
    }
}

fn control_portal<'a>(shared: &'a Shared, name: &str) -> ApiResult<&'a Arc<Portal>> {
    shared
        .portal_by_name(name)
        .ok_or_else(|| ApiError::not_found(format!("no sandbox portal named {name}")))
}

async fn get_required(
    State(shared): State<Arc<Shared>>,
    Path((portal, t)): Path<(String, String)>,
) -> ApiResult<Response> {
    let p = control_portal(&shared, &portal)?;
    let t = object_type(&t)?;
    let rules = p.validations.lock();
    let required = rules.required.get(&t).cloned().unwrap_or_default();
    Ok(reply(StatusCode::OK, json!({ "required": required })))
}

/// Replaces an object type's required properties.
async fn put_required(
    State(shared): State<Arc<Shared>>,
    Path((portal, t)): Path<(String, String)>,
    Json(body): Json<RequiredBody>,
) -> ApiResult<Response> {
    let p = control_portal(&shared, &portal)?;
    let t = object_type(&t)?;
    for r in &body.required {
        known_property(p, t, &r.property_name)?;
        match &r.when_property {
            Some(w) => {
                known_property(p, t, w)?;
                if r.when_values.is_empty() {
                    return Err(ApiError::validation(format!(
                        "{} is required when {w} has which values? whenValues is empty",
                        r.property_name
                    )));
                }
            }
            None if !r.when_values.is_empty() => {
                return Err(ApiError::validation(format!(
                    "{}: whenValues needs whenProperty",
                    r.property_name
                )))
            }
            None => {}
        }
    }
    p.validations.lock().required.insert(t, body.required);
    shared.touched();
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn clear_required(
    State(shared): State<Arc<Shared>>,
    Path((portal, t)): Path<(String, String)>,
) -> ApiResult<Response> {
    let p = control_portal(&shared, &portal)?;
    let t = object_type(&t)?;
    p.validations.lock().required.remove(&t);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        let mut r = Rules::default();
        r.values.entry(ObjectType::Deals).or_default().insert(
            "dealname".into(),
            BTreeMap::from([(
                "MAX_LENGTH".into(),
                ValueRule {
                    rule_type: "MAX_LENGTH".into(),
                    rule_arguments: vec!["5".into()],
                    should_apply_normalization: None,
                },
            )]),
        );
        r.required.insert(
            ObjectType::Deals,
            vec![
                Required {
                    property_name: "closedate".into(),
                    when_property: Some("dealstage".into()),
                    when_values: vec!["closedwon".into()],
                },
                Required {
                    property_name: "amount".into(),
                    when_property: None,
                    when_values: vec![],
                },
            ],
        );
        r
    }

    fn props(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn deal(props: &[(&str, &str)]) -> Object {
        let mut o = Object {
            id: 1,
            created_ms: 0,
            updated_ms: 0,
            archived_ms: None,
            props: BTreeMap::new(),
        };
        for (k, v) in props {
            o.props.insert(
                (*k).into(),
                vec![super::super::model::Hist {
                    value: (*v).into(),
                    ts: 0,
                    source: super::super::model::Source::Api,
                }],
            );
        }
        o
    }

    #[test]
    fn a_value_rule_judges_the_value_written() {
        let r = rules();
        let old = deal(&[("amount", "1")]);
        let v = r.violations(
            ObjectType::Deals,
            Some(&old),
            &props(json!({"dealname": "too long"})),
        );
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].property.as_str(), v[0].rule_type.as_str()),
            ("dealname", "MAX_LENGTH")
        );
        assert!(r
            .violations(
                ObjectType::Deals,
                Some(&old),
                &props(json!({"dealname": "ok"}))
            )
            .is_empty());
        // Clearing is not judged by a length rule.
        assert!(r
            .violations(
                ObjectType::Deals,
                Some(&old),
                &props(json!({"dealname": ""}))
            )
            .is_empty());
    }

    #[test]
    fn a_conditional_requirement_judges_the_record_after_the_write() {
        let r = rules();
        let old = deal(&[("dealstage", "qualifiedtobuy")]);
        let won = props(json!({"dealstage": "closedwon"}));
        let v = r.violations(ObjectType::Deals, Some(&old), &won);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].rule_type, CONDITIONAL_REQUIRED);
        assert_eq!(v[0].property, "closedate");
        // A close date already on the record, or written with the stage, satisfies it.
        let dated = deal(&[("dealstage", "qualifiedtobuy"), ("closedate", "2026-01-01")]);
        assert!(r
            .violations(ObjectType::Deals, Some(&dated), &won)
            .is_empty());
        let both = props(json!({"dealstage": "closedwon", "closedate": "2026-01-01"}));
        assert!(r
            .violations(ObjectType::Deals, Some(&old), &both)
            .is_empty());
        // Clearing the close date of a won deal breaks it; renaming the deal does not.
        let closed = deal(&[("dealstage", "closedwon"), ("closedate", "2026-01-01")]);
        let cleared = r.violations(
            ObjectType::Deals,
            Some(&closed),
            &props(json!({"closedate": ""})),
        );
        assert_eq!(cleared.len(), 1);
        let undated = deal(&[("dealstage", "closedwon")]);
        assert!(r
            .violations(
                ObjectType::Deals,
                Some(&undated),
                &props(json!({"dealname": "x"}))
            )
            .is_empty());
    }

    #[test]
    fn a_create_form_requirement_applies_to_creates_only() {
        let r = rules();
        let v = r.violations(ObjectType::Deals, None, &props(json!({"dealname": "a"})));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].rule_type, CREATE_FORM_REQUIRED);
        assert!(r
            .violations(
                ObjectType::Deals,
                None,
                &props(json!({"dealname": "a", "amount": "3"}))
            )
            .is_empty());
        assert!(r
            .violations(
                ObjectType::Deals,
                Some(&deal(&[])),
                &props(json!({"dealname": "a"}))
            )
            .is_empty());
    }

    #[test]
    fn the_refusal_names_property_and_rule_in_hubspots_frame() {
        let e = refusal(&[Violation {
            property: "closedate".into(),
            rule_type: CONDITIONAL_REQUIRED.into(),
            code: "CONDITIONAL_PROPERTY_REQUIRED".into(),
            message: "closedate is required".into(),
        }]);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.category, "VALIDATION_ERROR");
        let details: Value = serde_json::from_str(
            e.message
                .strip_prefix("Property values were not valid: ")
                .expect("frame"),
        )
        .expect("details are JSON");
        assert_eq!(details[0]["name"], "closedate");
        assert_eq!(details[0]["ruleType"], CONDITIONAL_REQUIRED);
        assert_eq!(e.errors[0]["context"]["propertyName"][0], "closedate");
    }

    #[test]
    fn number_and_character_rules() {
        let rule = |t: &str, a: &str| ValueRule {
            rule_type: t.into(),
            rule_arguments: vec![a.into()],
            should_apply_normalization: None,
        };
        assert!(judge("amount", &rule("MAX_NUMBER", "10"), "11").is_some());
        assert!(judge("amount", &rule("MAX_NUMBER", "10"), "10").is_none());
        assert!(judge("amount", &rule("MIN_NUMBER", "10"), "9.5").is_some());
        assert!(judge("id", &rule("ALPHANUMERIC", "NUMERIC_ONLY"), "12a").is_some());
        assert!(judge("id", &rule("ALPHANUMERIC", "NUMERIC_ONLY"), "123").is_none());
        assert!(judge("n", &rule("MIN_LENGTH", "3"), "ab").is_some());
        assert!(check_arguments("REGEX", &["x".into()]).is_err());
        assert!(check_arguments("MAX_LENGTH", &["x".into()]).is_err());
        assert!(check_arguments("MAX_LENGTH", &["3".into()]).is_ok());
    }
}
