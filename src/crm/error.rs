//! Errors from HubSpot calls, classified once: transient (retry later) or permanent (dead
//! letter). Messages carry the portal, the call and HubSpot's own message, never a token.

use std::time::Duration;

use serde::Serialize;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    Transient,
    Permanent,
    /// Waiting for an operator, not failing: the portal's OAuth install is missing or was
    /// revoked. Work is kept and retried slowly, never dead-lettered.
    Held,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CrmError {
    /// HubSpot answered with an error status.
    #[error("{portal}: {call} answered {status} {category}: {message}")]
    Http {
        portal: String,
        call: String,
        status: u16,
        category: String,
        message: String,
        /// How long HubSpot asks us to wait (429), when known.
        retry_after: Option<Duration>,
    },
    #[error("{portal}: {call} timed out")]
    Timeout { portal: String, call: String },
    #[error("{portal}: {call} could not connect: {detail}")]
    Connect {
        portal: String,
        call: String,
        detail: String,
    },
    #[error("{portal}: {call} returned a body dealsync cannot read: {detail}")]
    Decode {
        portal: String,
        call: String,
        detail: String,
    },
    /// The portal's OAuth install is missing or revoked (the detail says what to do).
    #[error("{detail}")]
    AuthRevoked { portal: String, detail: String },
}

impl CrmError {
    pub fn class(&self) -> ErrorClass {
        match self {
            CrmError::Http { status, .. } if *status == 429 || *status >= 500 => {
                ErrorClass::Transient
            }
            // 408 (request timeout) and 423 (locked) are HubSpot's way of saying "later".
            CrmError::Http {
                status: 408 | 423, ..
            } => ErrorClass::Transient,
            CrmError::Http { .. } => ErrorClass::Permanent,
            CrmError::Timeout { .. } | CrmError::Connect { .. } => ErrorClass::Transient,
            // A garbled body is usually a proxy's error page: worth another try.
            CrmError::Decode { .. } => ErrorClass::Transient,
            CrmError::AuthRevoked { .. } => ErrorClass::Held,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            CrmError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The dead-letter class of a permanent failure: `portal_validation` when the portal's own
    /// write-validation rules refused the write (see [`PortalRule`]), otherwise `permanent`.
    pub fn fine_class(&self) -> &'static str {
        if self.portal_rule().is_some() {
            "portal_validation"
        } else {
            "permanent"
        }
    }

    /// The portal rule that refused this write, if one did.
    ///
    /// HubSpot (2026-09, changelog "CRM API write validation enforcement") answers a broken
    /// portal rule with a 400 `VALIDATION_ERROR` whose `message` is the frame `Property values
    /// were not valid: [{"isValid":false,"message":…,"error":<code>,"name":<property>}]`, the
    /// same frame as an ordinary invalid value (an unknown property, a bad option). The two are
    /// told apart by the detail: a `ruleType` beside it (the sandbox sends one; HubSpot's body
    /// is unconfirmed) or an error code only a portal rule gives ([`PORTAL_RULE_CODES`]:
    /// `INVALID_ALPHA` is HubSpot's own, from its 2023 announcement of property-validation
    /// enforcement; the rest are the sandbox's). A portal rule HubSpot reports in another shape
    /// stays `permanent`: still dead-lettered, with HubSpot's message, only less specific.
    pub fn portal_rule(&self) -> Option<PortalRule> {
        let CrmError::Http {
            status: 400,
            category,
            message,
            ..
        } = self
        else {
            return None;
        };
        if category != "VALIDATION_ERROR" {
            return None;
        }
        let details = message.split_once("Property values were not valid: ")?.1;
        let details: Vec<serde_json::Value> = serde_json::from_str(details.trim()).ok()?;
        details.iter().find_map(|d| {
            let text = |k: &str| d.get(k).and_then(serde_json::Value::as_str);
            let code = text("error").unwrap_or_default();
            let rule =
                text("ruleType").or_else(|| PORTAL_RULE_CODES.contains(&code).then_some(code))?;
            Some(PortalRule {
                property: text("name").unwrap_or("(unnamed)").to_owned(),
                rule: rule.to_owned(),
                message: text("message").unwrap_or_default().to_owned(),
            })
        })
    }

    /// The text an operator reads in a dead letter: for a portal rule, which property, rule,
    /// portal and record, and what to do; otherwise the error itself.
    pub fn report(&self) -> String {
        match (self, self.portal_rule()) {
            // Property and rule first: `dealsync status --deal` shows a dead letter's first 40
            // characters (the deal and the class are on that screen already).
            (CrmError::Http { portal, call, .. }, Some(r)) => format!(
                "{} (rule {}) refused by portal {portal}: {call} ({}); map the property as a \
                 field, set it on that side, or relax the rule in the portal's settings, then \
                 run `dealsync replay --class portal_validation`",
                r.property, r.rule, r.message
            ),
            _ => self.to_string(),
        }
    }

    /// Names the record a per-input batch failure is about (`batch update of deal 123`).
    pub fn on_record(mut self, object: &str, id: &str) -> CrmError {
        if let CrmError::Http { call, .. } = &mut self {
            let kind = match object {
                "deals" | "0-3" => "deal",
                "notes" | "0-46" => "note",
                other => other,
            };
            *call = format!("{call} of {kind} {id}");
        }
        self
    }
}

/// Error codes that only a portal's validation rule produces (see [`CrmError::portal_rule`]).
pub const PORTAL_RULE_CODES: [&str; 9] = [
    "INVALID_ALPHA",
    "INVALID_NUMERIC",
    "INVALID_ALPHANUMERIC",
    "INVALID_MAX_LENGTH",
    "INVALID_MIN_LENGTH",
    "INVALID_MAX_NUMBER",
    "INVALID_MIN_NUMBER",
    "CONDITIONAL_PROPERTY_REQUIRED",
    "CREATE_FORM_PROPERTY_REQUIRED",
];

/// A portal rule that refused a write: the property, the rule, and HubSpot's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalRule {
    pub property: String,
    pub rule: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, category: &str, message: &str) -> CrmError {
        CrmError::Http {
            portal: "hubspot".into(),
            call: "batch update".into(),
            status,
            category: category.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    #[test]
    fn a_portal_rule_is_portal_validation_and_an_unknown_property_is_not() {
        let rule = http(
            400,
            "VALIDATION_ERROR",
            r#"Property values were not valid: [{"isValid":false,"message":"closedate is required when dealstage is closedwon","error":"CONDITIONAL_PROPERTY_REQUIRED","name":"closedate","ruleType":"CONDITIONAL_REQUIRED"}]"#,
        )
        .on_record("deals", "42");
        assert_eq!(rule.class(), ErrorClass::Permanent);
        assert_eq!(rule.fine_class(), "portal_validation");
        let text = rule.report();
        for part in [
            "hubspot",
            "deal 42",
            "closedate",
            "CONDITIONAL_REQUIRED",
            "relax the rule",
            "dealsync replay --class portal_validation",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
        // HubSpot's 2023 example, without a ruleType: its code alone says "portal rule".
        let alpha = http(
            400,
            "VALIDATION_ERROR",
            r#"Property values were not valid: [{"isValid":false,"message":"Enter only letters","error":"INVALID_ALPHA","name":"firstname"}]"#,
        );
        assert_eq!(alpha.fine_class(), "portal_validation");
        let unknown = http(
            400,
            "VALIDATION_ERROR",
            r#"Property values were not valid: [{"isValid":false,"message":"Property "foo" does not exist","error":"PROPERTY_DOESNT_EXIST","name":"foo"}]"#,
        );
        assert_eq!(unknown.fine_class(), "permanent");
        assert_eq!(unknown.report(), unknown.to_string());
        assert_eq!(
            http(400, "VALIDATION_ERROR", "garbled").fine_class(),
            "permanent"
        );
        // Not a 400, not a validation error: never a portal rule.
        let conflict = http(
            409,
            "CONFLICT",
            r#"Property values were not valid: [{"error":"INVALID_ALPHA","name":"x"}]"#,
        );
        assert_eq!(conflict.fine_class(), "permanent");
    }
}
