//! Mutations of one portal's data with HubSpot's validation rules. Each mutation records the
//! changes it made as [`Change`]s so the caller can turn them into webhook events after
//! releasing the portal lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

use super::error::{invalid_properties, ApiError, ApiResult, PropertyProblem};
use super::model::*;

/// Longest value HubSpot stores in a string property (and in `hs_note_body`).
pub const MAX_VALUE_LEN: usize = 65_536;

/// A change made to a portal, the raw material of webhook events.
#[derive(Debug, Clone)]
pub enum Change {
    Created {
        otype: ObjectType,
        id: u64,
        at: i64,
    },
    Property {
        otype: ObjectType,
        id: u64,
        name: String,
        value: String,
        at: i64,
    },
    Archived {
        otype: ObjectType,
        id: u64,
        at: i64,
    },
    Restored {
        otype: ObjectType,
        id: u64,
        at: i64,
    },
    Association {
        from: ObjKey,
        to: ObjKey,
        type_id: i32,
        removed: bool,
        primary: bool,
        at: i64,
    },
}

fn prop(
    name: &str,
    label: &str,
    ptype: &str,
    field_type: &str,
    group: &str,
    options: &[&str],
) -> PropertyDef {
    PropertyDef {
        name: name.into(),
        label: label.into(),
        ptype: ptype.into(),
        field_type: field_type.into(),
        group_name: group.into(),
        description: String::new(),
        options: options
            .iter()
            .enumerate()
            .map(|(i, v)| OptionDef {
                label: v.replace('_', " ").to_lowercase(),
                value: (*v).into(),
                hidden: false,
                display_order: i as i64,
                description: String::new(),
            })
            .collect(),
        has_unique_value: false,
        hubspot_defined: true,
        read_only_value: false,
        display_order: -1,
        hidden: false,
        form_field: false,
        created_ms: 0,
        updated_ms: 0,
        archived: false,
    }
}

fn read_only(mut p: PropertyDef) -> PropertyDef {
    p.read_only_value = true;
    p
}

/// The HubSpot-defined properties every portal starts with.
fn seed_properties(t: ObjectType) -> Vec<PropertyDef> {
    let g = match t {
        ObjectType::Deals => "dealinformation",
        ObjectType::Contacts => "contactinformation",
        ObjectType::Companies => "companyinformation",
        ObjectType::Notes => "engagement",
        ObjectType::Tasks => "engagement",
        ObjectType::Quotes => "quoteinformation",
    };
    let mut v = vec![
        read_only(prop(
            "hs_object_id",
            "Record ID",
            "number",
            "number",
            g,
            &[],
        )),
        read_only(prop(
            "hs_lastmodifieddate",
            "Last Modified Date",
            "datetime",
            "date",
            g,
            &[],
        )),
        read_only(prop(
            "hs_createdate",
            "Create Date",
            "datetime",
            "date",
            g,
            &[],
        )),
        prop("hubspot_owner_id", "Owner", "enumeration", "select", g, &[]),
    ];
    match t {
        ObjectType::Deals => v.extend([
            read_only(prop(
                "createdate",
                "Create Date",
                "datetime",
                "date",
                g,
                &[],
            )),
            prop("dealname", "Deal Name", "string", "text", g, &[]),
            // The deal team beyond the owner ("Deal collaborator"), owner ids joined by `;`.
            prop(
                "hs_all_collaborator_owner_ids",
                "Deal Collaborator",
                "enumeration",
                "checkbox",
                g,
                &[],
            ),
            prop("amount", "Amount", "number", "number", g, &[]),
            prop("closedate", "Close Date", "datetime", "date", g, &[]),
            prop("pipeline", "Pipeline", "enumeration", "select", g, &[]),
            prop("dealstage", "Deal Stage", "enumeration", "radio", g, &[]),
            prop(
                "description",
                "Deal Description",
                "string",
                "textarea",
                g,
                &[],
            ),
            prop(
                "dealtype",
                "Deal Type",
                "enumeration",
                "radio",
                g,
                &["newbusiness", "existingbusiness"],
            ),
        ]),
        ObjectType::Contacts => v.extend([
            read_only(prop(
                "createdate",
                "Create Date",
                "datetime",
                "date",
                g,
                &[],
            )),
            read_only(prop(
                "lastmodifieddate",
                "Last Modified Date",
                "datetime",
                "date",
                g,
                &[],
            )),
            {
                let mut p = prop("email", "Email", "string", "text", g, &[]);
                p.has_unique_value = true;
                p
            },
            prop("firstname", "First Name", "string", "text", g, &[]),
            prop("lastname", "Last Name", "string", "text", g, &[]),
            prop("company", "Company Name", "string", "text", g, &[]),
            prop("phone", "Phone Number", "string", "phonenumber", g, &[]),
        ]),
        ObjectType::Companies => v.extend([
            read_only(prop(
                "createdate",
                "Create Date",
                "datetime",
                "date",
                g,
                &[],
            )),
            prop("name", "Company name", "string", "text", g, &[]),
            prop("domain", "Company Domain Name", "string", "text", g, &[]),
            prop("website", "Website URL", "string", "text", g, &[]),
            prop("phone", "Phone Number", "string", "phonenumber", g, &[]),
        ]),
        ObjectType::Notes => v.extend([
            prop("hs_note_body", "Note body", "string", "html", g, &[]),
            prop("hs_timestamp", "Activity date", "datetime", "date", g, &[]),
            prop(
                "hs_attachment_ids",
                "Attached file IDs",
                "string",
                "text",
                g,
                &[],
            ),
        ]),
        ObjectType::Tasks => v.extend([
            prop("hs_task_subject", "Task Title", "string", "text", g, &[]),
            prop("hs_task_body", "Notes", "string", "html", g, &[]),
            prop("hs_timestamp", "Due date", "datetime", "date", g, &[]),
            prop(
                "hs_task_status",
                "Task Status",
                "enumeration",
                "select",
                g,
                &[
                    "NOT_STARTED",
                    "IN_PROGRESS",
                    "WAITING",
                    "COMPLETED",
                    "DEFERRED",
                ],
            ),
            prop(
                "hs_task_priority",
                "Priority",
                "enumeration",
                "select",
                g,
                &["NONE", "LOW", "MEDIUM", "HIGH"],
            ),
            prop(
                "hs_task_type",
                "Task Type",
                "enumeration",
                "select",
                g,
                &["TODO", "CALL", "EMAIL"],
            ),
        ]),
        ObjectType::Quotes => v.extend([
            prop("hs_title", "Quote Name", "string", "text", g, &[]),
            prop(
                "hs_expiration_date",
                "Expiration Date",
                "datetime",
                "date",
                g,
                &[],
            ),
            prop(
                "hs_status",
                "Quote approval status",
                "enumeration",
                "select",
                g,
                &[
                    "DRAFT",
                    "APPROVAL_NOT_NEEDED",
                    "PENDING_APPROVAL",
                    "APPROVED",
                    "REJECTED",
                    "PENDING_BUYER_ACTION",
                ],
            ),
            prop("hs_quote_amount", "Amount", "number", "number", g, &[]),
            prop("hs_quote_link", "Quote link", "string", "text", g, &[]),
            prop("hs_currency", "Currency", "string", "text", g, &[]),
        ]),
    }
    v
}

fn stage(id: &str, label: &str, order: i64, probability: &str, closed: bool) -> Stage {
    let mut metadata = BTreeMap::new();
    metadata.insert("probability".into(), probability.into());
    metadata.insert("isClosed".into(), closed.to_string());
    Stage {
        id: id.into(),
        label: label.into(),
        display_order: order,
        metadata,
        archived: false,
        created_ms: 0,
        updated_ms: 0,
    }
}

impl PortalData {
    /// A fresh portal as HubSpot provisions one: default properties, groups, the default deal
    /// pipeline and a few owners. `ordinal` keeps ids distinct between portals, so an id used
    /// against the wrong portal is a 404, never a silent hit.
    pub fn seeded(name: &str, ordinal: u64, now: i64) -> PortalData {
        let mut d = PortalData {
            next_id: (ordinal + 1) * 10_000_000_000 + 1,
            objects: BTreeMap::new(),
            properties: BTreeMap::new(),
            groups: BTreeMap::new(),
            pipelines: BTreeMap::new(),
            owners: Vec::new(),
            files: BTreeMap::new(),
            assoc: HashMap::new(),
            unique: HashMap::new(),
            interned: HashMap::new(),
        };
        for t in ObjectType::ALL {
            d.objects.insert(t, BTreeMap::new());
            let mut props = BTreeMap::new();
            let mut groups = BTreeMap::new();
            for mut p in seed_properties(t) {
                p.created_ms = now;
                p.updated_ms = now;
                groups
                    .entry(p.group_name.clone())
                    .or_insert_with(|| GroupDef {
                        name: p.group_name.clone(),
                        label: p.group_name.clone(),
                        display_order: -1,
                        archived: false,
                    });
                props.insert(p.name.clone(), p);
            }
            d.properties.insert(t, props);
            d.groups.insert(t, groups);
        }
        let mut stages = vec![
            stage(
                "appointmentscheduled",
                "Appointment Scheduled",
                0,
                "0.2",
                false,
            ),
            stage("qualifiedtobuy", "Qualified To Buy", 1, "0.4", false),
            stage(
                "presentationscheduled",
                "Presentation Scheduled",
                2,
                "0.6",
                false,
            ),
            stage(
                "decisionmakerboughtin",
                "Decision Maker Bought-In",
                3,
                "0.8",
                false,
            ),
            stage("contractsent", "Contract Sent", 4, "0.9", false),
            stage("closedwon", "Closed Won", 5, "1.0", true),
            stage("closedlost", "Closed Lost", 6, "0.0", true),
        ];
        for s in &mut stages {
            s.created_ms = now;
            s.updated_ms = now;
        }
        d.pipelines.insert(
            ObjectType::Deals,
            vec![Pipeline {
                id: "default".into(),
                label: "Sales Pipeline".into(),
                display_order: 0,
                archived: false,
                created_ms: now,
                updated_ms: now,
                stages,
            }],
        );
        for (i, (first, last)) in [("Alex", "Rep"), ("Blair", "Seller"), ("Casey", "Manager")]
            .into_iter()
            .enumerate()
        {
            let i = i as u64;
            d.owners.push(Owner {
                id: ((ordinal + 1) * 1_000_000 + 100 + i).to_string(),
                email: format!(
                    "{}.{}@{}.example",
                    first.to_lowercase(),
                    last.to_lowercase(),
                    name
                ),
                first_name: first.into(),
                last_name: last.into(),
                user_id: ((ordinal + 1) * 1_000_000 + 500 + i) as i64,
                created_ms: now,
            });
        }
        d
    }

    /// Rebuilds derived indexes after loading from a state file.
    pub fn rebuild_indexes(&mut self) {
        self.unique.clear();
        let uniques: Vec<(ObjectType, String)> = self
            .properties
            .iter()
            .flat_map(|(t, ps)| {
                ps.values()
                    .filter(|p| p.has_unique_value)
                    .map(move |p| (*t, p.name.clone()))
            })
            .collect();
        for (t, name) in uniques {
            let mut idx = HashMap::new();
            for o in self.objects[&t].values().filter(|o| !o.is_archived()) {
                if let Some(v) = o.get(&name) {
                    idx.insert(v, o.id);
                }
            }
            self.unique.insert((t, name), idx);
        }
        let names: Vec<Arc<str>> = self
            .objects
            .values()
            .flat_map(|m| m.values().flat_map(|o| o.props.keys().cloned()))
            .collect();
        for n in names {
            self.interned.insert(n.to_string(), n);
        }
    }

    pub fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(a) = self.interned.get(name) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(name);
        self.interned.insert(name.to_owned(), a.clone());
        a
    }

    pub fn objects(&self, t: ObjectType) -> &BTreeMap<u64, Object> {
        &self.objects[&t]
    }

    /// A live (not archived) object, or HubSpot's 404.
    pub fn live(&self, t: ObjectType, id: u64) -> ApiResult<&Object> {
        self.objects[&t]
            .get(&id)
            .filter(|o| !o.is_archived())
            .ok_or_else(|| not_found(t, &id.to_string()))
    }

    pub fn property(&self, t: ObjectType, name: &str) -> Option<&PropertyDef> {
        self.properties[&t].get(name).filter(|p| !p.archived)
    }

    /// Resolves an id, or a value of the unique property `id_property`, to an object id.
    pub fn resolve(&self, t: ObjectType, id: &str, id_property: Option<&str>) -> ApiResult<u64> {
        match id_property {
            None | Some("hs_object_id") => id.trim().parse().map_err(|_| not_found(t, id)),
            Some(p) => {
                let def = self.property(t, p).ok_or_else(|| {
                    ApiError::validation(format!("Property \"{p}\" does not exist"))
                })?;
                if !def.has_unique_value {
                    return Err(ApiError::validation(format!(
                        "{p} is not a unique identifier property for {}; use a property with hasUniqueValue=true",
                        t.name()
                    )));
                }
                self.unique
                    .get(&(t, p.to_owned()))
                    .and_then(|m| m.get(id))
                    .copied()
                    .ok_or_else(|| not_found(t, id))
            }
        }
    }

    /// [`PortalData::resolve`] for an `archived=true` read: an archived record still holds its
    /// unique values (the live index has let them go), so a value names the most recently
    /// archived record holding it. (HubSpot's behaviour here is unconfirmed.)
    pub fn resolve_archived(
        &self,
        t: ObjectType,
        id: &str,
        id_property: Option<&str>,
    ) -> ApiResult<u64> {
        let Some(p) = id_property.filter(|p| *p != "hs_object_id") else {
            return self.resolve(t, id, id_property);
        };
        // Refuses a property that is not unique, as a live read does.
        if let Err(e) = self.resolve(t, id, Some(p)) {
            if e.status != axum::http::StatusCode::NOT_FOUND {
                return Err(e);
            }
        }
        self.objects[&t]
            .values()
            .filter(|o| o.is_archived() && o.get(p).as_deref() == Some(id))
            .max_by_key(|o| o.archived_ms)
            .map(|o| o.id)
            .ok_or_else(|| not_found(t, id))
    }

    /// Checks property values and turns them into the strings HubSpot stores.
    fn validate(
        &self,
        t: ObjectType,
        props: &serde_json::Map<String, Value>,
        existing: Option<&Object>,
    ) -> ApiResult<Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut out = Vec::with_capacity(props.len());
        for (name, raw) in props {
            let value = match raw {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    problems.push(PropertyProblem {
                        name: name.clone(),
                        code: "INVALID_PROPERTY_VALUE",
                        message: format!("{other} is not a valid value for property {name}: values must be strings"),
                    });
                    continue;
                }
            };
            let Some(def) = self.property(t, name) else {
                problems.push(PropertyProblem {
                    name: name.clone(),
                    code: "PROPERTY_DOESNT_EXIST",
                    message: format!("Property \"{name}\" does not exist"),
                });
                continue;
            };
            if def.read_only_value {
                problems.push(PropertyProblem {
                    name: name.clone(),
                    code: "READ_ONLY_VALUE",
                    message: format!(
                        "\"{name}\" is a read only property; its value cannot be set."
                    ),
                });
                continue;
            }
            match self.check_value(t, def, &value) {
                Ok(v) => out.push((name.clone(), v)),
                Err(p) => problems.push(p),
            }
        }
        // A stage must belong to the deal's pipeline (the new one if this write sets it).
        if t == ObjectType::Deals {
            let written = |k: &str| out.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let pipeline_id = written("pipeline")
                .filter(|v| !v.is_empty())
                .or_else(|| existing.and_then(|o| o.get("pipeline")))
                .unwrap_or_else(|| "default".to_owned());
            let stage = written("dealstage");
            match self.pipelines[&ObjectType::Deals]
                .iter()
                .find(|p| p.id == pipeline_id && !p.archived)
            {
                None => problems.push(PropertyProblem {
                    name: "pipeline".into(),
                    code: "INVALID_OPTION",
                    message: format!(
                        "{pipeline_id} was not one of the allowed options: [{}]",
                        self.pipelines[&ObjectType::Deals]
                            .iter()
                            .map(|p| p.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }),
                Some(p) => {
                    let check = stage.or_else(|| {
                        // Moving a deal to another pipeline keeps its stage only if it fits.
                        written("pipeline").and(existing.and_then(|o| o.get("dealstage")))
                    });
                    if let Some(s) = check.filter(|s| !s.is_empty()) {
                        if !p.stages.iter().any(|st| st.id == s && !st.archived) {
                            problems.push(PropertyProblem {
                                name: "dealstage".into(),
                                code: "INVALID_OPTION",
                                message: format!(
                                    "{s} was not one of the allowed options: [{}] (stages of pipeline {})",
                                    p.stages.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", "),
                                    p.id
                                ),
                            });
                        }
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(invalid_properties(problems))
        }
    }

    fn check_value(
        &self,
        t: ObjectType,
        def: &PropertyDef,
        value: &str,
    ) -> Result<String, PropertyProblem> {
        let bad = |code: &'static str, message: String| PropertyProblem {
            name: def.name.clone(),
            code,
            message,
        };
        if value.is_empty() {
            return Ok(String::new());
        }
        if value.chars().count() > MAX_VALUE_LEN {
            return Err(bad(
                "INVALID_PROPERTY_VALUE",
                format!(
                    "{} is longer than the maximum of {MAX_VALUE_LEN} characters",
                    def.name
                ),
            ));
        }
        match (def.ptype.as_str(), def.name.as_str()) {
            (_, "hubspot_owner_id") => {
                if self.owners.iter().any(|o| o.id == value) {
                    Ok(value.into())
                } else {
                    Err(bad(
                        "INVALID_OWNER_ID",
                        format!("{value} is not a valid owner id"),
                    ))
                }
            }
            (_, "hs_all_collaborator_owner_ids") => {
                for part in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                    if !self.owners.iter().any(|o| o.id == part) {
                        return Err(bad(
                            "INVALID_OWNER_ID",
                            format!("{part} is not a valid owner id"),
                        ));
                    }
                }
                Ok(value.into())
            }
            (_, "pipeline" | "dealstage") if t == ObjectType::Deals => Ok(value.into()),
            (_, "hs_attachment_ids") => {
                for part in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                    let ok = part
                        .parse::<u64>()
                        .ok()
                        .and_then(|id| self.files.get(&id))
                        .is_some_and(|f| f.archived_ms.is_none());
                    if !ok {
                        return Err(bad(
                            "INVALID_PROPERTY_VALUE",
                            format!("{part} is not the id of an existing file (hs_attachment_ids)"),
                        ));
                    }
                }
                Ok(value.into())
            }
            ("number", _) => value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|_| value.trim().to_owned())
                .ok_or_else(|| bad("INVALID_LONG", format!("{value} was not a valid number"))),
            ("date" | "datetime", _) => parse_time_ms(value)
                .map(|ms| {
                    if def.ptype == "datetime" {
                        iso(ms)
                    } else {
                        value.trim().to_owned()
                    }
                })
                .ok_or_else(|| {
                    bad(
                        "INVALID_DATE",
                        format!("{value} is not a valid date: use epoch milliseconds or ISO 8601"),
                    )
                }),
            ("bool", _) => match value.to_ascii_lowercase().as_str() {
                "true" | "false" => Ok(value.to_ascii_lowercase()),
                _ => Err(bad(
                    "INVALID_BOOLEAN",
                    format!("{value} is not a valid boolean"),
                )),
            },
            ("enumeration", _) if !def.options.is_empty() => {
                let allowed = || {
                    def.options
                        .iter()
                        .map(|o| o.value.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let parts: Vec<&str> = if def.field_type == "checkbox" {
                    value.split(';').filter(|p| !p.is_empty()).collect()
                } else {
                    vec![value]
                };
                for p in parts {
                    if !def.options.iter().any(|o| o.value == p) {
                        return Err(bad(
                            "INVALID_OPTION",
                            format!("{p} was not one of the allowed options: [{}]", allowed()),
                        ));
                    }
                }
                Ok(value.into())
            }
            _ => Ok(value.into()),
        }
    }

    /// Refuses a value that another live object of the type already holds in a unique property.
    fn check_unique(
        &self,
        t: ObjectType,
        id: Option<u64>,
        values: &[(String, String)],
    ) -> ApiResult<()> {
        for (name, value) in values {
            if value.is_empty() {
                continue;
            }
            if let Some(other) = self
                .unique
                .get(&(t, name.clone()))
                .and_then(|m| m.get(value))
                .filter(|other| Some(**other) != id)
            {
                let msg = if t == ObjectType::Contacts && name == "email" {
                    format!("Contact already exists. Existing ID: {other}")
                } else {
                    format!(
                        "A {} with {name}={value} already exists. Existing ID: {other}",
                        t.singular()
                    )
                };
                return Err(ApiError::conflict(msg));
            }
        }
        Ok(())
    }

    /// Validates a create without applying it (batch create checks all inputs first).
    pub fn check_create(
        &self,
        t: ObjectType,
        props: &serde_json::Map<String, Value>,
    ) -> ApiResult<Vec<(String, String)>> {
        let values = self.validate(t, props, None)?;
        if matches!(t, ObjectType::Notes | ObjectType::Tasks)
            && !values
                .iter()
                .any(|(n, v)| n == "hs_timestamp" && !v.is_empty())
        {
            return Err(invalid_properties(vec![PropertyProblem {
                name: "hs_timestamp".into(),
                code: "REQUIRED_PROPERTY",
                message: format!("hs_timestamp is required when creating {}", t.name()),
            }]));
        }
        self.check_unique(t, None, &values)?;
        Ok(values)
    }

    /// Creates an object with validated values. Returns its id.
    pub fn create(
        &mut self,
        t: ObjectType,
        props: &serde_json::Map<String, Value>,
        source: Source,
        now: i64,
        changes: &mut Vec<Change>,
    ) -> ApiResult<u64> {
        let values = self.check_create(t, props)?;
        let id = self.alloc_id();
        let mut obj = Object {
            id,
            created_ms: now,
            updated_ms: now,
            archived_ms: None,
            props: BTreeMap::new(),
        };
        if t == ObjectType::Deals && !values.iter().any(|(n, _)| n == "pipeline") {
            // HubSpot puts a deal without a pipeline into the default one.
            obj.props.insert(
                self.intern("pipeline"),
                vec![Hist {
                    value: "default".into(),
                    ts: now,
                    source,
                }],
            );
        }
        changes.push(Change::Created {
            otype: t,
            id,
            at: now,
        });
        for (name, value) in values {
            if value.is_empty() {
                continue;
            }
            self.index_unique(t, &name, None, Some(&value), id);
            let key = self.intern(&name);
            obj.props.insert(
                key,
                vec![Hist {
                    value,
                    ts: now,
                    source,
                }],
            );
        }
        self.objects
            .get_mut(&t)
            .expect("every type is seeded")
            .insert(id, obj);
        Ok(id)
    }

    fn index_unique(
        &mut self,
        t: ObjectType,
        name: &str,
        old: Option<&str>,
        new: Option<&str>,
        id: u64,
    ) {
        if let Some(idx) = self.unique.get_mut(&(t, name.to_owned())) {
            if let Some(o) = old {
                idx.remove(o);
            }
            if let Some(n) = new.filter(|n| !n.is_empty()) {
                idx.insert(n.to_owned(), id);
            }
        }
    }

    /// Validates an update without applying it.
    pub fn check_update(
        &self,
        t: ObjectType,
        id: u64,
        props: &serde_json::Map<String, Value>,
    ) -> ApiResult<Vec<(String, String)>> {
        let obj = self.live(t, id)?;
        let values = self.validate(t, props, Some(obj))?;
        self.check_unique(t, Some(id), &values)?;
        Ok(values)
    }

    /// Updates an object. Values equal to the current ones are not written again, so a no-op
    /// PATCH leaves `hs_lastmodifieddate` and history alone and emits no event.
    pub fn update(
        &mut self,
        t: ObjectType,
        id: u64,
        props: &serde_json::Map<String, Value>,
        source: Source,
        now: i64,
        changes: &mut Vec<Change>,
    ) -> ApiResult<()> {
        let values = self.check_update(t, id, props)?;
        let mut changed = Vec::new();
        {
            let obj = self.live(t, id)?;
            for (name, value) in values {
                let current = obj.stored_at(&name, i64::MAX).unwrap_or("");
                if current != value {
                    changed.push((name, current.to_owned(), value));
                }
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        for (name, old, _) in &changed {
            let new = changed
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, _, v)| v.as_str());
            self.index_unique(t, name, Some(old), new, id);
        }
        let keys: Vec<Arc<str>> = changed.iter().map(|(n, _, _)| self.intern(n)).collect();
        let obj = self
            .objects
            .get_mut(&t)
            .and_then(|m| m.get_mut(&id))
            .expect("checked live above");
        obj.updated_ms = now;
        for (key, (name, _, value)) in keys.into_iter().zip(changed) {
            obj.props.entry(key).or_default().push(Hist {
                value: value.clone(),
                ts: now,
                source,
            });
            changes.push(Change::Property {
                otype: t,
                id,
                name,
                value,
                at: now,
            });
        }
        Ok(())
    }

    /// Moves an object to the recycle bin and drops its associations. Archiving an archived or
    /// unknown object is a no-op, as HubSpot's DELETE is.
    pub fn archive(&mut self, t: ObjectType, id: u64, now: i64, changes: &mut Vec<Change>) {
        let Some(obj) = self.objects.get_mut(&t).and_then(|m| m.get_mut(&id)) else {
            return;
        };
        if obj.archived_ms.is_some() {
            return;
        }
        obj.archived_ms = Some(now);
        let uniques: Vec<(String, String)> = obj
            .props
            .keys()
            .filter_map(|k| obj.get(k).map(|v| (k.to_string(), v)))
            .collect();
        for (name, value) in uniques {
            self.index_unique(t, &name, Some(&value), None, id);
        }
        changes.push(Change::Archived {
            otype: t,
            id,
            at: now,
        });
        if let Some(edges) = self.assoc.remove(&(t, id)) {
            for (to, types) in edges {
                if let Some(back) = self.assoc.get_mut(&to) {
                    back.remove(&(t, id));
                }
                for (_, type_id) in types {
                    changes.push(Change::Association {
                        from: (t, id),
                        to,
                        type_id,
                        removed: true,
                        primary: is_primary(t, to.0, type_id),
                        at: now,
                    });
                }
            }
        }
    }

    /// Brings an archived object back (HubSpot: a UI restore). Associations stay dropped.
    pub fn restore(
        &mut self,
        t: ObjectType,
        id: u64,
        now: i64,
        changes: &mut Vec<Change>,
    ) -> ApiResult<()> {
        let obj = self
            .objects
            .get_mut(&t)
            .and_then(|m| m.get_mut(&id))
            .ok_or_else(|| not_found(t, &id.to_string()))?;
        if obj.archived_ms.is_none() {
            return Ok(());
        }
        let values: Vec<(String, String)> = obj
            .props
            .keys()
            .filter_map(|k| obj.get(k).map(|v| (k.to_string(), v)))
            .collect();
        for (name, value) in &values {
            if let Some(other) = self
                .unique
                .get(&(t, name.clone()))
                .and_then(|m| m.get(value))
            {
                return Err(ApiError::conflict(format!(
                    "cannot restore {} {id}: {name}={value} is now used by {other}",
                    t.singular()
                )));
            }
        }
        let obj = self
            .objects
            .get_mut(&t)
            .and_then(|m| m.get_mut(&id))
            .expect("found above");
        obj.archived_ms = None;
        obj.updated_ms = now;
        for (name, value) in values {
            self.index_unique(t, &name, None, Some(&value), id);
        }
        changes.push(Change::Restored {
            otype: t,
            id,
            at: now,
        });
        Ok(())
    }

    /// Links two live objects with the given types (both directions are stored).
    pub fn associate(
        &mut self,
        from: ObjKey,
        to: ObjKey,
        types: &[(AssocCategory, i32)],
        now: i64,
        changes: &mut Vec<Change>,
    ) -> ApiResult<()> {
        self.live(from.0, from.1)?;
        self.live(to.0, to.1)?;
        if from == to {
            // A company cannot be its own parent; the one pair of a type with itself.
            return Err(ApiError::validation(format!(
                "{} {} cannot be associated with itself",
                from.0.singular(),
                from.1
            )));
        }
        let mut pairs = Vec::new();
        for (cat, type_id) in types {
            let def = match cat {
                AssocCategory::HubspotDefined => assoc_def(from.0, to.0, *type_id),
                _ => None,
            }
            .ok_or_else(|| {
                ApiError::validation(format!(
                    "{} {type_id} is not a valid association type between {} and {}",
                    cat.as_str(),
                    from.0.name(),
                    to.0.name()
                ))
                .with_sub_category("crm.associations.INVALID_ASSOCIATION_TYPE")
            })?;
            pairs.push((*cat, def.type_id, def.inverse));
        }
        for (cat, type_id, inverse) in pairs {
            let fresh = self
                .assoc
                .entry(from)
                .or_default()
                .entry(to)
                .or_default()
                .insert((cat, type_id));
            self.assoc
                .entry(to)
                .or_default()
                .entry(from)
                .or_default()
                .insert((cat, inverse));
            if fresh {
                changes.push(Change::Association {
                    from,
                    to,
                    type_id,
                    removed: false,
                    primary: is_primary(from.0, to.0, type_id),
                    at: now,
                });
            }
        }
        Ok(())
    }

    /// Removes every association type between two objects.
    pub fn unassociate(&mut self, from: ObjKey, to: ObjKey, now: i64, changes: &mut Vec<Change>) {
        let removed = self
            .assoc
            .get_mut(&from)
            .and_then(|m| m.remove(&to))
            .unwrap_or_default();
        if let Some(back) = self.assoc.get_mut(&to) {
            back.remove(&from);
        }
        for (_, type_id) in removed {
            changes.push(Change::Association {
                from,
                to,
                type_id,
                removed: true,
                primary: is_primary(from.0, to.0, type_id),
                at: now,
            });
        }
    }

    /// Associated objects of one type, by id, with their types.
    pub fn associated(
        &self,
        from: ObjKey,
        to_type: ObjectType,
    ) -> Vec<(u64, Vec<(AssocCategory, i32)>)> {
        self.assoc
            .get(&from)
            .map(|m| {
                m.iter()
                    .filter(|((t, _), _)| *t == to_type)
                    .map(|((_, id), types)| (*id, types.iter().copied().collect()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn is_primary(from: ObjectType, to: ObjectType, type_id: i32) -> bool {
    assoc_def(from, to, type_id).is_some_and(|d| d.label == Some("Primary"))
}

pub fn not_found(t: ObjectType, id: &str) -> ApiError {
    ApiError::not_found(format!(
        "Object not found.  objectId are usually numeric. ({} {id})",
        t.singular()
    ))
    .with_context(serde_json::json!({ "id": [id] }))
}
