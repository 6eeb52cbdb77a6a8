//! CRM v3 objects: list, read, create, update, archive, the five batch calls and search.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::data::{not_found, Change};
use super::error::{ApiError, ApiResult};
use super::gate::Ctx;
use super::model::*;
use super::params::{object_type, Json, Query};
use super::validations::{self, Rules};
use super::{search, Shared};

/// Most inputs one batch call takes.
pub const MAX_BATCH: usize = 100;
/// Inputs per batch read that asks for `propertiesWithHistory`.
pub const MAX_HISTORY_BATCH: usize = 50;
/// List page sizes: HubSpot's maximum, and the lower one when history is asked for.
const MAX_LIST: usize = 100;
const MAX_LIST_WITH_HISTORY: usize = 50;

pub fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Which parts of an object an answer shows.
#[derive(Default)]
pub struct View {
    pub properties: Option<Vec<String>>,
    pub history: Vec<String>,
    pub associations: Vec<ObjectType>,
}

impl View {
    pub fn from_query(q: &Query) -> ApiResult<View> {
        let props = q.list("properties");
        let mut associations = Vec::new();
        for a in q.list("associations") {
            // HubSpot ignores association types it does not know.
            if let Some(t) = ObjectType::parse(&a) {
                associations.push(t);
            }
        }
        Ok(View {
            properties: (!props.is_empty()).then_some(props),
            history: q.list("propertiesWithHistory"),
            associations,
        })
    }
}

/// Renders an object as HubSpot answers it, with values as of `at` (search lag) .
pub fn render(data: &PortalData, t: ObjectType, obj: &Object, view: &View, at: i64) -> Value {
    let mut props = Map::new();
    let always: &[&str] = match t {
        ObjectType::Deals | ObjectType::Companies => {
            &["createdate", "hs_lastmodifieddate", "hs_object_id"]
        }
        ObjectType::Contacts => &["createdate", "lastmodifieddate", "hs_object_id"],
        _ => &["hs_createdate", "hs_lastmodifieddate", "hs_object_id"],
    };
    let names: Vec<&str> = match &view.properties {
        Some(list) => list
            .iter()
            .map(String::as_str)
            .filter(|n| data.property(t, n).is_some())
            .chain(always.iter().copied())
            .collect(),
        None => t.default_properties().to_vec(),
    };
    for n in names {
        props.insert(
            n.to_owned(),
            obj.get_at(n, at).map(Value::String).unwrap_or(Value::Null),
        );
    }
    let mut out = Map::new();
    out.insert("id".into(), json!(obj.id.to_string()));
    out.insert("properties".into(), Value::Object(props));
    if !view.history.is_empty() {
        let mut h = Map::new();
        for n in view
            .history
            .iter()
            .filter(|n| data.property(t, n).is_some())
        {
            let entries: Vec<Value> = match obj.props.get(n.as_str()) {
                Some(_) => obj
                    .history(n)
                    .into_iter()
                    .filter(|e| e.ts <= at)
                    .map(|e| {
                        json!({
                            "value": e.value,
                            "timestamp": iso(e.ts),
                            "sourceType": e.source.as_str(),
                            "sourceId": source_id(e.source),
                        })
                    })
                    .collect(),
                None => obj
                    .get_at(n, at)
                    .map(|v| {
                        vec![json!({
                            "value": v,
                            "timestamp": iso(obj.created_ms),
                            "sourceType": "CALCULATED",
                        })]
                    })
                    .unwrap_or_default(),
            };
            h.insert(n.clone(), Value::Array(entries));
        }
        out.insert("propertiesWithHistory".into(), Value::Object(h));
    }
    out.insert("createdAt".into(), json!(iso(obj.created_ms)));
    // Everything as of `at`: a lagging search index shows a consistent older record.
    out.insert("updatedAt".into(), json!(iso(obj.updated_at(at))));
    let archived_at = obj.archived_ms.filter(|a| *a <= at);
    out.insert("archived".into(), json!(archived_at.is_some()));
    if let Some(a) = archived_at {
        out.insert("archivedAt".into(), json!(iso(a)));
    }
    if !view.associations.is_empty() {
        let mut assoc = Map::new();
        for to in &view.associations {
            let linked = data.associated((t, obj.id), *to);
            if linked.is_empty() {
                continue;
            }
            let name = assoc_type_name(t, *to);
            let results: Vec<Value> = linked
                .iter()
                .map(|(id, _)| json!({ "id": id.to_string(), "type": name }))
                .collect();
            assoc.insert(to.name().into(), json!({ "results": results }));
        }
        if !assoc.is_empty() {
            out.insert("associations".into(), Value::Object(assoc));
        }
    }
    Value::Object(out)
}

fn source_id(s: Source) -> &'static str {
    match s {
        Source::Integration => "sandbox-private-app",
        Source::CrmUi => "sandbox-user",
        Source::Api => "sandbox-api",
        Source::Import => "sandbox-import",
    }
}

/// A view showing the default properties plus the ones a write touched.
fn written_view(props: &Map<String, Value>, t: ObjectType) -> View {
    let mut list: Vec<String> = t
        .default_properties()
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    list.extend(props.keys().cloned());
    View {
        properties: Some(list),
        ..View::default()
    }
}

pub async fn list(
    State(_shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path(t): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let q = Query::parse(q.as_deref());
    let view = View::from_query(&q)?;
    let max = if view.history.is_empty() {
        MAX_LIST
    } else {
        MAX_LIST_WITH_HISTORY
    };
    let limit = q.limit(10, max)?;
    let archived = q.flag("archived")?;
    let after: u64 = match q.get("after") {
        None => 0,
        Some(a) => a.parse().map_err(|_| {
            ApiError::validation(format!(
                "after={a} is not a paging cursor this endpoint returned"
            ))
        })?,
    };
    let data = ctx.portal.data.lock();
    let mut page = data
        .objects(t)
        .range(after..)
        .map(|(_, o)| o)
        .filter(|o| o.is_archived() == archived);
    let results: Vec<Value> = page
        .by_ref()
        .take(limit)
        .map(|o| render(&data, t, o, &view, i64::MAX))
        .collect();
    let mut body = json!({ "results": results });
    if let Some(next) = page.next() {
        let after = next.id.to_string();
        body["paging"] = json!({ "next": { "after": after, "link": format!("?after={after}") } });
    }
    Ok(reply(StatusCode::OK, body))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssocInput {
    to: IdRef,
    types: Vec<AssocTypeInput>,
}

#[derive(Deserialize)]
pub struct IdRef {
    #[serde(deserialize_with = "id_string")]
    id: String,
}

/// Ids may come as strings or numbers.
fn id_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "id must be a string, got {other}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssocTypeInput {
    pub association_category: String,
    pub association_type_id: i32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateInput {
    #[serde(default)]
    properties: Map<String, Value>,
    #[serde(default)]
    associations: Vec<AssocInput>,
    object_write_trace_id: Option<String>,
}

/// Resolves v3-style associations on create (the target type follows from the type id).
fn plan_associations(
    data: &PortalData,
    t: ObjectType,
    inputs: &[AssocInput],
) -> ApiResult<Vec<(ObjKey, AssocTypes)>> {
    let mut out = Vec::new();
    for a in inputs {
        let mut types = Vec::new();
        let mut to_type = None;
        for ty in &a.types {
            let cat = AssocCategory::parse(&ty.association_category).ok_or_else(|| {
                ApiError::validation(format!(
                    "associationCategory {} is not one of HUBSPOT_DEFINED, USER_DEFINED, INTEGRATOR_DEFINED",
                    ty.association_category
                ))
            })?;
            if cat != AssocCategory::HubspotDefined {
                return Err(ApiError::validation(format!(
                    "{} {} is not an association type this portal defines; use HUBSPOT_DEFINED types",
                    cat.as_str(),
                    ty.association_type_id
                )));
            }
            let def = ASSOC_DEFS
                .iter()
                .find(|d| d.from == t && d.type_id == ty.association_type_id)
                .ok_or_else(|| {
                    ApiError::validation(format!(
                        "association type {} is not valid from {}",
                        ty.association_type_id,
                        t.name()
                    ))
                })?;
            // Every type of one association must point at the same kind of object.
            if to_type.is_some_and(|prev| prev != def.to) {
                return Err(ApiError::validation(format!(
                    "association types of one target must all lead to the same object type; {} leads to {}",
                    ty.association_type_id,
                    def.to.name()
                )));
            }
            to_type = Some(def.to);
            types.push((cat, ty.association_type_id));
        }
        let to_type = to_type
            .ok_or_else(|| ApiError::validation("each association needs at least one type"))?;
        let id: u64 = a.to.id.parse().map_err(|_| not_found(to_type, &a.to.id))?;
        data.live(to_type, id).map_err(|_| {
            ApiError::validation(format!(
                "cannot associate with {} {}: it does not exist",
                to_type.singular(),
                a.to.id
            ))
        })?;
        out.push(((to_type, id), types));
    }
    Ok(out)
}

fn create_one(
    data: &mut PortalData,
    t: ObjectType,
    input: &CreateInput,
    source: Source,
    now: i64,
    changes: &mut Vec<Change>,
    rules: Option<&Rules>,
) -> ApiResult<u64> {
    validations::check(rules, t, None, &input.properties)?;
    let plan = plan_associations(data, t, &input.associations)?;
    let id = data.create(t, &input.properties, source, now, changes)?;
    for (to, types) in plan {
        data.associate((t, id), to, &types, now, changes)?;
    }
    Ok(id)
}

pub async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path(t): Path<String>,
    uri: Uri,
    Json(input): Json<CreateInput>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let rules = validations::for_write(&ctx.portal, uri.path());
    let now = shared.now_ms();
    let mut changes = Vec::new();
    let body = {
        let mut data = ctx.portal.data.lock();
        let id = create_one(
            &mut data,
            t,
            &input,
            ctx.source,
            now,
            &mut changes,
            rules.as_ref(),
        )?;
        let obj = data.live(t, id)?;
        render(&data, t, obj, &written_view(&input.properties, t), i64::MAX)
    };
    shared.publish(&ctx.portal, changes, ctx.source);
    Ok(reply(StatusCode::CREATED, body))
}

pub async fn read(
    State(_shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((t, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let q = Query::parse(q.as_deref());
    let view = View::from_query(&q)?;
    let archived = q.flag("archived")?;
    let data = ctx.portal.data.lock();
    let id = if archived {
        data.resolve_archived(t, &id, q.get("idProperty"))?
    } else {
        data.resolve(t, &id, q.get("idProperty"))?
    };
    let obj = data
        .objects(t)
        .get(&id)
        .filter(|o| o.is_archived() == archived)
        .ok_or_else(|| not_found(t, &id.to_string()))?;
    Ok(reply(
        StatusCode::OK,
        render(&data, t, obj, &view, i64::MAX),
    ))
}

#[derive(Deserialize)]
pub struct UpdateInput {
    #[serde(default)]
    properties: Map<String, Value>,
}

pub async fn update(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((t, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    uri: Uri,
    Json(input): Json<UpdateInput>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let q = Query::parse(q.as_deref());
    let rules = validations::for_write(&ctx.portal, uri.path());
    let now = shared.now_ms();
    let mut changes = Vec::new();
    let body = {
        let mut data = ctx.portal.data.lock();
        let id = data.resolve(t, &id, q.get("idProperty"))?;
        validations::check(rules.as_ref(), t, data.live(t, id).ok(), &input.properties)?;
        data.update(t, id, &input.properties, ctx.source, now, &mut changes)?;
        let obj = data.live(t, id)?;
        render(&data, t, obj, &written_view(&input.properties, t), i64::MAX)
    };
    shared.publish(&ctx.portal, changes, ctx.source);
    Ok(reply(StatusCode::OK, body))
}

pub async fn archive(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((t, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let now = shared.now_ms();
    let mut changes = Vec::new();
    if let Ok(id) = id.parse::<u64>() {
        ctx.portal.data.lock().archive(t, id, now, &mut changes);
    }
    shared.publish(&ctx.portal, changes, ctx.source);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchInput {
    inputs: Vec<Value>,
    #[serde(default)]
    properties: Vec<String>,
    #[serde(default)]
    properties_with_history: Vec<String>,
    id_property: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchUpdateInput {
    #[serde(deserialize_with = "id_string")]
    id: String,
    id_property: Option<String>,
    #[serde(default)]
    properties: Map<String, Value>,
    object_write_trace_id: Option<String>,
}

fn parse_inputs<T: serde::de::DeserializeOwned>(inputs: &[Value]) -> ApiResult<Vec<T>> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value(v.clone())
                .map_err(|e| ApiError::validation(format!("Invalid input JSON: inputs[{i}]: {e}")))
        })
        .collect()
}

fn batch_body(
    results: Vec<Value>,
    errors: Vec<Value>,
    started: i64,
    now: i64,
) -> (StatusCode, Value) {
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": iso(started),
        "completedAt": iso(now),
    });
    if errors.is_empty() {
        (StatusCode::OK, body)
    } else {
        body["numErrors"] = json!(errors.len());
        body["errors"] = Value::Array(errors);
        (StatusCode::MULTI_STATUS, body)
    }
}

/// Unique values already claimed by earlier inputs of one all-or-nothing batch: two inputs
/// may not take the same value, even though each alone would be accepted.
#[derive(Default)]
struct UniqueSeen(HashSet<(String, String)>);

impl UniqueSeen {
    /// `values` are the normalised values a `check_*` call returned.
    fn check(
        &mut self,
        data: &PortalData,
        t: ObjectType,
        values: &[(String, String)],
    ) -> ApiResult<()> {
        for (k, v) in values {
            if v.is_empty() || !data.property(t, k).is_some_and(|p| p.has_unique_value) {
                continue;
            }
            if !self.0.insert((k.clone(), v.clone())) {
                return Err(ApiError::conflict(format!(
                    "Duplicate {k} value {v} in batch input"
                )));
            }
        }
        Ok(())
    }
}

/// Partial failure is allowed only when every input carries a distinct
/// `objectWriteTraceId` (HubSpot's rule); otherwise one bad input fails the whole call.
fn traced(ids: &[Option<String>]) -> bool {
    let mut seen = HashSet::new();
    ids.iter()
        .all(|i| i.as_ref().is_some_and(|i| seen.insert(i.clone())))
}

pub async fn batch(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((t, op)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    uri: Uri,
    Json(input): Json<BatchInput>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let q = Query::parse(q.as_deref());
    let rules = validations::for_write(&ctx.portal, uri.path());
    let rules = rules.as_ref();
    if input.inputs.len() > MAX_BATCH {
        return Err(ApiError::validation(format!(
            "Batch input has {} inputs; the limit is {MAX_BATCH}. Split the call.",
            input.inputs.len()
        )));
    }
    // HubSpot's own words for a history read over its cap (HUBSPOT-API.md §0).
    if op == "read"
        && !input.properties_with_history.is_empty()
        && input.inputs.len() > MAX_HISTORY_BATCH
    {
        return Err(ApiError::validation(format!(
            "The maximum number of inputs supported in a batch request for property histories is {MAX_HISTORY_BATCH}"
        )));
    }
    if op == "upsert" {
        ctx.portal.features.lock().check_upsert(t)?;
    }
    let started = shared.now_ms();
    let now = started;
    let mut changes = Vec::new();
    let (status, body) = {
        let mut data = ctx.portal.data.lock();
        match op.as_str() {
            "read" => batch_read(&data, t, &input, q.flag("archived")?, now)?,
            "create" => batch_create(&mut data, t, &input, ctx.source, now, &mut changes, rules)?,
            "update" => batch_update(&mut data, t, &input, ctx.source, now, &mut changes, rules)?,
            "upsert" => batch_upsert(&mut data, t, &input, ctx.source, now, &mut changes, rules)?,
            "archive" => {
                for v in &input.inputs {
                    let id = v.get("id").map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    });
                    if let Some(id) = id.and_then(|s| s.parse::<u64>().ok()) {
                        data.archive(t, id, now, &mut changes);
                    }
                }
                drop(data);
                shared.publish(&ctx.portal, changes, ctx.source);
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "OBJECT_NOT_FOUND",
                    format!(
                    "unknown batch operation {other}: use read, create, update, upsert or archive"
                ),
                ))
            }
        }
    };
    shared.publish(&ctx.portal, changes, ctx.source);
    if op == "read" {
        bodies_served(&ctx, t, &body);
    }
    Ok(reply(status, body))
}

fn batch_read(
    data: &PortalData,
    t: ObjectType,
    input: &BatchInput,
    archived: bool,
    now: i64,
) -> ApiResult<(StatusCode, Value)> {
    let view = View {
        properties: (!input.properties.is_empty()).then(|| input.properties.clone()),
        history: input.properties_with_history.clone(),
        associations: Vec::new(),
    };
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for v in &input.inputs {
        let Some(id) = v.get("id").map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }) else {
            return Err(ApiError::validation(
                "Invalid input JSON: each input needs an id",
            ));
        };
        let found = data
            .resolve(t, &id, input.id_property.as_deref())
            .ok()
            .and_then(|oid| data.objects(t).get(&oid))
            .filter(|o| o.is_archived() == archived);
        match found {
            Some(o) => results.push(render(data, t, o, &view, i64::MAX)),
            None => missing.push(id),
        }
    }
    let errors = if missing.is_empty() {
        Vec::new()
    } else {
        vec![ApiError::not_found(format!(
            "Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.",
            t.singular().to_uppercase()
        ))
        .standard_error(json!({ "ids": missing }))]
    };
    Ok(batch_body(results, errors, now, now))
}

fn batch_create(
    data: &mut PortalData,
    t: ObjectType,
    input: &BatchInput,
    source: Source,
    now: i64,
    changes: &mut Vec<Change>,
    rules: Option<&Rules>,
) -> ApiResult<(StatusCode, Value)> {
    let inputs: Vec<CreateInput> = parse_inputs(&input.inputs)?;
    let partial = traced(
        &inputs
            .iter()
            .map(|i| i.object_write_trace_id.clone())
            .collect::<Vec<_>>(),
    );
    if !partial {
        // All or nothing: check every input before writing any.
        let mut seen = UniqueSeen::default();
        for i in &inputs {
            validations::check(rules, t, None, &i.properties)?;
            let values = data.check_create(t, &i.properties)?;
            plan_associations(data, t, &i.associations)?;
            seen.check(data, t, &values)?;
        }
    }
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for i in &inputs {
        match create_one(data, t, i, source, now, changes, rules) {
            Ok(id) => {
                let obj = data.live(t, id)?;
                let mut v = render(data, t, obj, &written_view(&i.properties, t), i64::MAX);
                if let Some(tr) = &i.object_write_trace_id {
                    v["objectWriteTraceId"] = json!(tr);
                }
                results.push(v);
            }
            Err(e) => errors.push(e.standard_error(json!({
                "objectWriteTraceId": [i.object_write_trace_id.clone().unwrap_or_default()]
            }))),
        }
    }
    let (status, body) = batch_body(results, errors, now, now);
    Ok((
        if status == StatusCode::OK {
            StatusCode::CREATED
        } else {
            status
        },
        body,
    ))
}

fn batch_update(
    data: &mut PortalData,
    t: ObjectType,
    input: &BatchInput,
    source: Source,
    now: i64,
    changes: &mut Vec<Change>,
    rules: Option<&Rules>,
) -> ApiResult<(StatusCode, Value)> {
    let inputs: Vec<BatchUpdateInput> = parse_inputs(&input.inputs)?;
    let mut seen = HashSet::new();
    for i in &inputs {
        if !seen.insert((i.id_property.clone(), i.id.clone())) {
            return Err(ApiError::validation(format!(
                "Duplicate IDs found in batch input: [{}]",
                i.id
            )));
        }
    }
    let partial = traced(
        &inputs
            .iter()
            .map(|i| i.object_write_trace_id.clone())
            .collect::<Vec<_>>(),
    );
    let mut missing = Vec::new();
    let mut resolved = Vec::new();
    for i in &inputs {
        match data.resolve(
            t,
            &i.id,
            i.id_property.as_deref().or(input.id_property.as_deref()),
        ) {
            Ok(id) if data.live(t, id).is_ok() => resolved.push(Some(id)),
            _ => {
                missing.push(i.id.clone());
                resolved.push(None);
            }
        }
    }
    if !partial {
        let mut seen = UniqueSeen::default();
        for (i, id) in inputs.iter().zip(&resolved) {
            if let Some(id) = id {
                validations::check(rules, t, data.live(t, *id).ok(), &i.properties)?;
                let values = data.check_update(t, *id, &i.properties)?;
                seen.check(data, t, &values)?;
            }
        }
    }
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (i, id) in inputs.iter().zip(resolved) {
        let Some(id) = id else { continue };
        // A portal rule fails this input alone, like any other per-input error.
        let written = validations::check(rules, t, data.live(t, id).ok(), &i.properties)
            .and_then(|()| data.update(t, id, &i.properties, source, now, changes));
        match written {
            Ok(()) => {
                let obj = data.live(t, id)?;
                let mut v = render(data, t, obj, &written_view(&i.properties, t), i64::MAX);
                if let Some(tr) = &i.object_write_trace_id {
                    v["objectWriteTraceId"] = json!(tr);
                }
                results.push(v);
            }
            Err(e) => errors.push(e.standard_error(json!({ "ids": [i.id] }))),
        }
    }
    if !missing.is_empty() {
        errors.push(
            ApiError::not_found(format!(
                "Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.",
                t.singular().to_uppercase()
            ))
            .standard_error(json!({ "ids": missing })),
        );
    }
    Ok(batch_body(results, errors, now, now))
}

fn batch_upsert(
    data: &mut PortalData,
    t: ObjectType,
    input: &BatchInput,
    source: Source,
    now: i64,
    changes: &mut Vec<Change>,
    rules: Option<&Rules>,
) -> ApiResult<(StatusCode, Value)> {
    let inputs: Vec<BatchUpdateInput> = parse_inputs(&input.inputs)?;
    let mut seen = HashSet::new();
    // Check everything first: upsert is all or nothing.
    for i in &inputs {
        let Some(prop) = i.id_property.as_deref().or(input.id_property.as_deref()) else {
            return Err(ApiError::validation(
                "batch upsert needs idProperty on every input",
            ));
        };
        if !data.property(t, prop).is_some_and(|p| p.has_unique_value) {
            return Err(ApiError::validation(format!(
                "{prop} is not a unique identifier property for {}; create it with hasUniqueValue=true",
                t.name()
            )));
        }
        if !seen.insert((prop.to_owned(), i.id.clone())) {
            return Err(ApiError::validation(format!(
                "Duplicate IDs found in batch input: [{}]",
                i.id
            )));
        }
        match data.resolve(t, &i.id, Some(prop)) {
            Ok(id) => {
                validations::check(rules, t, data.live(t, id).ok(), &i.properties)?;
                data.check_update(t, id, &i.properties)?;
            }
            Err(_) => {
                let mut props = i.properties.clone();
                props.insert(prop.to_owned(), json!(i.id));
                validations::check(rules, t, None, &props)?;
                data.check_create(t, &props)?;
            }
        }
    }
    let mut results = Vec::new();
    for i in &inputs {
        let prop = i
            .id_property
            .as_deref()
            .or(input.id_property.as_deref())
            .unwrap_or_default();
        let (id, new) = match data.resolve(t, &i.id, Some(prop)) {
            Ok(id) => {
                data.update(t, id, &i.properties, source, now, changes)?;
                (id, false)
            }
            Err(_) => {
                let mut props = i.properties.clone();
                props.insert(prop.to_owned(), json!(i.id));
                (data.create(t, &props, source, now, changes)?, true)
            }
        };
        let obj = data.live(t, id)?;
        let mut v = render(data, t, obj, &written_view(&i.properties, t), i64::MAX);
        v["new"] = json!(new);
        results.push(v);
    }
    Ok(batch_body(results, Vec::new(), now, now))
}

pub async fn search(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path(t): Path<String>,
    Json(req): Json<search::SearchRequest>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let lag = ctx.portal.faults.lock().search_lag_ms as i64;
    let at = shared.now_ms() - lag;
    let body = {
        let data = ctx.portal.data.lock();
        search::run(&data, t, &req, at)?
    };
    bodies_served(&ctx, t, &body);
    Ok(reply(StatusCode::OK, body))
}

/// Counts the notes whose body a batch read or a search answer carries (`note_bodies` in the
/// counters): how the tag-marking tests show that a private note without the tag is never
/// fetched. dealsync reads notes by batch read and search only; the list and single reads a
/// test uses to look at a portal are left out, so they do not count as dealsync's.
fn bodies_served(ctx: &Ctx, t: ObjectType, body: &Value) {
    if t != ObjectType::Notes {
        return;
    }
    let ids: Vec<String> = body["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| !r["properties"]["hs_note_body"].is_null())
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    if !ids.is_empty() {
        ctx.portal.counters.lock().note_bodies.extend(ids);
    }
}
