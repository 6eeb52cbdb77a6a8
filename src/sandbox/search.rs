//! CRM search: filter groups (AND within a group, OR between groups), the 13 operators, one
//! sort, `after` offsets, HubSpot's limits (5 groups, 10 filters per group, 25 in all; page
//! size 200; nothing past 10,000 results) and index lag (results as of an earlier instant).

use std::cmp::Ordering;

use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::model::*;
use super::objects::{render, View};

pub const MAX_GROUPS: usize = 5;
pub const MAX_FILTERS_PER_GROUP: usize = 10;
pub const MAX_FILTERS: usize = 25;
pub const MAX_LIMIT: usize = 200;
pub const MAX_RESULTS: usize = 10_000;
pub const MAX_QUERY_CHARS: usize = 3_000;

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SearchRequest {
    #[serde(default)]
    pub filter_groups: Vec<FilterGroup>,
    #[serde(default)]
    pub sorts: Vec<SortSpec>,
    pub query: Option<String>,
    #[serde(default)]
    pub properties: Vec<String>,
    pub limit: Option<usize>,
    pub after: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct FilterGroup {
    #[serde(default)]
    pub filters: Vec<Filter>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    pub property_name: String,
    pub operator: String,
    pub value: Option<Value>,
    pub values: Option<Vec<Value>>,
    pub high_value: Option<Value>,
}

/// HubSpot accepts sorts as `"prop"` / `"-prop"` strings or `{propertyName, direction}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SortSpec {
    Name(String),
    Full {
        #[serde(rename = "propertyName")]
        property_name: String,
        direction: Option<String>,
    },
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Number,
    Time,
    Text,
}

fn kind(data: &PortalData, t: ObjectType, prop: &str) -> Kind {
    match data.property(t, prop).map(|p| p.ptype.as_str()) {
        Some("number") => Kind::Number,
        Some("date" | "datetime") => Kind::Time,
        _ => Kind::Text,
    }
}

fn compare(k: Kind, a: &str, b: &str) -> Option<Ordering> {
    match k {
        Kind::Number => a
            .trim()
            .parse::<f64>()
            .ok()?
            .partial_cmp(&b.trim().parse::<f64>().ok()?),
        Kind::Time => Some(parse_time_ms(a)?.cmp(&parse_time_ms(b)?)),
        Kind::Text => Some(a.to_lowercase().cmp(&b.to_lowercase())),
    }
}

fn tokens(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| !c.is_alphanumeric() && c != '@' && c != '.' && c != '-' && c != '_')
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
}

fn token_match(value: &str, pattern: &str) -> bool {
    let p = pattern.to_lowercase();
    let (pre, suf) = (p.strip_suffix('*'), p.strip_prefix('*'));
    tokens(value).any(|tok| match (pre, suf) {
        (Some(pre), _) if p.starts_with('*') => tok.contains(pre.trim_start_matches('*')),
        (Some(pre), _) => tok.starts_with(pre),
        (None, Some(suf)) => tok.ends_with(suf),
        (None, None) => tok == p,
    }) || value.to_lowercase() == p
}

struct Compiled {
    prop: String,
    op: String,
    kind: Kind,
    value: Option<String>,
    values: Vec<String>,
    high: Option<String>,
    /// `value` and `high` as ms, for a date filter (parsed once, not per record).
    value_ms: Option<i64>,
    high_ms: Option<i64>,
}

fn compile(data: &PortalData, t: ObjectType, f: &Filter) -> ApiResult<Compiled> {
    const OPS: [&str; 13] = [
        "EQ",
        "NEQ",
        "LT",
        "LTE",
        "GT",
        "GTE",
        "BETWEEN",
        "IN",
        "NOT_IN",
        "HAS_PROPERTY",
        "NOT_HAS_PROPERTY",
        "CONTAINS_TOKEN",
        "NOT_CONTAINS_TOKEN",
    ];
    if !OPS.contains(&f.operator.as_str()) {
        return Err(ApiError::validation(format!(
            "There was a problem with the request. {} is not a valid operator; use one of {}",
            f.operator,
            OPS.join(", ")
        )));
    }
    let needs_value = matches!(
        f.operator.as_str(),
        "EQ" | "NEQ"
            | "LT"
            | "LTE"
            | "GT"
            | "GTE"
            | "BETWEEN"
            | "CONTAINS_TOKEN"
            | "NOT_CONTAINS_TOKEN"
    );
    if needs_value && f.value.is_none() {
        return Err(ApiError::validation(format!(
            "filter on {} with {} needs a value",
            f.property_name, f.operator
        )));
    }
    if f.operator == "BETWEEN" && f.high_value.is_none() {
        return Err(ApiError::validation(format!(
            "BETWEEN on {} needs highValue",
            f.property_name
        )));
    }
    if matches!(f.operator.as_str(), "IN" | "NOT_IN")
        && f.values.as_ref().is_none_or(|v| v.is_empty())
    {
        return Err(ApiError::validation(format!(
            "{} on {} needs values",
            f.operator, f.property_name
        )));
    }
    let kind = kind(data, t, &f.property_name);
    let value = f.value.as_ref().map(text);
    let high = f.high_value.as_ref().map(text);
    let ms = |v: &Option<String>| {
        v.as_deref()
            .filter(|_| kind == Kind::Time)
            .and_then(parse_time_ms)
    };
    Ok(Compiled {
        prop: f.property_name.clone(),
        op: f.operator.clone(),
        kind,
        value_ms: ms(&value),
        high_ms: ms(&high),
        value,
        values: f.values.iter().flatten().map(text).collect(),
        high,
    })
}

/// A date filter on a date HubSpot keeps, compared in ms; `None` for anything else.
fn time_matches(c: &Compiled, obj: &Object, at: i64) -> Option<bool> {
    let (v, x) = (obj.time_at(&c.prop, at)?, c.value_ms?);
    Some(match c.op.as_str() {
        "EQ" => v == x,
        "NEQ" => v != x,
        "LT" => v < x,
        "LTE" => v <= x,
        "GT" => v > x,
        "GTE" => v >= x,
        "BETWEEN" => v >= x && v <= c.high_ms?,
        _ => return None,
    })
}

fn matches(c: &Compiled, obj: &Object, at: i64) -> bool {
    if let Some(m) = time_matches(c, obj, at) {
        return m;
    }
    let v = obj.get_at(&c.prop, at);
    let cmp = |other: &str| v.as_deref().and_then(|v| compare(c.kind, v, other));
    let val = c.value.as_deref().unwrap_or("");
    match c.op.as_str() {
        "EQ" => cmp(val) == Some(Ordering::Equal),
        "NEQ" => cmp(val) != Some(Ordering::Equal),
        "LT" => cmp(val) == Some(Ordering::Less),
        "LTE" => matches!(cmp(val), Some(Ordering::Less | Ordering::Equal)),
        "GT" => cmp(val) == Some(Ordering::Greater),
        "GTE" => matches!(cmp(val), Some(Ordering::Greater | Ordering::Equal)),
        "BETWEEN" => {
            matches!(cmp(val), Some(Ordering::Greater | Ordering::Equal))
                && matches!(
                    cmp(c.high.as_deref().unwrap_or("")),
                    Some(Ordering::Less | Ordering::Equal)
                )
        }
        "IN" => c.values.iter().any(|x| cmp(x) == Some(Ordering::Equal)),
        "NOT_IN" => !c.values.iter().any(|x| cmp(x) == Some(Ordering::Equal)),
        "HAS_PROPERTY" => v.is_some(),
        "NOT_HAS_PROPERTY" => v.is_none(),
        "CONTAINS_TOKEN" => v.is_some_and(|v| token_match(&v, val)),
        "NOT_CONTAINS_TOKEN" => !v.is_some_and(|v| token_match(&v, val)),
        _ => false,
    }
}

/// Runs a search over the portal as it was at `at`.
pub fn run(data: &PortalData, t: ObjectType, req: &SearchRequest, at: i64) -> ApiResult<Value> {
    if req.filter_groups.len() > MAX_GROUPS {
        return Err(limit_error(format!(
            "Too many filter groups: {} (at most {MAX_GROUPS})",
            req.filter_groups.len()
        )));
    }
    let mut total_filters = 0;
    for g in &req.filter_groups {
        if g.filters.len() > MAX_FILTERS_PER_GROUP {
            return Err(limit_error(format!(
                "Too many filters in a group: {} (at most {MAX_FILTERS_PER_GROUP})",
                g.filters.len()
            )));
        }
        total_filters += g.filters.len();
    }
    if total_filters > MAX_FILTERS {
        return Err(limit_error(format!(
            "Too many filters: {total_filters} (at most {MAX_FILTERS} across all groups)"
        )));
    }
    if req.sorts.len() > 1 {
        return Err(ApiError::validation(
            "Only one sort is allowed per search request",
        ));
    }
    let limit = req.limit.unwrap_or(10);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::validation(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    let offset: usize = match &req.after {
        None => 0,
        Some(a) => text(a).trim().parse().map_err(|_| {
            ApiError::validation(format!(
                "after={} is not a paging cursor from a previous page",
                text(a)
            ))
        })?,
    };
    if offset >= MAX_RESULTS {
        return Err(ApiError::validation(format!(
            "Cannot page past {MAX_RESULTS} search results; narrow the search (for example hs_lastmodifieddate GTE the last value seen)"
        )));
    }
    if let Some(q) = &req.query {
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(ApiError::validation(format!(
                "query is longer than {MAX_QUERY_CHARS} characters"
            )));
        }
    }
    let groups: Vec<Vec<Compiled>> = req
        .filter_groups
        .iter()
        .map(|g| {
            g.filters
                .iter()
                .map(|f| compile(data, t, f))
                .collect::<ApiResult<_>>()
        })
        .collect::<ApiResult<_>>()?;
    let query = req
        .query
        .as_deref()
        .map(str::to_lowercase)
        .filter(|q| !q.trim().is_empty());

    // The index holds objects that existed at `at` and were not archived by then.
    let mut hits: Vec<&Object> = data
        .objects(t)
        .values()
        .filter(|o| o.created_ms <= at && o.archived_ms.is_none_or(|a| a > at))
        .filter(|o| groups.is_empty() || groups.iter().any(|g| g.iter().all(|c| matches(c, o, at))))
        .filter(|o| {
            query.as_deref().is_none_or(|q| {
                t.query_properties().iter().any(|p| {
                    o.get_at(p, at)
                        .is_some_and(|v| v.to_lowercase().contains(q))
                })
            })
        })
        .collect();
    if let Some(sort) = req.sorts.first() {
        let (prop, desc) = match sort {
            SortSpec::Name(n) => match n.strip_prefix('-') {
                Some(n) => (n.to_owned(), true),
                None => (n.clone(), false),
            },
            SortSpec::Full {
                property_name,
                direction,
            } => (
                property_name.clone(),
                direction
                    .as_deref()
                    .is_some_and(|d| d.eq_ignore_ascii_case("DESCENDING")),
            ),
        };
        let k = kind(data, t, &prop);
        // A date HubSpot keeps sorts by its ms (sort_by_key is stable: ties stay in id order).
        if hits.iter().all(|o| o.time_at(&prop, at).is_some()) {
            hits.sort_by_key(|o| {
                let ms = o.time_at(&prop, at).unwrap_or_default();
                (if desc { -ms } else { ms }, o.id)
            });
        } else {
            sort_by_value(&mut hits, &prop, k, desc, at);
        }
    }
    Ok(page(data, t, &hits, req, offset, limit, at))
}

/// Sorts by a property's value as text, number or date; ties (equal values, same
/// millisecond) fall back to id order so pages never overlap.
fn sort_by_value(hits: &mut [&Object], prop: &str, k: Kind, desc: bool, at: i64) {
    let keys: std::collections::HashMap<u64, Option<String>> =
        hits.iter().map(|o| (o.id, o.get_at(prop, at))).collect();
    hits.sort_by(|a, b| {
        let (ka, kb) = (&keys[&a.id], &keys[&b.id]);
        let ord = match (ka, kb) {
            (Some(x), Some(y)) => compare(k, x, y).unwrap_or(Ordering::Equal),
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        let ord = if desc { ord.reverse() } else { ord };
        ord.then(a.id.cmp(&b.id))
    });
}

/// One page of the sorted hits, as HubSpot answers it.
fn page(
    data: &PortalData,
    t: ObjectType,
    hits: &[&Object],
    req: &SearchRequest,
    offset: usize,
    limit: usize,
    at: i64,
) -> Value {
    let total = hits.len();
    let view = View {
        properties: (!req.properties.is_empty()).then(|| req.properties.clone()),
        ..View::default()
    };
    let end = (offset + limit).min(total).min(MAX_RESULTS);
    let results: Vec<Value> = hits
        .get(offset..end.max(offset))
        .unwrap_or_default()
        .iter()
        .map(|o| render(data, t, o, &view, at))
        .collect();
    let mut body = json!({ "total": total, "results": results });
    if end < total {
        body["paging"] =
            json!({ "next": { "after": end.to_string(), "link": format!("?after={end}") } });
    }
    body
}

fn limit_error(message: String) -> ApiError {
    ApiError::validation(message).with_sub_category("crm.search.FILTER_LIMIT_EXCEEDED")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_matching() {
        assert!(token_match("Acme Widgets Ltd", "widgets"));
        assert!(token_match("Acme Widgets Ltd", "widg*"));
        assert!(!token_match("Acme Widgets Ltd", "gadgets"));
        assert!(token_match("ops@acme.test", "ops@acme.test"));
    }

    #[test]
    fn compare_by_kind() {
        assert_eq!(compare(Kind::Number, "10", "9"), Some(Ordering::Greater));
        assert_eq!(compare(Kind::Text, "10", "9"), Some(Ordering::Less));
        assert_eq!(
            compare(Kind::Time, "2024-01-01T00:00:00.000Z", "1704067200000"),
            Some(Ordering::Equal)
        );
    }
}
