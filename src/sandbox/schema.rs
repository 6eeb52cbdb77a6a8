//! Properties, property groups, pipelines with stages, and owners.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::gate::Ctx;
use super::model::*;
use super::objects::reply;
use super::params::{object_type, Json, Query};
use super::Shared;

fn property_json(p: &PropertyDef) -> Value {
    json!({
        "name": p.name,
        "label": p.label,
        "type": p.ptype,
        "fieldType": p.field_type,
        "groupName": p.group_name,
        "description": p.description,
        "options": p.options.iter().map(|o| json!({
            "label": o.label, "value": o.value, "hidden": o.hidden,
            "displayOrder": o.display_order, "description": o.description,
        })).collect::<Vec<_>>(),
        "hasUniqueValue": p.has_unique_value,
        "hubspotDefined": p.hubspot_defined,
        "displayOrder": p.display_order,
        "hidden": p.hidden,
        "formField": p.form_field,
        "calculated": false,
        "externalOptions": false,
        "archived": p.archived,
        "createdAt": iso(p.created_ms),
        "updatedAt": iso(p.updated_ms),
        "modificationMetadata": {
            "archivable": !p.hubspot_defined,
            "readOnlyDefinition": p.hubspot_defined,
            "readOnlyValue": p.read_only_value,
        },
    })
}

fn group_json(g: &GroupDef) -> Value {
    json!({ "name": g.name, "label": g.label, "displayOrder": g.display_order, "archived": g.archived })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OptionIn {
    label: String,
    value: String,
    #[serde(default)]
    hidden: bool,
    display_order: Option<i64>,
    #[serde(default)]
    description: String,
}

fn options(input: Vec<OptionIn>) -> ApiResult<Vec<OptionDef>> {
    let mut seen = std::collections::HashSet::new();
    input
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            if !seen.insert(o.value.clone()) {
                return Err(ApiError::validation(format!(
                    "option value {} is listed twice",
                    o.value
                )));
            }
            Ok(OptionDef {
                label: o.label,
                value: o.value,
                hidden: o.hidden,
                display_order: o.display_order.unwrap_or(i as i64),
                description: o.description,
            })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PropertyCreate {
    name: String,
    label: String,
    #[serde(rename = "type")]
    ptype: String,
    field_type: String,
    group_name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    options: Vec<OptionIn>,
    #[serde(default)]
    has_unique_value: bool,
    display_order: Option<i64>,
    #[serde(default)]
    hidden: bool,
    #[serde(default)]
    form_field: bool,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 100
        && n.starts_with(|c: char| c.is_ascii_lowercase())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn create_property_in(
    data: &mut PortalData,
    t: ObjectType,
    p: PropertyCreate,
    now: i64,
) -> ApiResult<PropertyDef> {
    if !valid_name(&p.name) {
        return Err(ApiError::validation(format!(
            "Property name {:?} is invalid: use lowercase letters, digits and underscores, starting with a letter",
            p.name
        )));
    }
    if !valid_type_pair(&p.ptype, &p.field_type) {
        return Err(ApiError::validation(format!(
            "type {} cannot have fieldType {}; see the property types table in HubSpot's docs",
            p.ptype, p.field_type
        )));
    }
    if p.ptype == "enumeration" && p.field_type != "booleancheckbox" && p.options.is_empty() {
        return Err(ApiError::validation(format!(
            "enumeration property {} needs options",
            p.name
        )));
    }
    if data.groups[&t]
        .get(&p.group_name)
        .is_none_or(|g| g.archived)
    {
        return Err(ApiError::validation(format!(
            "property group {} does not exist for {}; create it first",
            p.group_name,
            t.name()
        )));
    }
    if data.properties[&t].contains_key(&p.name) {
        return Err(
            ApiError::conflict(format!("Property already exists: {}", p.name))
                .with_sub_category("PropertyValidationError.PROPERTY_EXISTS"),
        );
    }
    let def = PropertyDef {
        name: p.name.clone(),
        label: p.label,
        ptype: p.ptype,
        field_type: p.field_type,
        group_name: p.group_name,
        description: p.description,
        options: options(p.options)?,
        has_unique_value: p.has_unique_value,
        hubspot_defined: false,
        read_only_value: false,
        display_order: p.display_order.unwrap_or(-1),
        hidden: p.hidden,
        form_field: p.form_field,
        created_ms: now,
        updated_ms: now,
        archived: false,
    };
    if def.has_unique_value {
        data.unique
            .insert((t, def.name.clone()), Default::default());
    }
    data.properties
        .get_mut(&t)
        .expect("seeded")
        .insert(p.name, def.clone());
    Ok(def)
}

pub async fn list_properties(
    Extension(ctx): Extension<Ctx>,
    Path(t): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let archived = Query::parse(q.as_deref()).flag("archived")?;
    let data = ctx.portal.data.lock();
    let results: Vec<Value> = data.properties[&t]
        .values()
        .filter(|p| p.archived == archived)
        .map(property_json)
        .collect();
    Ok(reply(StatusCode::OK, json!({ "results": results })))
}

pub async fn create_property(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path(t): Path<String>,
    Json(p): Json<PropertyCreate>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let now = shared.now_ms();
    ctx.portal
        .features
        .lock()
        .check_property(t, p.has_unique_value)?;
    let def = create_property_in(&mut ctx.portal.data.lock(), t, p, now)?;
    shared.touched();
    Ok(reply(StatusCode::CREATED, property_json(&def)))
}

pub async fn read_property(
    Extension(ctx): Extension<Ctx>,
    Path((t, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let data = ctx.portal.data.lock();
    let p = data
        .property(t, &name)
        .ok_or_else(|| property_missing(t, &name))?;
    Ok(reply(StatusCode::OK, property_json(p)))
}

fn property_missing(t: ObjectType, name: &str) -> ApiError {
    ApiError::not_found(format!(
        "Unable to find property {name} for object type {}",
        t.name()
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PropertyUpdate {
    label: Option<String>,
    description: Option<String>,
    group_name: Option<String>,
    options: Option<Vec<OptionIn>>,
    display_order: Option<i64>,
    hidden: Option<bool>,
    form_field: Option<bool>,
    #[serde(rename = "type")]
    ptype: Option<String>,
    field_type: Option<String>,
}

pub async fn update_property(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((t, name)): Path<(String, String)>,
    Json(u): Json<PropertyUpdate>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let now = shared.now_ms();
    let mut data = ctx.portal.data.lock();
    if let Some(g) = &u.group_name {
        if data.groups[&t].get(g).is_none_or(|x| x.archived) {
            return Err(ApiError::validation(format!(
                "property group {g} does not exist for {}",
                t.name()
            )));
        }
    }
    let p = data
        .properties
        .get_mut(&t)
        .and_then(|m| m.get_mut(&name))
        .filter(|p| !p.archived)
        .ok_or_else(|| property_missing(t, &name))?;
    if p.hubspot_defined && (u.ptype.is_some() || u.field_type.is_some()) {
        return Err(ApiError::validation(format!(
            "{name} is HubSpot-defined; its type cannot change"
        )));
    }
    let ptype = u.ptype.clone().unwrap_or_else(|| p.ptype.clone());
    let field_type = u.field_type.clone().unwrap_or_else(|| p.field_type.clone());
    if !valid_type_pair(&ptype, &field_type) {
        return Err(ApiError::validation(format!(
            "type {ptype} cannot have fieldType {field_type}"
        )));
    }
    let opts = u.options.map(options).transpose()?;
    p.ptype = ptype;
    p.field_type = field_type;
    if let Some(v) = u.label {
        p.label = v;
    }
    if let Some(v) = u.description {
        p.description = v;
    }
    if let Some(v) = u.group_name {
        p.group_name = v;
    }
    if let Some(v) = opts {
        p.options = v;
    }
    if let Some(v) = u.display_order {
        p.display_order = v;
    }
    if let Some(v) = u.hidden {
        p.hidden = v;
    }
    if let Some(v) = u.form_field {
        p.form_field = v;
    }
    p.updated_ms = now;
    let body = property_json(p);
    drop(data);
    shared.touched();
    Ok(reply(StatusCode::OK, body))
}

pub async fn archive_property(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((t, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let mut data = ctx.portal.data.lock();
    let p = data
        .properties
        .get_mut(&t)
        .and_then(|m| m.get_mut(&name))
        .ok_or_else(|| property_missing(t, &name))?;
    if p.hubspot_defined {
        return Err(ApiError::validation(format!(
            "{name} is HubSpot-defined and cannot be archived"
        )));
    }
    p.archived = true;
    drop(data);
    shared.touched();
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub struct BatchProps {
    inputs: Vec<Value>,
}

pub async fn batch_properties(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((t, op)): Path<(String, String)>,
    Json(input): Json<BatchProps>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let now = shared.now_ms();
    let features = *ctx.portal.features.lock();
    let mut data = ctx.portal.data.lock();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    match op.as_str() {
        "create" => {
            for (i, v) in input.inputs.into_iter().enumerate() {
                let p: PropertyCreate = serde_json::from_value(v).map_err(|e| {
                    ApiError::validation(format!("Invalid input JSON: inputs[{i}]: {e}"))
                })?;
                let name = p.name.clone();
                let created = features
                    .check_property(t, p.has_unique_value)
                    .and_then(|()| create_property_in(&mut data, t, p, now));
                match created {
                    Ok(d) => results.push(property_json(&d)),
                    Err(e) => errors.push(e.standard_error(json!({ "name": [name] }))),
                }
            }
        }
        "read" => {
            for v in input.inputs {
                let name = v
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                match data.property(t, &name) {
                    Some(p) => results.push(property_json(p)),
                    None => errors
                        .push(property_missing(t, &name).standard_error(json!({ "name": [name] }))),
                }
            }
        }
        "archive" => {
            for v in input.inputs {
                let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
                if let Some(p) = data.properties.get_mut(&t).and_then(|m| m.get_mut(name)) {
                    if !p.hubspot_defined {
                        p.archived = true;
                    }
                }
            }
            drop(data);
            shared.touched();
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        other => {
            return Err(ApiError::not_found(format!(
                "unknown batch operation {other}"
            )))
        }
    }
    drop(data);
    shared.touched();
    let mut body = json!({ "status": "COMPLETE", "results": results, "startedAt": iso(now), "completedAt": iso(now) });
    let status = if errors.is_empty() {
        if op == "create" {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        }
    } else {
        body["numErrors"] = json!(errors.len());
        body["errors"] = Value::Array(errors);
        StatusCode::MULTI_STATUS
    };
    Ok(reply(status, body))
}

pub async fn list_groups(
    Extension(ctx): Extension<Ctx>,
    Path(t): Path<String>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let data = ctx.portal.data.lock();
    let results: Vec<Value> = data.groups[&t]
        .values()
        .filter(|g| !g.archived)
        .map(group_json)
        .collect();
    Ok(reply(StatusCode::OK, json!({ "results": results })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupIn {
    name: Option<String>,
    label: Option<String>,
    display_order: Option<i64>,
}

pub async fn create_group(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path(t): Path<String>,
    Json(g): Json<GroupIn>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let (Some(name), Some(label)) = (g.name, g.label) else {
        return Err(ApiError::validation(
            "a property group needs name and label",
        ));
    };
    if !valid_name(&name) {
        return Err(ApiError::validation(format!(
            "group name {name:?} is invalid: use lowercase letters, digits and underscores"
        )));
    }
    let mut data = ctx.portal.data.lock();
    let groups = data.groups.get_mut(&t).expect("seeded");
    if groups.get(&name).is_some_and(|g| !g.archived) {
        return Err(ApiError::conflict(format!(
            "Property group already exists: {name}"
        )));
    }
    let def = GroupDef {
        name: name.clone(),
        label,
        display_order: g.display_order.unwrap_or(-1),
        archived: false,
    };
    groups.insert(name, def.clone());
    drop(data);
    shared.touched();
    Ok(reply(StatusCode::CREATED, group_json(&def)))
}

pub async fn read_group(
    Extension(ctx): Extension<Ctx>,
    Path((t, g)): Path<(String, String)>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let data = ctx.portal.data.lock();
    let g = data.groups[&t]
        .get(&g)
        .filter(|x| !x.archived)
        .ok_or_else(|| ApiError::not_found(format!("Unable to find property group {g}")))?;
    Ok(reply(StatusCode::OK, group_json(g)))
}

pub async fn update_group(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((t, name)): Path<(String, String)>,
    Json(u): Json<GroupIn>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let mut data = ctx.portal.data.lock();
    let g = data
        .groups
        .get_mut(&t)
        .and_then(|m| m.get_mut(&name))
        .filter(|g| !g.archived)
        .ok_or_else(|| ApiError::not_found(format!("Unable to find property group {name}")))?;
    if let Some(l) = u.label {
        g.label = l;
    }
    if let Some(o) = u.display_order {
        g.display_order = o;
    }
    let body = group_json(g);
    drop(data);
    shared.touched();
    Ok(reply(StatusCode::OK, body))
}

pub async fn archive_group(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((t, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let t = object_type(&t)?;
    let mut data = ctx.portal.data.lock();
    if data.properties[&t]
        .values()
        .any(|p| p.group_name == name && !p.archived)
    {
        return Err(ApiError::validation(format!(
            "group {name} still has properties; move or archive them first"
        )));
    }
    if let Some(g) = data.groups.get_mut(&t).and_then(|m| m.get_mut(&name)) {
        g.archived = true;
    }
    drop(data);
    shared.touched();
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn stage_json(s: &Stage) -> Value {
    json!({
        "id": s.id, "label": s.label, "displayOrder": s.display_order, "metadata": s.metadata,
        "archived": s.archived, "createdAt": iso(s.created_ms), "updatedAt": iso(s.updated_ms),
        "writePermissions": "CRM_PERMISSIONS_ENFORCEMENT",
    })
}

fn pipeline_json(p: &Pipeline) -> Value {
    json!({
        "id": p.id, "label": p.label, "displayOrder": p.display_order, "archived": p.archived,
        "createdAt": iso(p.created_ms), "updatedAt": iso(p.updated_ms),
        "stages": p.stages.iter().filter(|s| !s.archived).map(stage_json).collect::<Vec<_>>(),
    })
}

fn pipelines_of(t: ObjectType) -> ApiResult<ObjectType> {
    if t == ObjectType::Deals {
        Ok(t)
    } else {
        Err(ApiError::validation(format!(
            "the sandbox keeps pipelines for deals only, not {}",
            t.name()
        )))
    }
}

fn pipeline_missing(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "Unable to find pipeline {id}; list pipelines with GET /crm/v3/pipelines/deals"
    ))
}

pub async fn list_pipelines(
    Extension(ctx): Extension<Ctx>,
    Path(t): Path<String>,
) -> ApiResult<Response> {
    let t = pipelines_of(object_type(&t)?)?;
    let data = ctx.portal.data.lock();
    let results: Vec<Value> = data.pipelines[&t]
        .iter()
        .filter(|p| !p.archived)
        .map(pipeline_json)
        .collect();
    Ok(reply(StatusCode::OK, json!({ "results": results })))
}

pub async fn read_pipeline(
    Extension(ctx): Extension<Ctx>,
    Path((t, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let t = pipelines_of(object_type(&t)?)?;
    let data = ctx.portal.data.lock();
    let p = data.pipelines[&t]
        .iter()
        .find(|p| p.id == id && !p.archived)
        .ok_or_else(|| pipeline_missing(&id))?;
    Ok(reply(StatusCode::OK, pipeline_json(p)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageIn {
    stage_id: Option<String>,
    label: Option<String>,
    display_order: Option<i64>,
    metadata: Option<BTreeMap<String, Value>>,
}

/// `fresh_id` is used when the caller names no stage id; it comes from the portal's id
/// counter, so generated ids never collide.
fn build_stage(
    s: StageIn,
    order: i64,
    now: i64,
    taken: &[String],
    fresh_id: u64,
) -> ApiResult<Stage> {
    let label = s
        .label
        .ok_or_else(|| ApiError::validation("every stage needs a label"))?;
    let metadata: BTreeMap<String, String> = s
        .metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                match v {
                    Value::String(s) => s,
                    o => o.to_string(),
                },
            )
        })
        .collect();
    match metadata.get("probability").map(|p| p.parse::<f64>()) {
        Some(Ok(p)) if (0.0..=1.0).contains(&p) => {}
        _ => {
            return Err(ApiError::validation(format!(
                "deal stage {label} needs metadata.probability between 0.0 and 1.0"
            )))
        }
    }
    let id = s.stage_id.unwrap_or_else(|| fresh_id.to_string());
    if taken.contains(&id) {
        return Err(ApiError::conflict(format!("stage id {id} is already used")));
    }
    Ok(Stage {
        id,
        label,
        display_order: s.display_order.unwrap_or(order),
        metadata,
        archived: false,
        created_ms: now,
        updated_ms: now,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineIn {
    pipeline_id: Option<String>,
    label: String,
    display_order: Option<i64>,
    #[serde(default)]
    stages: Vec<StageIn>,
}

pub async fn create_pipeline(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path(t): Path<String>,
    Json(p): Json<PipelineIn>,
) -> ApiResult<Response> {
    let t = pipelines_of(object_type(&t)?)?;
    let now = shared.now_ms();
    if p.stages.is_empty() {
        return Err(ApiError::validation("a pipeline needs at least one stage"));
    }
    let mut data = ctx.portal.data.lock();
    if data.pipelines[&t]
        .iter()
        .any(|x| x.label == p.label && !x.archived)
    {
        return Err(ApiError::conflict(format!(
            "A pipeline with label {} already exists",
            p.label
        )));
    }
    let id = p
        .pipeline_id
        .unwrap_or_else(|| format!("{}", data.alloc_id()));
    if data.pipelines[&t].iter().any(|x| x.id == id) {
        return Err(ApiError::conflict(format!(
            "pipeline id {id} is already used"
        )));
    }
    let mut stages: Vec<Stage> = Vec::new();
    for (i, s) in p.stages.into_iter().enumerate() {
        let taken: Vec<String> = data.pipelines[&t]
            .iter()
            .flat_map(|p| p.stages.iter().map(|s| s.id.clone()))
            .chain(stages.iter().map(|s| s.id.clone()))
            .collect();
        let fresh = data.alloc_id();
        stages.push(build_stage(s, i as i64, now, &taken, fresh)?);
    }
    let order = p.display_order.unwrap_or(data.pipelines[&t].len() as i64);
    let pipe = Pipeline {
        id,
        label: p.label,
        display_order: order,
        archived: false,
        created_ms: now,
        updated_ms: now,
        stages,
    };
    let body = pipeline_json(&pipe);
    data.pipelines.get_mut(&t).expect("seeded").push(pipe);
    drop(data);
    shared.touched();
    Ok(reply(StatusCode::CREATED, body))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelinePatch {
    label: Option<String>,
    display_order: Option<i64>,
    archived: Option<bool>,
}

pub async fn update_pipeline(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((t, id)): Path<(String, String)>,
    Json(u): Json<PipelinePatch>,
) -> ApiResult<Response> {
    let t = pipelines_of(object_type(&t)?)?;
    let now = shared.now_ms();
    let mut data = ctx.portal.data.lock();
    let p = data
        .pipelines
        .get_mut(&t)
        .and_then(|v| v.iter_mut().find(|p| p.id == id))
        .ok_or_else(|| pipeline_missing(&id))?;
    check_restore(p, u.archived)?;
    if let Some(l) = u.label {
        p.label = l;
    }
    if let Some(o) = u.display_order {
        p.display_order = o;
    }
    if u.archived == Some(false) {
        p.archived = false;
    }
    p.updated_ms = now;
    let body = pipeline_json(p);
    drop(data);
    shared.touched();
    Ok(reply(StatusCode::OK, body))
}

/// HubSpot's PATCH takes `archived` only to restore an archived pipeline (`archived: false`);
/// anything else with `archived` is a 400, so archiving goes through DELETE and its checks.
fn check_restore(p: &Pipeline, archived: Option<bool>) -> ApiResult<()> {
    let state = match archived {
        None => return Ok(()),
        Some(false) if p.archived => return Ok(()),
        Some(_) if p.archived => "already archived",
        Some(_) => "not archived; archive it with DELETE instead",
    };
    Err(ApiError::validation(format!(
        "archived is accepted only as false, to restore an archived pipeline; pipeline {} is {state}",
        p.id
    )))
}

pub async fn archive_pipeline(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((t, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let t = pipelines_of(object_type(&t)?)?;
    let mut data = ctx.portal.data.lock();
    let in_use = data
        .objects(t)
        .values()
        .any(|o| !o.is_archived() && o.get("pipeline").as_deref() == Some(id.as_str()));
    if in_use {
        return Err(ApiError::validation(format!(
            "pipeline {id} still has deals; move them first"
        )));
    }
    let p = data
        .pipelines
        .get_mut(&t)
        .and_then(|v| v.iter_mut().find(|p| p.id == id))
        .ok_or_else(|| pipeline_missing(&id))?;
    p.archived = true;
    drop(data);
    shared.touched();
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn list_stages(
    Extension(ctx): Extension<Ctx>,
    Path((t, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let t = pipelines_of(object_type(&t)?)?;
    let data = ctx.portal.data.lock();
    let p = data.pipelines[&t]
        .iter()
        .find(|p| p.id == id && !p.archived)
        .ok_or_else(|| pipeline_missing(&id))?;
    let results: Vec<Value> = p
        .stages
        .iter()
        .filter(|s| !s.archived)
        .map(stage_json)
        .collect();
    Ok(reply(StatusCode::OK, json!({ "results": results })))
}

pub async fn create_stage(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((t, id)): Path<(String, String)>,
    Json(s): Json<StageIn>,
) -> ApiResult<Response> {
    let t = pipelines_of(object_type(&t)?)?;
    let now = shared.now_ms();
    let mut data = ctx.portal.data.lock();
    let taken: Vec<String> = data.pipelines[&t]
        .iter()
        .flat_map(|p| p.stages.iter().map(|s| s.id.clone()))
        .collect();
    let fresh = data.alloc_id();
    let p = data
        .pipelines
        .get_mut(&t)
        .and_then(|v| v.iter_mut().find(|p| p.id == id && !p.archived))
        .ok_or_else(|| pipeline_missing(&id))?;
    let stage = build_stage(s, p.stages.len() as i64, now, &taken, fresh)?;
    let body = stage_json(&stage);
    p.stages.push(stage);
    p.updated_ms = now;
    drop(data);
    shared.touched();
    Ok(reply(StatusCode::CREATED, body))
}

pub async fn read_stage(
    Extension(ctx): Extension<Ctx>,
    Path((t, id, sid)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let t = pipelines_of(object_type(&t)?)?;
    let data = ctx.portal.data.lock();
    let p = data.pipelines[&t]
        .iter()
        .find(|p| p.id == id && !p.archived)
        .ok_or_else(|| pipeline_missing(&id))?;
    let s = p
        .stages
        .iter()
        .find(|s| s.id == sid && !s.archived)
        .ok_or_else(|| {
            ApiError::not_found(format!("Unable to find stage {sid} in pipeline {id}"))
        })?;
    Ok(reply(StatusCode::OK, stage_json(s)))
}

pub async fn update_stage(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path((t, id, sid)): Path<(String, String, String)>,
    Json(u): Json<StageIn>,
) -> ApiResult<Response> {
    let t = pipelines_of(object_type(&t)?)?;
    let now = shared.now_ms();
    let mut data = ctx.portal.data.lock();
    let p = data
        .pipelines
        .get_mut(&t)
        .and_then(|v| v.iter_mut().find(|p| p.id == id && !p.archived))
        .ok_or_else(|| pipeline_missing(&id))?;
    let s = p
        .stages
        .iter_mut()
        .find(|s| s.id == sid && !s.archived)
        .ok_or_else(|| {
            ApiError::not_found(format!("Unable to find stage {sid} in pipeline {id}"))
        })?;
    if let Some(l) = u.label {
        s.label = l;
    }
    if let Some(o) = u.display_order {
        s.display_order = o;
    }
    if let Some(m) = u.metadata {
        for (k, v) in m {
            s.metadata.insert(
                k,
                match v {
                    Value::String(s) => s,
                    o => o.to_string(),
                },
            );
        }
    }
    s.updated_ms = now;
    let body = stage_json(s);
    drop(data);
    shared.touched();
    Ok(reply(StatusCode::OK, body))
}

fn owner_json(o: &Owner) -> Value {
    json!({
        "id": o.id, "email": o.email, "firstName": o.first_name, "lastName": o.last_name,
        "userId": o.user_id, "userIdIncludingInactive": o.user_id, "type": "PERSON",
        "createdAt": iso(o.created_ms), "updatedAt": iso(o.created_ms), "archived": false, "teams": [],
    })
}

pub async fn list_owners(
    Extension(ctx): Extension<Ctx>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let q = Query::parse(q.as_deref());
    let limit = q.limit(100, 500)?;
    let after: usize = match q.get("after") {
        None => 0,
        Some(a) => a
            .parse()
            .map_err(|_| ApiError::validation(format!("after={a} is not a paging cursor")))?,
    };
    let email = q.get("email").map(str::to_lowercase);
    let data = ctx.portal.data.lock();
    let matching: Vec<&Owner> = data
        .owners
        .iter()
        .filter(|o| email.as_ref().is_none_or(|e| o.email.to_lowercase() == *e))
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(after)
        .take(limit)
        .map(|o| owner_json(o))
        .collect();
    let mut body = json!({ "results": page });
    if after + limit < matching.len() {
        let next = after + limit;
        body["paging"] =
            json!({ "next": { "after": next.to_string(), "link": format!("?after={next}") } });
    }
    Ok(reply(StatusCode::OK, body))
}

pub async fn read_owner(
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let q = Query::parse(q.as_deref());
    let by_user = q.get("idProperty") == Some("userId");
    let data = ctx.portal.data.lock();
    let o = data
        .owners
        .iter()
        .find(|o| {
            if by_user {
                o.user_id.to_string() == id
            } else {
                o.id == id
            }
        })
        .ok_or_else(|| ApiError::not_found(format!("Owner {id} not found")))?;
    Ok(reply(StatusCode::OK, owner_json(o)))
}
