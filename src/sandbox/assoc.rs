//! Associations v4: default and typed links, listing, removal, the batch calls and labels.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use serde_json::{json, Value};

use super::data::not_found;
use super::error::{ApiError, ApiResult};
use super::gate::Ctx;
use super::model::*;
use super::objects::{reply, AssocTypeInput};
use super::params::{object_type, Json, Query};
use super::Shared;

/// Largest batch read HubSpot accepts for associations (changelog 2025-02-10).
const MAX_BATCH_READ: usize = 1_000;
const MAX_BATCH_WRITE: usize = 100;
const MAX_LIST: usize = 500;

fn id(t: ObjectType, s: &str) -> ApiResult<u64> {
    s.trim().parse().map_err(|_| not_found(t, s))
}

fn spec(from: ObjectType, to: ObjectType, cat: AssocCategory, type_id: i32) -> Value {
    let mut v = json!({ "category": cat.as_str(), "typeId": type_id });
    if let Some(label) = assoc_def(from, to, type_id).and_then(|d| d.label) {
        v["label"] = json!(label);
    }
    v
}

fn labels_between(from: ObjKey, to: ObjKey, types: &[(AssocCategory, i32)]) -> Value {
    json!({
        "fromObjectTypeId": from.0.type_id(),
        "fromObjectId": from.1.to_string(),
        "toObjectTypeId": to.0.type_id(),
        "toObjectId": to.1.to_string(),
        "labels": types
            .iter()
            .filter_map(|(_, t)| assoc_def(from.0, to.0, *t).and_then(|d| d.label))
            .collect::<Vec<_>>(),
    })
}

fn default_types(from: ObjectType, to: ObjectType) -> ApiResult<Vec<(AssocCategory, i32)>> {
    let d = default_assoc(from, to).ok_or_else(|| no_default(from, to))?;
    Ok(vec![(AssocCategory::HubspotDefined, d.type_id)])
}

/// Pairs with only labeled types (parent/child companies) need the caller to pick one.
fn no_default(from: ObjectType, to: ObjectType) -> ApiError {
    let labeled: Vec<String> = ASSOC_DEFS
        .iter()
        .filter(|d| d.from == from && d.to == to)
        .map(|d| format!("{} ({})", d.type_id, d.label.unwrap_or("unlabeled")))
        .collect();
    let (f, t) = (from.name(), to.name());
    if labeled.is_empty() {
        return ApiError::validation(format!("{f} and {t} cannot be associated"));
    }
    ApiError::validation(format!(
        "{f} and {t} have no default association type; PUT a HUBSPOT_DEFINED type: {}",
        labeled.join(", ")
    ))
}

fn parse_types(inputs: &[AssocTypeInput]) -> ApiResult<Vec<(AssocCategory, i32)>> {
    if inputs.is_empty() {
        return Err(ApiError::validation(
            "at least one association type is needed",
        ));
    }
    inputs
        .iter()
        .map(|t| {
            AssocCategory::parse(&t.association_category)
                .map(|c| (c, t.association_type_id))
                .ok_or_else(|| {
                    ApiError::validation(format!(
                        "associationCategory {} is not one of HUBSPOT_DEFINED, USER_DEFINED, INTEGRATOR_DEFINED",
                        t.association_category
                    ))
                })
        })
        .collect()
}

fn batch_envelope(results: Vec<Value>, errors: Vec<Value>, now: i64, ok: StatusCode) -> Response {
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": iso(now),
        "completedAt": iso(now),
    });
    if errors.is_empty() {
        return reply(ok, body);
    }
    body["numErrors"] = json!(errors.len());
    body["errors"] = Value::Array(errors);
    reply(StatusCode::MULTI_STATUS, body)
}

pub async fn put_default(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((ft, fid, tt, tid)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    let (ft, tt) = (object_type(&ft)?, object_type(&tt)?);
    let (from, to) = ((ft, id(ft, &fid)?), (tt, id(tt, &tid)?));
    let now = shared.now_ms();
    let mut changes = Vec::new();
    let types = default_types(ft, tt)?;
    ctx.portal
        .data
        .lock()
        .associate(from, to, &types, now, &mut changes)?;
    shared.publish(&ctx.portal, changes, ctx.source);
    let result = json!({
        "from": { "id": from.1.to_string() },
        "to": { "id": to.1.to_string() },
        "associationSpec": { "associationCategory": types[0].0.as_str(), "associationTypeId": types[0].1 },
    });
    Ok(batch_envelope(
        vec![result],
        Vec::new(),
        now,
        StatusCode::OK,
    ))
}

pub async fn put_typed(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((ft, fid, tt, tid)): Path<(String, String, String, String)>,
    Json(types): Json<Vec<AssocTypeInput>>,
) -> ApiResult<Response> {
    let (ft, tt) = (object_type(&ft)?, object_type(&tt)?);
    let (from, to) = ((ft, id(ft, &fid)?), (tt, id(tt, &tid)?));
    let types = parse_types(&types)?;
    let now = shared.now_ms();
    let mut changes = Vec::new();
    let body = {
        let mut data = ctx.portal.data.lock();
        data.associate(from, to, &types, now, &mut changes)?;
        let all: Vec<(AssocCategory, i32)> = data
            .assoc
            .get(&from)
            .and_then(|m| m.get(&to))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        labels_between(from, to, &all)
    };
    shared.publish(&ctx.portal, changes, ctx.source);
    Ok(reply(StatusCode::CREATED, body))
}

pub async fn list(
    Extension(ctx): Extension<Ctx>,
    Path((ft, fid, tt)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let (ft, tt) = (object_type(&ft)?, object_type(&tt)?);
    let q = Query::parse(q.as_deref());
    let limit = q.limit(MAX_LIST, MAX_LIST)?;
    let after: u64 = match q.get("after") {
        None => 0,
        Some(a) => a.parse().map_err(|_| {
            ApiError::validation(format!(
                "after={a} is not a paging cursor this endpoint returned"
            ))
        })?,
    };
    let data = ctx.portal.data.lock();
    let from = (ft, id(ft, &fid)?);
    data.live(ft, from.1)?;
    let linked = data.associated(from, tt);
    let mut rest = linked.iter().filter(|(id, _)| *id >= after);
    let results: Vec<Value> = rest
        .by_ref()
        .take(limit)
        .map(|(id, types)| {
            json!({
                "toObjectId": id.to_string(),
                "associationTypes": types.iter().map(|(c, t)| spec(ft, tt, *c, *t)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut body = json!({ "results": results });
    if let Some((next, _)) = rest.next() {
        body["paging"] =
            json!({ "next": { "after": next.to_string(), "link": format!("?after={next}") } });
    }
    Ok(reply(StatusCode::OK, body))
}

pub async fn remove(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((ft, fid, tt, tid)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    let (ft, tt) = (object_type(&ft)?, object_type(&tt)?);
    let (from, to) = ((ft, id(ft, &fid)?), (tt, id(tt, &tid)?));
    let now = shared.now_ms();
    let mut changes = Vec::new();
    ctx.portal
        .data
        .lock()
        .unassociate(from, to, now, &mut changes);
    shared.publish(&ctx.portal, changes, ctx.source);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub struct BatchInputs {
    inputs: Vec<Value>,
}

#[derive(Deserialize)]
struct Obj {
    #[serde(deserialize_with = "flex_id")]
    id: String,
}

fn flex_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "id must be a string, got {other}"
        ))),
    }
}

#[derive(Deserialize)]
struct CreateIn {
    from: Obj,
    to: Obj,
    types: Vec<AssocTypeInput>,
}

#[derive(Deserialize)]
struct DefaultIn {
    from: Obj,
    to: Obj,
}

#[derive(Deserialize)]
struct ReadIn {
    #[serde(deserialize_with = "flex_id")]
    id: String,
}

#[derive(Deserialize)]
struct ArchiveIn {
    from: Obj,
    to: Vec<Obj>,
}

fn parse<T: serde::de::DeserializeOwned>(inputs: &[Value]) -> ApiResult<Vec<T>> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value(v.clone())
                .map_err(|e| ApiError::validation(format!("Invalid input JSON: inputs[{i}]: {e}")))
        })
        .collect()
}

fn check_size(n: usize, max: usize) -> ApiResult<()> {
    if n > max {
        return Err(ApiError::validation(format!(
            "Batch input has {n} inputs; the limit is {max}. Split the call."
        )));
    }
    Ok(())
}

pub async fn batch(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((ft, tt, op)): Path<(String, String, String)>,
    Json(input): Json<BatchInputs>,
) -> ApiResult<Response> {
    let (ft, tt) = (object_type(&ft)?, object_type(&tt)?);
    let now = shared.now_ms();
    let mut changes = Vec::new();
    let resp = {
        let mut data = ctx.portal.data.lock();
        match op.as_str() {
            "create" => {
                check_size(input.inputs.len(), MAX_BATCH_WRITE)?;
                let inputs: Vec<CreateIn> = parse(&input.inputs)?;
                let mut results = Vec::new();
                let mut errors = Vec::new();
                for i in inputs {
                    let attempt = (|| -> ApiResult<Value> {
                        let from = (ft, id(ft, &i.from.id)?);
                        let to = (tt, id(tt, &i.to.id)?);
                        let types = parse_types(&i.types)?;
                        data.associate(from, to, &types, now, &mut changes)?;
                        let all: Vec<_> = data.assoc[&from][&to].iter().copied().collect();
                        Ok(labels_between(from, to, &all))
                    })();
                    match attempt {
                        Ok(v) => results.push(v),
                        Err(e) => errors.push(e.standard_error(json!({
                            "fromId": [i.from.id], "toId": [i.to.id]
                        }))),
                    }
                }
                batch_envelope(results, errors, now, StatusCode::CREATED)
            }
            "read" => {
                check_size(input.inputs.len(), MAX_BATCH_READ)?;
                let inputs: Vec<ReadIn> = parse(&input.inputs)?;
                let mut results = Vec::new();
                let mut missing = Vec::new();
                for i in inputs {
                    let found = id(ft, &i.id).ok().filter(|oid| data.live(ft, *oid).is_ok());
                    let Some(oid) = found else {
                        missing.push(i.id);
                        continue;
                    };
                    let to: Vec<Value> = data
                        .associated((ft, oid), tt)
                        .into_iter()
                        .map(|(tid, types)| {
                            json!({
                                "toObjectId": tid.to_string(),
                                "associationTypes": types.iter().map(|(c, t)| spec(ft, tt, *c, *t)).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    results.push(json!({ "from": { "id": oid.to_string() }, "to": to }));
                }
                let errors = if missing.is_empty() {
                    Vec::new()
                } else {
                    vec![ApiError::not_found(format!(
                        "No {} is associated with {} ids {}",
                        tt.singular(),
                        ft.singular(),
                        missing.join(", ")
                    ))
                    .standard_error(json!({ "fromObjectIds": missing }))]
                };
                batch_envelope(results, errors, now, StatusCode::OK)
            }
            "archive" => {
                check_size(input.inputs.len(), MAX_BATCH_WRITE)?;
                let inputs: Vec<ArchiveIn> = parse(&input.inputs)?;
                for i in inputs {
                    let from = (ft, id(ft, &i.from.id)?);
                    for t in i.to {
                        data.unassociate(from, (tt, id(tt, &t.id)?), now, &mut changes);
                    }
                }
                StatusCode::NO_CONTENT.into_response()
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "OBJECT_NOT_FOUND",
                    format!("unknown batch operation {other}: use create, read, archive or associate/default"),
                ))
            }
        }
    };
    shared.publish(&ctx.portal, changes, ctx.source);
    Ok(resp)
}

pub async fn batch_default(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((ft, tt)): Path<(String, String)>,
    Json(input): Json<BatchInputs>,
) -> ApiResult<Response> {
    let (ft, tt) = (object_type(&ft)?, object_type(&tt)?);
    check_size(input.inputs.len(), MAX_BATCH_WRITE)?;
    let inputs: Vec<DefaultIn> = parse(&input.inputs)?;
    let types = default_types(ft, tt)?;
    let now = shared.now_ms();
    let mut changes = Vec::new();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    {
        let mut data = ctx.portal.data.lock();
        for i in inputs {
            let attempt = (|| -> ApiResult<()> {
                let from = (ft, id(ft, &i.from.id)?);
                let to = (tt, id(tt, &i.to.id)?);
                data.associate(from, to, &types, now, &mut changes)
            })();
            match attempt {
                Ok(()) => results.push(json!({
                    "from": { "id": i.from.id },
                    "to": { "id": i.to.id },
                    "associationSpec": { "associationCategory": types[0].0.as_str(), "associationTypeId": types[0].1 },
                })),
                Err(e) => errors.push(e.standard_error(json!({ "fromId": [i.from.id], "toId": [i.to.id] }))),
            }
        }
    }
    shared.publish(&ctx.portal, changes, ctx.source);
    // HubSpot documents only 200 here; partial failures ride in `errors`/`numErrors`.
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": iso(now),
        "completedAt": iso(now),
    });
    if !errors.is_empty() {
        body["numErrors"] = json!(errors.len());
        body["errors"] = Value::Array(errors);
    }
    Ok(reply(StatusCode::OK, body))
}

pub async fn labels(Path((ft, tt)): Path<(String, String)>) -> ApiResult<Response> {
    let (ft, tt) = (object_type(&ft)?, object_type(&tt)?);
    let results: Vec<Value> = ASSOC_DEFS
        .iter()
        .filter(|d| d.from == ft && d.to == tt)
        .map(|d| spec(ft, tt, AssocCategory::HubspotDefined, d.type_id))
        .collect();
    Ok(reply(StatusCode::OK, json!({ "results": results })))
}
