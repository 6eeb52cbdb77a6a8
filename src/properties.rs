//! Every HubSpot property dealsync defines, by name and definition: the one source for the
//! names the engine, the pollers, the webhook filter, setup, the demo and the tests use. A
//! `"dealsync_…"` literal anywhere else in `src/` fails `tests/layering.rs` (metric names in
//! `metrics` and the project's component uids in `project` are not properties).
//!
//! All of them live in one property group ([`GROUP`]) per object type; `setup` creates what a
//! portal lacks from [`definitions`].

use serde_json::{json, Value};

/// The property group dealsync's properties live in.
pub const GROUP: &str = "dealsync";

/// HubSpot's products a partner can register interest in (value, label).
pub const PRODUCTS: &[(&str, &str)] = &[
    ("marketing_hub", "Marketing Hub"),
    ("sales_hub", "Sales Hub"),
    ("service_hub", "Service Hub"),
    ("content_hub", "Content Hub"),
    ("operations_hub", "Operations Hub"),
    ("commerce_hub", "Commerce Hub"),
];

// --- Deals: the registration's fields, synced by the field rules (`config::default_fields`).

/// Products the lead is interested in (multi-select of [`PRODUCTS`]), both ways.
pub const PRODUCT_INTEREST: &str = "dealsync_product_interest";
/// The three qualifying texts of a registration, partner → HubSpot.
pub const INTRO_NOTE: &str = "dealsync_intro_note";
pub const SPECIFIC_PAIN: &str = "dealsync_specific_pain";
pub const NEXT_STEPS: &str = "dealsync_next_steps";
/// Whether the partner earns compensation, HubSpot → partner (read-only there).
pub const COMPENSATION_ELIGIBLE: &str = "dealsync_compensation_eligible";

// --- Deals: lifecycle (`lifecycle`).

/// On the HubSpot deal: the partners a rep excluded (names, `;`-separated).
pub const EXCLUDED_PARTNERS: &str = "dealsync_excluded_partners";
/// On the partner deal: the shared deal's status banner (`active`, `excluded`, …).
pub const DEAL_STATUS: &str = "dealsync_status";
/// On the partner deal: 1 while the link is active, else 0, so partners can filter.
pub const ACTIVE_REGISTRATIONS: &str = "dealsync_active_registrations";

// --- Deals: registration (`register`) and invitations (`invite`).

/// On the partner deal: a partner ticks it to register the deal with HubSpot.
pub const REGISTER: &str = "dealsync_register";
/// On the HubSpot deal: the partner deal it was registered from (`partner:id`). Unique, so the
/// HubSpot deal is created by upsert on it and a retry finds the first one.
pub const REGISTRATION: &str = "dealsync_registration";
/// On the HubSpot deal: the partner a rep adds, its owner there, and the welcome note.
pub const ADD_PARTNER: &str = "dealsync_add_partner";
pub const PARTNER_OWNER: &str = "dealsync_partner_owner";
pub const WELCOME_NOTE: &str = "dealsync_welcome_note";
/// On the HubSpot deal: "I have reached out to this partner to confirm availability".
pub const AVAILABILITY_CONFIRMED: &str = "dealsync_availability_confirmed";

// --- Deals: quotes (`quotes`) and the deal team (`team`).

/// On the partner deal: a summary of the HubSpot deal's quotes (read-only).
pub const QUOTES: &str = "dealsync_quotes";
/// On the partner deal: the text of a quote request to the HubSpot rep.
pub const QUOTE_REQUEST: &str = "dealsync_quote_request";
/// On the partner deal: HubSpot's deal team; on the HubSpot deal: a line per partner's team.
pub const HUBSPOT_TEAM: &str = "dealsync_hubspot_team";
pub const PARTNER_TEAM: &str = "dealsync_partner_team";
/// Either side: emails of one's own users to add to the deal team, and the answer.
pub const TEAM_ADD: &str = "dealsync_team_add";
pub const TEAM_STATUS: &str = "dealsync_team_status";

// --- Companies and tasks.

/// On a HubSpot company: the partner the lead is assigned to (decides the deal type).
pub const COMPANY_PARTNER: &str = "dealsync_partner";
/// On a task dealsync creates (a quote request's): the request it answers. Unique, so the task
/// is created by upsert and never twice.
pub const REQUEST_KEY: &str = "dealsync_request";

// --- Notes: shared messages (`engine::messages`).

/// The note property that marks a message shared (`shared`); every other value is private.
pub const VISIBILITY: &str = "dealsync_visibility";
/// On a copy made by dealsync, the original it was made from (`portal:id`). Unique, so a copy
/// is written by upsert on this key and a retry after a crash finds it instead of making a
/// second one.
pub const ORIGIN: &str = "dealsync_origin";
/// On a comment, the id of the message (in the same portal) it replies to.
pub const REPLY_TO: &str = "dealsync_reply_to";
/// On a HubSpot-side message of a deal linked to several partners, the partner it is for.
pub const TARGET: &str = "dealsync_target";

/// The name of a temporary property `dealsync probe` creates (and archives at once) to learn
/// whether a portal accepts one of that `kind`.
pub fn probe_name(kind: &str, nonce: &str) -> String {
    format!("dealsync_probe_{kind}_{nonce}")
}

fn text(name: &str, label: &str, field_type: &str) -> Value {
    json!({ "name": name, "label": label, "type": "string", "fieldType": field_type, "groupName": GROUP })
}

fn checkbox(name: &str, label: &str) -> Value {
    json!({
        "name": name, "label": label, "type": "enumeration", "fieldType": "booleancheckbox",
        "groupName": GROUP,
        "options": [{"label": "Yes", "value": "true", "hidden": false}, {"label": "No", "value": "false", "hidden": false}],
    })
}

fn unique(mut definition: Value) -> Value {
    definition["hasUniqueValue"] = json!(true);
    definition
}

/// Deal properties dealsync uses on both sides.
pub fn deal_properties() -> Vec<Value> {
    let area = |name: &str, label: &str| text(name, label, "textarea");
    vec![
        json!({
            "name": PRODUCT_INTEREST, "label": "Product interest", "type": "enumeration",
            "fieldType": "checkbox", "groupName": GROUP,
            "options": PRODUCTS.iter().enumerate().map(|(i, (v, l))| json!({"label": l, "value": v, "hidden": false, "displayOrder": i})).collect::<Vec<_>>(),
        }),
        area(INTRO_NOTE, "Intro note"),
        area(SPECIFIC_PAIN, "Specific pain / opportunity"),
        area(NEXT_STEPS, "Next steps"),
        area(
            EXCLUDED_PARTNERS,
            "Partners excluded from this deal (names, separated by ;)",
        ),
        area(DEAL_STATUS, "Shared deal status"),
        area(QUOTES, "HubSpot quotes (title | amount | status | link)"),
        area(QUOTE_REQUEST, "Request a quote from the HubSpot rep"),
        area(ADD_PARTNER, "Add partner (its name in dealsync)"),
        area(PARTNER_OWNER, "Partner user who will own the deal (email)"),
        area(WELCOME_NOTE, "Welcome note for the partner"),
        area(HUBSPOT_TEAM, "HubSpot's deal team (read-only)"),
        area(
            PARTNER_TEAM,
            "Partners' deal teams (read-only, a line per partner)",
        ),
        area(TEAM_ADD, "Add to the deal team (emails of your own users)"),
        area(TEAM_STATUS, "Deal team request result"),
        checkbox(
            AVAILABILITY_CONFIRMED,
            "I have reached out to this partner to confirm availability",
        ),
        checkbox(REGISTER, "Register this deal with HubSpot"),
        unique(text(REGISTRATION, "Registered from partner deal", "text")),
        json!({
            "name": ACTIVE_REGISTRATIONS, "label": "Number of active deal registrations",
            "type": "number", "fieldType": "number", "groupName": GROUP,
        }),
        checkbox(COMPENSATION_ELIGIBLE, "Partner compensation eligible"),
    ]
}

/// Note properties dealsync uses on both sides (shared messages).
pub fn note_properties() -> Vec<Value> {
    vec![
        json!({
            "name": VISIBILITY, "label": "Visibility", "type": "enumeration", "fieldType": "select",
            "groupName": GROUP,
            "options": [
                {"label": "Private (stays in this portal)", "value": "private", "hidden": false, "displayOrder": 0},
                {"label": "Shared with the other side of the deal", "value": "shared", "hidden": false, "displayOrder": 1},
            ],
        }),
        unique(text(ORIGIN, "Copied by dealsync from", "text")),
        text(REPLY_TO, "Reply to message", "text"),
        text(TARGET, "Shared with partner", "text"),
    ]
}

/// Every definition by object type: (object, label for people, properties).
pub fn definitions() -> Vec<(&'static str, &'static str, Vec<Value>)> {
    vec![
        ("deals", "deal", deal_properties()),
        ("notes", "note", note_properties()),
        (
            "companies",
            "company",
            vec![text(COMPANY_PARTNER, "Assigned to partner", "text")],
        ),
        (
            "tasks",
            "task",
            vec![unique(text(REQUEST_KEY, "dealsync request", "text"))],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_definition_is_in_the_group_with_a_unique_dealsync_name() {
        let mut names = std::collections::HashSet::new();
        for (_, _, props) in definitions() {
            for p in props {
                let name = p["name"].as_str().expect("a name");
                assert!(name.starts_with("dealsync_"), "{name}");
                assert!(names.insert(name.to_owned()), "{name} defined twice");
                assert_eq!(p["groupName"], GROUP, "{name}");
            }
        }
        // The keys copies, registrations and tasks are upserted on must be unique.
        for key in [ORIGIN, REGISTRATION, REQUEST_KEY] {
            let def = definitions()
                .into_iter()
                .flat_map(|(_, _, p)| p)
                .find(|p| p["name"] == key)
                .expect("defined");
            assert_eq!(def["hasUniqueValue"], true, "{key}");
        }
    }
}
