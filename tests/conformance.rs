//! Conformance of the sandbox's answers with HubSpot's own published OpenAPI 3.0 specs, read
//! from the repository's reduced extract of them (`fixtures/hubspot-openapi/*.json`, written by
//! `scripts/extract-openapi.py`; its README.md names the source snapshot), or from the
//! directory `HUBSPOT_OPENAPI_DIR` names (the full upstream files work too).
//!
//! One test starts a recording sandbox, drives a broad scenario through every endpoint group the
//! sandbox serves (CRM objects of all six types, batch calls with and without partial failure,
//! search, associations v4 and their labels, properties and groups, pipelines and stages,
//! owners, files, and error answers: 400, 401, 404, 409, 429, 503), then validates every
//! recorded JSON answer against the response schema the specs document for its operation and
//! status. A second test feeds the checker broken answers, so it cannot pass by checking nothing.
//!
//! How an answer is checked:
//! * the operation is found by method and path template; CRM object paths go to their type's
//!   spec (`deals` -> `crm-deals-v3.json`, which spells the type `0-3`; tasks, which have no
//!   spec of their own, -> `crm-objects-v3.json` with `{objectType}`), every other path to the
//!   spec that documents it; the most literal template wins (`…/batch/read` over `…/{id}`);
//! * the schema is the one documented for the exact status, or `default` for an error status;
//!   a success status the spec does not document is a mismatch, as is a JSON body where the
//!   spec documents none;
//! * `$ref`s are inlined from the same spec file (a cycle becomes a local `definitions` ref),
//!   OpenAPI-only keywords (`example`, `discriminator`, `xml`, `externalDocs`, …) are dropped,
//!   `nullable` becomes a `null` type, and the `int32`/`int64` formats become numeric ranges;
//! * validation uses JSON Schema draft 4 (what OpenAPI 3.0 schemas are based on) with format
//!   checks on, `uuid` included (HubSpot's `correlationId`).
//!
//! The only relaxation is one known deviation of HubSpot's real API from its own specs (see
//! [`allow_known_deviations`]). Every other mismatch is a sandbox bug, and the test fails
//! listing each one with method, path, status and the schema rule broken. JSON answers on a
//! path no spec documents fail the test too, except the aliases listed in [`ALIASES`].

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use common::{Answer, Portal};
use dealsync::sandbox::{Recorded, SandboxConfig};
use jsonschema::{Draft, Validator};
use reqwest::Method;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------------
// The specs
// ---------------------------------------------------------------------------------------------

/// Where HubSpot's specs live: the extract in the repository, so a fresh clone tests alone
/// (overridable with `HUBSPOT_OPENAPI_DIR`).
fn spec_dir() -> PathBuf {
    std::env::var_os("HUBSPOT_OPENAPI_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hubspot-openapi"))
}

/// CRM object types: the names, singular names and type ids a path may use, the spec file
/// that documents the type, and how that spec spells the type in its paths (`None`: a
/// `{objectType}` parameter, which matches any spelling).
const OBJECT_SPECS: [(&[&str], &str, Option<&str>); 6] = [
    (&["deals", "deal", "0-3"], "crm-deals-v3.json", Some("0-3")),
    (
        &["contacts", "contact", "0-1"],
        "crm-contacts-v3.json",
        Some("contacts"),
    ),
    (
        &["companies", "company", "0-2"],
        "crm-companies-v3.json",
        Some("companies"),
    ),
    (
        &["notes", "note", "0-46"],
        "crm-notes-v3.json",
        Some("notes"),
    ),
    (
        &["quotes", "quote", "0-14"],
        "crm-quotes-v3.json",
        Some("quotes"),
    ),
    (&["tasks", "task", "0-27"], "crm-objects-v3.json", None),
];

/// The same object types in HubSpot's date-versioned specs, whose paths all take an
/// `{objectType}` parameter.
const DATED_OBJECT_SPECS: [(&[&str], &str, Option<&str>); 6] = [
    (&["deals", "deal", "0-3"], "crm-deals.json", None),
    (&["contacts", "contact", "0-1"], "crm-contacts.json", None),
    (&["companies", "company", "0-2"], "crm-companies.json", None),
    (&["notes", "note", "0-46"], "crm-notes.json", None),
    (&["quotes", "quote", "0-14"], "crm-quotes.json", None),
    (&["tasks", "task", "0-27"], "crm-tasks.json", None),
];

/// Which of HubSpot's API generations a run speaks and is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// v3/v4 paths against `fixtures/hubspot-openapi/*.json`.
    Legacy,
    /// 2026-09 paths (2026-03 where 2026-09 lacks an endpoint) against
    /// `fixtures/hubspot-openapi/2026-09/*.json`.
    Dated,
}

impl Dialect {
    fn object_specs(
        self,
    ) -> &'static [(&'static [&'static str], &'static str, Option<&'static str>); 6] {
        match self {
            Dialect::Legacy => &OBJECT_SPECS,
            Dialect::Dated => &DATED_OBJECT_SPECS,
        }
    }

    /// Whether `segs` (a split path) is a CRM object path whose spec is its type's own file.
    fn object_segment(self, segs: &[String]) -> Option<usize> {
        let is = |prefix: &[&str]| segs.len() >= 5 && segs[1..4] == *prefix;
        match self {
            Dialect::Legacy => is(&["crm", "v3", "objects"]).then_some(4),
            // Per-record association paths sit under `objects` but are documented in the
            // associations specs.
            Dialect::Dated => ((is(&["crm", "objects", "2026-09"])
                || is(&["crm", "objects", "2026-03"]))
                && !segs.iter().any(|s| s == "associations"))
            .then_some(4),
        }
    }

    /// The spec files a run is checked against: `(directory, only these files or all)`.
    fn spec_sources(self) -> Vec<(PathBuf, Option<&'static str>)> {
        match self {
            Dialect::Legacy => vec![(spec_dir(), None)],
            // The signed URL a file answer gives leads to the sandbox's v3 download path in
            // either dialect; only the legacy files spec documents it.
            Dialect::Dated => vec![
                (spec_dir().join("2026-09"), None),
                (spec_dir(), Some("files-v3.json")),
            ],
        }
    }

    /// The status a run expects where the scenario (written for v3/v4) expects `status`: the
    /// dated specs document partial batch failures in the success status (201 for object
    /// creates, 200 elsewhere) and association and property batch creates as 200.
    fn status(self, path: &str, status: u16) -> u16 {
        let object_create = path.starts_with("/crm/objects/") && path.ends_with("/batch/create");
        match (self, status) {
            (Dialect::Legacy, s) => s,
            (Dialect::Dated, 207) if object_create => 201,
            (Dialect::Dated, 207) => 200,
            (Dialect::Dated, 201) if path.ends_with("/batch/create") && !object_create => 200,
            (_, s) => s,
        }
    }

    /// The path a run calls for a scenario path written in v3/v4 form.
    fn path(self, path: &str) -> String {
        if self == Dialect::Legacy {
            return path.to_owned();
        }
        let (bare, query) = match path.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (path, None),
        };
        let segs: Vec<&str> = bare.split('/').collect();
        // The per-record association listing exists at 2026-03 only.
        let listing = segs.len() == 8 && segs[1..3] == ["crm", "v4"] && segs[6] == "associations";
        let rules: [(&str, String); 8] = [
            (
                "/crm/v4/objects/",
                format!(
                    "/crm/objects/{}/",
                    if listing { "2026-03" } else { "2026-09" }
                ),
            ),
            ("/crm/v3/objects/", "/crm/objects/2026-09/".into()),
            ("/crm/v4/associations/", "/crm/associations/2026-09/".into()),
            ("/crm/associations/v4/", "/crm/associations/2026-09/".into()),
            ("/crm/v3/properties/", "/crm/properties/2026-09/".into()),
            ("/crm/v3/pipelines/", "/crm/pipelines/2026-09/".into()),
            ("/crm/v3/owners", "/crm/owners/2026-09".into()),
            ("/files/v3/files", "/files/2026-03/files".into()),
        ];
        let mut out = bare.to_owned();
        if !bare.ends_with("/download") {
            if let Some((from, to)) = rules.iter().find(|(from, _)| bare.starts_with(from)) {
                out = format!("{to}{}", &bare[from.len()..]);
            }
        }
        match query {
            Some(q) => format!("{out}?{q}"),
            None => out,
        }
    }
}

/// Paths the sandbox serves that the specs do not list, each with the documented operation
/// whose answer it gives (so its answers are still validated) and why it exists.
///
/// * `GET /crm/v4/associations/{from}/{to}/labels`: the spelling of the association labels
///   call used by HubSpot's associations v4 guide, which the sandbox also serves (gate.rs);
///   the specs publish the call only as
///   `GET /crm/associations/v4/{fromObjectType}/{toObjectType}/labels`
///   (crm-associations-schema-v4.json), and the sandbox gives both paths the same answer.
const ALIASES: [(&str, &str, &str); 1] = [(
    "GET",
    "/crm/v4/associations/{}/{}/labels",
    "/crm/associations/v4/{}/{}/labels",
)];

struct Op {
    file: usize,
    method: String,
    template: String,
    segs: Vec<String>,
}

impl Op {
    fn literal_segments(&self) -> usize {
        self.segs.iter().filter(|s| !is_param(s)).count()
    }

    fn matches(&self, method: &str, segs: &[String]) -> bool {
        self.method.eq_ignore_ascii_case(method)
            && self.segs.len() == segs.len()
            && self
                .segs
                .iter()
                .zip(segs)
                .all(|(t, s)| is_param(t) || t == s)
    }
}

fn is_param(seg: &str) -> bool {
    seg.starts_with('{') && seg.ends_with('}')
}

fn split(path: &str) -> Vec<String> {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    path.split('/').map(str::to_owned).collect()
}

struct Specs {
    dialect: Dialect,
    /// (file name, parsed spec)
    files: Vec<(String, Value)>,
    ops: Vec<Op>,
}

impl Specs {
    fn load(dialect: Dialect) -> Specs {
        let mut specs = Specs {
            dialect,
            files: Vec::new(),
            ops: Vec::new(),
        };
        for (dir, only) in dialect.spec_sources() {
            specs.load_dir(&dir, only);
        }
        for (_, file, _) in dialect.object_specs() {
            assert!(
                specs.files.iter().any(|(n, _)| n == file),
                "{file} is missing from {}",
                spec_dir().display()
            );
        }
        specs
    }

    fn load_dir(&mut self, dir: &Path, only: Option<&str>) {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| {
                panic!(
                    "cannot read HubSpot's OpenAPI specs in {}: {e}",
                    dir.display()
                )
            })
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") && only.is_none_or(|o| o == n))
            .collect();
        names.sort();
        let (files, ops) = (&mut self.files, &mut self.ops);
        for name in names {
            let text =
                std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            let doc: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
            let file = files.len();
            for (template, item) in doc["paths"]
                .as_object()
                .unwrap_or_else(|| panic!("{name} has no paths"))
            {
                for method in ["get", "put", "post", "patch", "delete"] {
                    if item.get(method).is_some() {
                        ops.push(Op {
                            file,
                            method: method.to_uppercase(),
                            template: template.clone(),
                            segs: split(template),
                        });
                    }
                }
            }
            files.push((name, doc));
        }
    }

    fn file_index(&self, name: &str) -> usize {
        self.files
            .iter()
            .position(|(n, _)| n == name)
            .expect("spec file loaded")
    }

    /// The documented operation for a request, or why there is none.
    fn find(&self, method: &str, path: &str) -> Result<&Op, String> {
        let mut segs = split(path);
        let object_file = if let Some(i) = self.dialect.object_segment(&segs) {
            let seg = segs[i].to_ascii_lowercase();
            let (_, file, spelled) = self
                .dialect
                .object_specs()
                .iter()
                .find(|(names, _, _)| names.contains(&seg.as_str()))
                .ok_or_else(|| format!("object type {} has no spec", segs[i]))?;
            if let Some(s) = spelled {
                segs[i] = (*s).to_owned();
            }
            Some(self.file_index(file))
        } else {
            None
        };
        let object_files: Vec<usize> = self
            .dialect
            .object_specs()
            .iter()
            .map(|(_, f, _)| self.file_index(f))
            .collect();
        let mut best: Vec<&Op> = Vec::new();
        for op in &self.ops {
            let allowed = match object_file {
                Some(f) => op.file == f,
                None => !object_files.contains(&op.file),
            };
            if !allowed || !op.matches(method, &segs) {
                continue;
            }
            match best.first().map(|b| b.literal_segments()) {
                Some(n) if n > op.literal_segments() => {}
                Some(n) if n == op.literal_segments() => best.push(op),
                _ => best = vec![op],
            }
        }
        match best.as_slice() {
            [op] => Ok(op),
            [] => Err("no operation in the specs has this method and path".into()),
            many => Err(format!(
                "ambiguous: {}",
                many.iter()
                    .map(|o| format!("{} {}", self.files[o.file].0, o.template))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// The path of the documented twin of an aliased path, if `path` is one.
fn alias_target(method: &str, path: &str) -> Option<String> {
    let segs = split(path);
    ALIASES.iter().find_map(|(m, alias, target)| {
        let pattern = split(alias);
        let fits = m.eq_ignore_ascii_case(method)
            && pattern.len() == segs.len()
            && pattern.iter().zip(&segs).all(|(p, s)| p == "{}" || p == s);
        fits.then(|| {
            let mut params = pattern
                .iter()
                .zip(&segs)
                .filter(|(p, _)| *p == "{}")
                .map(|(_, s)| s.as_str());
            split(target)
                .iter()
                .map(|t| {
                    if t == "{}" {
                        params.next().unwrap_or_default()
                    } else {
                        t.as_str()
                    }
                })
                .collect::<Vec<_>>()
                .join("/")
        })
    })
}

/// Resolves `#/components/<kind>/<name>` within one spec.
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local $refs are expected, got {reference}"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("dangling $ref {reference}"))
}

/// The response schema documented for `status`: `Ok(None)` when the spec documents no body,
/// `Err` when it does not document the status at all. Also returns the status key used.
fn response_schema(doc: &Value, op: &Op, status: u16) -> Result<(String, Option<Value>), String> {
    let responses = &doc["paths"][&op.template][op.method.to_lowercase()]["responses"];
    let exact = status.to_string();
    let key = if responses.get(&exact).is_some() {
        exact
    } else if status >= 400 && responses.get("default").is_some() {
        "default".to_owned()
    } else {
        let documented: Vec<&String> = responses
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        return Err(format!(
            "status {status} is not documented for this operation (documented: {documented:?})"
        ));
    };
    let mut resp = &responses[&key];
    while let Some(r) = resp.get("$ref").and_then(Value::as_str) {
        resp = resolve(doc, r);
    }
    let Some(content) = resp.get("content").and_then(Value::as_object) else {
        return Ok((key, None));
    };
    let media = ["application/json", "*/*"]
        .into_iter()
        .find_map(|m| content.get(m))
        .or_else(|| {
            content
                .iter()
                .find(|(k, _)| k.contains("json"))
                .map(|(_, v)| v)
        });
    Ok((key, media.and_then(|m| m.get("schema")).cloned()))
}

// ---------------------------------------------------------------------------------------------
// OpenAPI schema -> JSON Schema (draft 4)
// ---------------------------------------------------------------------------------------------

/// HubSpot's real API deviates from its own specs in one way the sandbox copies on purpose,
/// and only that is allowed here:
///
/// * a property that is asked for (`properties=…`, or a default property) but has no value is
///   answered as `null` in `properties` — the specs type every value as a string. The same
///   holds for the `value` of a `propertiesWithHistory` entry.
///
/// The relaxation applies only to CRM record schemas (those with `id`, `createdAt` and
/// `properties` fields) and only to those two maps; nothing else is loosened.
fn allow_known_deviations(schemas: &Map<String, Value>) -> Map<String, Value> {
    let mut out = schemas.clone();
    let history_entry = schemas.get("ValueWithTimestamp").cloned().map(|mut v| {
        if v["properties"]["value"]["type"] == "string" {
            v["properties"]["value"]["type"] = json!(["string", "null"]);
        }
        v
    });
    for schema in out.values_mut() {
        let Some(fields) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
            continue;
        };
        if !(fields.contains_key("id")
            && fields.contains_key("createdAt")
            && fields.contains_key("properties"))
        {
            continue;
        }
        if let Some(values) = fields
            .get_mut("properties")
            .and_then(|p| p.get_mut("additionalProperties"))
        {
            if values["type"] == "string" {
                values["type"] = json!(["string", "null"]);
            }
        }
        let entries = fields
            .get_mut("propertiesWithHistory")
            .and_then(|p| p.get_mut("additionalProperties"))
            .and_then(|a| a.get_mut("items"));
        if let (Some(items), Some(entry)) = (entries, &history_entry) {
            if items["$ref"] == "#/components/schemas/ValueWithTimestamp" {
                *items = entry.clone();
            }
        }
    }
    out
}

/// Inlines `$ref`s and turns OpenAPI's schema dialect into draft-4 JSON Schema.
struct Inliner<'a> {
    schemas: &'a Map<String, Value>,
    /// Schemas met again while being inlined (cycles): kept under `definitions`.
    recursive: BTreeSet<String>,
}

impl Inliner<'_> {
    fn root(schemas: &Map<String, Value>, schema: &Value) -> Value {
        let mut inl = Inliner {
            schemas,
            recursive: BTreeSet::new(),
        };
        let mut out = inl.schema(schema, &mut Vec::new());
        let mut defs = Map::new();
        while let Some(name) = inl
            .recursive
            .iter()
            .find(|n| !defs.contains_key(*n))
            .cloned()
        {
            let target = inl.target(&name).clone();
            let body = inl.schema(&target, &mut vec![name.clone()]);
            defs.insert(name, body);
        }
        if !defs.is_empty() {
            out["definitions"] = Value::Object(defs);
        }
        out
    }

    fn target(&self, name: &str) -> &Value {
        self.schemas
            .get(name)
            .unwrap_or_else(|| panic!("dangling $ref to schema {name}"))
    }

    fn schema(&mut self, v: &Value, stack: &mut Vec<String>) -> Value {
        let Some(obj) = v.as_object() else {
            return v.clone();
        };
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected schema $ref {r}"))
                .to_owned();
            if stack.contains(&name) {
                let out = json!({ "$ref": format!("#/definitions/{name}") });
                self.recursive.insert(name);
                return out;
            }
            let target = self.target(&name).clone();
            stack.push(name);
            let out = self.schema(&target, stack);
            stack.pop();
            return out;
        }
        let mut out = Map::new();
        for (k, val) in obj {
            match k.as_str() {
                // Annotations and OpenAPI-only keywords: no bearing on validation.
                "example" | "examples" | "description" | "title" | "xml" | "externalDocs"
                | "discriminator" | "deprecated" | "readOnly" | "writeOnly" | "nullable" => {}
                "properties" | "patternProperties" | "definitions" => {
                    let map = val
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(n, s)| (n.clone(), self.schema(s, stack)))
                                .collect()
                        })
                        .unwrap_or_default();
                    out.insert(k.clone(), Value::Object(map));
                }
                "items" | "additionalProperties" | "not" | "allOf" | "anyOf" | "oneOf" => {
                    let s = match val {
                        Value::Array(list) => {
                            Value::Array(list.iter().map(|s| self.schema(s, stack)).collect())
                        }
                        other => self.schema(other, stack),
                    };
                    out.insert(k.clone(), s);
                }
                // Draft 4 wants at least one name in `required`.
                "required" if val.as_array().is_some_and(Vec::is_empty) => {}
                _ => {
                    out.insert(k.clone(), val.clone());
                }
            }
        }
        if obj.get("nullable") == Some(&Value::Bool(true)) {
            if let Some(t) = out.get("type").and_then(Value::as_str).map(str::to_owned) {
                out.insert("type".into(), json!([t, "null"]));
            }
            if let Some(Value::Array(e)) = out.get_mut("enum") {
                e.push(Value::Null);
            }
        }
        // OpenAPI's integer formats are ranges JSON Schema does not know by name.
        if out.get("type") == Some(&json!("integer")) {
            let range = match out.get("format").and_then(Value::as_str) {
                Some("int32") => Some((json!(i32::MIN), json!(i32::MAX))),
                Some("int64") => Some((json!(i64::MIN), json!(i64::MAX))),
                _ => None,
            };
            if let Some((lo, hi)) = range {
                out.entry("minimum").or_insert(lo);
                out.entry("maximum").or_insert(hi);
            }
        }
        Value::Object(out)
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}

fn compile(doc: &Value, schema: &Value) -> Validator {
    let empty = Map::new();
    let schemas = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let schemas = allow_known_deviations(schemas);
    let inlined = Inliner::root(&schemas, schema);
    jsonschema::options()
        .with_draft(Draft::Draft4)
        .should_validate_formats(true)
        .with_format("uuid", is_uuid)
        .build(&inlined)
        .unwrap_or_else(|e| panic!("the converted schema does not compile: {e}\n{inlined:#}"))
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

// ---------------------------------------------------------------------------------------------
// Checking the recorded answers
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Report {
    /// "METHOD template (file)" -> statuses validated.
    validated: BTreeMap<String, BTreeSet<u16>>,
    answers_validated: usize,
    aliased: BTreeSet<String>,
    /// Answers without a JSON body (204s, downloads).
    without_body: usize,
    mismatches: Vec<String>,
    unmatched: Vec<String>,
}

fn check(specs: &Specs, recorded: &[Recorded]) -> Report {
    let mut report = Report::default();
    let mut validators: HashMap<(usize, String, String, String), Validator> = HashMap::new();
    for r in recorded {
        let shown = match &r.query {
            Some(q) => format!("{} {}?{} -> {}", r.method, r.path, q, r.status),
            None => format!("{} {} -> {}", r.method, r.path, r.status),
        };
        let twin = alias_target(&r.method, &r.path);
        let op = match specs.find(&r.method, twin.as_deref().unwrap_or(&r.path)) {
            Ok(op) => op,
            Err(why) => {
                if r.body.is_some() {
                    report.unmatched.push(format!("{shown}: {why}"));
                } else {
                    report.without_body += 1;
                }
                continue;
            }
        };
        let (file, doc) = &specs.files[op.file];
        let documented = response_schema(doc, op, r.status);
        let Some(body) = &r.body else {
            report.without_body += 1;
            // A body-less answer where the spec documents a JSON one for this very status.
            if let Ok((key, Some(_))) = &documented {
                if *key == r.status.to_string() {
                    report.mismatches.push(format!(
                        "{shown} [{file} {} {}]: the spec documents a JSON body for {key}, the sandbox sent none",
                        op.method, op.template
                    ));
                }
            }
            continue;
        };
        let name = format!("{} {} ({file})", op.method, op.template);
        if twin.is_some() {
            report.aliased.insert(format!("{} {}", r.method, r.path));
        }
        let (key, schema) = match documented {
            Ok((key, Some(schema))) => (key, schema),
            Ok((key, None)) => {
                report
                    .mismatches
                    .push(format!("{shown} [{name}]: the spec documents no body for {key}, the sandbox sent {body}"));
                continue;
            }
            Err(e) => {
                report.mismatches.push(format!(
                    "{shown} [{name}]: {e}; body {}",
                    clip(&body.to_string(), 300)
                ));
                continue;
            }
        };
        let validator = validators
            .entry((op.file, op.method.clone(), op.template.clone(), key.clone()))
            .or_insert_with(|| compile(doc, &schema));
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| {
                format!(
                    "at {:?}: {} (schema rule {})",
                    e.instance_path.to_string(),
                    clip(&e.to_string(), 300),
                    e.schema_path
                )
            })
            .collect();
        for e in &errors {
            report
                .mismatches
                .push(format!("{shown} [{name}, response {key}]: {e}"));
        }
        report.answers_validated += 1;
        report.validated.entry(name).or_default().insert(r.status);
    }
    report
}

// ---------------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------------

/// Calls the sandbox and notes (without stopping) any answer whose status is not one the
/// scenario meant to provoke, so a scenario drift is reported next to the schema mismatches.
struct Run {
    p: Portal,
    dialect: Dialect,
    surprises: Vec<String>,
}

impl Run {
    async fn call(
        &mut self,
        expect: &[u16],
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let path = &self.dialect.path(path);
        let expect: &[u16] = &expect
            .iter()
            .map(|s| self.dialect.status(path, *s))
            .collect::<Vec<_>>();
        let mut rb = self.p.req(method.clone(), path);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let a = self.p.send(rb).await;
        if !expect.contains(&a.status) {
            self.surprises.push(format!(
                "{method} {path}: expected {expect:?}, got {} ({})",
                a.status,
                clip(&a.text, 300)
            ));
        }
        a
    }

    async fn get(&mut self, expect: u16, path: &str) -> Answer {
        self.call(&[expect], Method::GET, path, None).await
    }

    async fn post(&mut self, expect: u16, path: &str, body: Value) -> Answer {
        self.call(&[expect], Method::POST, path, Some(body)).await
    }

    async fn patch(&mut self, expect: u16, path: &str, body: Value) -> Answer {
        self.call(&[expect], Method::PATCH, path, Some(body)).await
    }

    async fn put(&mut self, expect: u16, path: &str, body: Option<Value>) -> Answer {
        self.call(&[expect], Method::PUT, path, body).await
    }

    async fn delete(&mut self, expect: u16, path: &str) -> Answer {
        self.call(&[expect], Method::DELETE, path, None).await
    }
}

fn id_of(a: &Answer, what: &str) -> String {
    a.body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no id in the answer ({} {})", a.status, a.text))
        .to_owned()
}

/// One CRM object type as the scenario drives it.
struct Kind {
    /// Path segment used in URLs (names and type ids are both exercised).
    seg: &'static str,
    /// Property group for the scenario's custom unique property.
    group: &'static str,
    /// A property PATCH changes (read back with history).
    changed: &'static str,
}

const KINDS: [Kind; 6] = [
    Kind {
        seg: "deals",
        group: "dealinformation",
        changed: "amount",
    },
    Kind {
        seg: "contacts",
        group: "contactinformation",
        changed: "lastname",
    },
    Kind {
        seg: "0-2",
        group: "companyinformation",
        changed: "domain",
    },
    Kind {
        seg: "notes",
        group: "engagement",
        changed: "hs_note_body",
    },
    Kind {
        seg: "tasks",
        group: "engagement",
        changed: "hs_task_status",
    },
    Kind {
        seg: "quotes",
        group: "quoteinformation",
        changed: "hs_title",
    },
];

/// Valid properties for a new record (`key` goes into the custom unique property).
fn new_props(seg: &str, n: u32, key: Option<&str>) -> Value {
    let mut v = match seg {
        "deals" | "0-3" => json!({
            "dealname": format!("Conformance deal {n}"), "amount": "100",
            "pipeline": "default", "dealstage": "appointmentscheduled",
        }),
        "contacts" => json!({
            "email": format!("person{n}@conformance.example"), "firstname": "Pat", "lastname": format!("Person {n}"),
        }),
        "companies" | "0-2" => {
            json!({ "name": format!("Conformance Co {n}"), "domain": format!("co{n}.example") })
        }
        "notes" => {
            json!({ "hs_timestamp": "2024-05-01T10:00:00.000Z", "hs_note_body": format!("Note {n}") })
        }
        "tasks" | "0-27" => json!({
            "hs_task_subject": format!("Task {n}"), "hs_timestamp": "2024-05-01T10:00:00.000Z",
            "hs_task_status": "NOT_STARTED",
        }),
        "quotes" => {
            json!({ "hs_title": format!("Quote {n}"), "hs_expiration_date": "2030-01-01T00:00:00.000Z" })
        }
        other => panic!("no sample properties for {other}"),
    };
    if let Some(k) = key {
        v["conformance_key"] = json!(k);
    }
    v
}

fn changed_props(seg: &str, n: u32) -> Value {
    match seg {
        "deals" | "0-3" => {
            json!({ "amount": format!("{}", 250 + n), "dealstage": "qualifiedtobuy" })
        }
        "contacts" => json!({ "lastname": format!("Changed {n}") }),
        "companies" | "0-2" => json!({ "domain": format!("changed{n}.example") }),
        "notes" => json!({ "hs_note_body": format!("Changed note {n}") }),
        "tasks" | "0-27" => json!({ "hs_task_status": "COMPLETED" }),
        "quotes" => json!({ "hs_title": format!("Changed quote {n}") }),
        other => panic!("no sample change for {other}"),
    }
}

/// Ids of the records one object type's scenario leaves live.
struct Made {
    ids: Vec<String>,
}

/// Create, read (plain, with properties, history and the archived flag), update, list with
/// paging, search, the five batch calls with 200/201 and 207 answers, archive, and bad input.
async fn objects_scenario(run: &mut Run, k: &Kind) -> Made {
    let base = format!("/crm/v3/objects/{}", k.seg);
    let key = |n: u32| format!("{}-{n}", k.seg);

    run.post(
        201,
        &format!("/crm/v3/properties/{}", k.seg),
        json!({
            "name": "conformance_key", "label": "Conformance key", "type": "string", "fieldType": "text",
            "groupName": k.group, "hasUniqueValue": true,
        }),
    )
    .await;

    let mut ids = Vec::new();
    for n in 0..3 {
        let a = run
            .post(
                201,
                &base,
                json!({ "properties": new_props(k.seg, n, Some(&key(n))) }),
            )
            .await;
        ids.push(id_of(&a, "create"));
    }
    let (first, second, third) = (ids[0].clone(), ids[1].clone(), ids[2].clone());

    run.get(200, &format!("{base}/{first}")).await;
    run.patch(
        200,
        &format!("{base}/{first}"),
        json!({ "properties": changed_props(k.seg, 0) }),
    )
    .await;
    // `hubspot_owner_id` is unset: HubSpot answers it as null (the allowed deviation).
    run.get(
        200,
        &format!(
            "{base}/{first}?properties={},conformance_key,hubspot_owner_id&propertiesWithHistory={},hubspot_owner_id",
            k.changed, k.changed
        ),
    )
    .await;
    run.get(
        200,
        &format!("{base}/{}?idProperty=conformance_key", key(1)),
    )
    .await;

    // Paging: a first page, then the page its cursor points at.
    let page = run
        .get(200, &format!("{base}?limit=2&properties={}", k.changed))
        .await;
    match page.body["paging"]["next"]["after"].as_str() {
        Some(after) => {
            run.get(200, &format!("{base}?limit=2&after={after}")).await;
        }
        None => run
            .surprises
            .push(format!("GET {base}?limit=2: no paging.next with 3 records")),
    }
    run.get(
        200,
        &format!(
            "{base}?limit=50&propertiesWithHistory={}&archived=false",
            k.changed
        ),
    )
    .await;

    // Search, two pages.
    let search = json!({
        "filterGroups": [{ "filters": [{ "propertyName": "conformance_key", "operator": "HAS_PROPERTY" }] }],
        "sorts": [{ "propertyName": "hs_object_id", "direction": "ASCENDING" }],
        "properties": [k.changed, "conformance_key"],
        "limit": 2,
    });
    let found = run
        .post(200, &format!("{base}/search"), search.clone())
        .await;
    if let Some(after) = found.body["paging"]["next"]["after"].as_str() {
        let mut next = search;
        next["after"] = json!(after);
        run.post(200, &format!("{base}/search"), next).await;
    }

    // Batch read: all found, then one missing (207).
    run.post(
        200,
        &format!("{base}/batch/read"),
        json!({
            "inputs": [{ "id": first }, { "id": second }],
            "properties": [k.changed], "propertiesWithHistory": [k.changed],
        }),
    )
    .await;
    run.post(
        207,
        &format!("{base}/batch/read"),
        json!({ "inputs": [{ "id": first }, { "id": "99999999999" }], "properties": [], "propertiesWithHistory": [] }),
    )
    .await;
    run.post(
        200,
        &format!("{base}/batch/read"),
        json!({ "inputs": [{ "id": key(1) }], "idProperty": "conformance_key", "properties": [], "propertiesWithHistory": [] }),
    )
    .await;

    // Batch create: all good (201), then traced inputs with one bad (207).
    let created = run
        .post(
            201,
            &format!("{base}/batch/create"),
            json!({ "inputs": [
                { "properties": new_props(k.seg, 10, Some(&key(10))), "associations": [] },
                { "properties": new_props(k.seg, 11, Some(&key(11))), "associations": [] },
            ] }),
        )
        .await;
    let batch_ids: Vec<String> = created.body["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|o| o["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    run.post(
        207,
        &format!("{base}/batch/create"),
        json!({ "inputs": [
            { "properties": new_props(k.seg, 12, Some(&key(12))), "associations": [], "objectWriteTraceId": "trace-ok" },
            { "properties": { "no_such_property": "x" }, "associations": [], "objectWriteTraceId": "trace-bad" },
        ] }),
    )
    .await;

    // Batch update: all good, then one missing id (207).
    run.post(
        200,
        &format!("{base}/batch/update"),
        json!({ "inputs": [
            { "id": second, "properties": changed_props(k.seg, 1) },
            { "id": key(2), "idProperty": "conformance_key", "properties": changed_props(k.seg, 2) },
        ] }),
    )
    .await;
    run.post(
        207,
        &format!("{base}/batch/update"),
        json!({ "inputs": [
            { "id": second, "properties": changed_props(k.seg, 3) },
            { "id": "99999999999", "properties": changed_props(k.seg, 3) },
        ] }),
    )
    .await;

    // Batch upsert on the custom unique property: one update, one create.
    let fresh = new_props(k.seg, 20, None);
    run.post(
        200,
        &format!("{base}/batch/upsert"),
        json!({ "inputs": [
            { "id": key(0), "idProperty": "conformance_key", "properties": changed_props(k.seg, 4) },
            { "id": key(20), "idProperty": "conformance_key", "properties": fresh },
        ] }),
    )
    .await;

    // Archive one by id, one by batch; read an archived record both ways.
    run.delete(204, &format!("{base}/{third}")).await;
    run.get(404, &format!("{base}/{third}")).await;
    run.get(200, &format!("{base}/{third}?archived=true")).await;
    run.get(200, &format!("{base}?archived=true&limit=5")).await;
    if let Some(b) = batch_ids.first() {
        run.post(
            204,
            &format!("{base}/batch/archive"),
            json!({ "inputs": [{ "id": b }] }),
        )
        .await;
    }

    // Bad input.
    run.post(
        400,
        &base,
        json!({ "properties": { "no_such_property": "x" } }),
    )
    .await;
    run.patch(
        404,
        &format!("{base}/99999999999"),
        json!({ "properties": changed_props(k.seg, 5) }),
    )
    .await;
    run.get(400, &format!("{base}?limit=1000")).await;
    run.post(
        400,
        &format!("{base}/search"),
        json!({ "filterGroups": [{ "filters": [{ "propertyName": "hs_object_id", "operator": "ALMOST" }] }] }),
    )
    .await;

    Made {
        ids: vec![first, second],
    }
}

async fn upload(run: &mut Run, options: Option<&str>, expect: u16) -> Answer {
    let mut form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"conformance file\n".to_vec())
                .file_name("conformance.txt")
                .mime_str("text/plain")
                .expect("mime"),
        )
        .text("folderPath", "/conformance");
    if let Some(o) = options {
        form = form.text("options", o.to_owned());
    }
    let a = run
        .p
        .send(
            run.p
                .req(Method::POST, &run.dialect.path("/files/v3/files"))
                .multipart(form),
        )
        .await;
    if a.status != expect {
        run.surprises.push(format!(
            "POST /files/v3/files: expected {expect}, got {} ({})",
            a.status, a.text
        ));
    }
    a
}

/// The whole scenario; answers are recorded by the sandbox.
async fn scenario(run: &mut Run) {
    let mut made = HashMap::new();
    for k in &KINDS {
        made.insert(k.seg, objects_scenario(run, k).await);
    }
    // The deal spec spells the type `0-3`; the sandbox takes names and ids alike.
    let deal = made["deals"].ids[0].clone();
    run.get(200, &format!("/crm/v3/objects/0-3/{deal}")).await;
    run.get(200, "/crm/v3/objects/0-27?limit=1").await;
    let contacts = made["contacts"].ids.clone();
    let company = made["0-2"].ids[0].clone();
    let notes = made["notes"].ids.clone();
    let tasks = made["tasks"].ids.clone();
    let quote = made["quotes"].ids[0].clone();

    // ---- Associations v4 ----
    let v4 = format!("/crm/v4/objects/deals/{deal}/associations");
    for c in &contacts {
        run.put(200, &format!("{v4}/default/contacts/{c}"), None)
            .await;
    }
    run.put(
        201,
        &format!("{v4}/companies/{company}"),
        Some(json!([{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 5 }])),
    )
    .await;
    run.put(
        201,
        &format!("{v4}/quotes/{quote}"),
        Some(json!([{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 63 }])),
    )
    .await;
    run.get(200, &format!("{v4}/contacts")).await;
    let page = run.get(200, &format!("{v4}/contacts?limit=1")).await;
    if let Some(after) = page.body["paging"]["next"]["after"].as_str() {
        run.get(200, &format!("{v4}/contacts?limit=1&after={after}"))
            .await;
    } else {
        run.surprises.push(format!(
            "GET {v4}/contacts?limit=1: no paging.next with 2 contacts"
        ));
    }
    run.get(200, &format!("{v4}/companies")).await;
    run.post(
        201,
        "/crm/v4/associations/deals/notes/batch/create",
        json!({ "inputs": notes.iter().map(|n| json!({
            "from": { "id": deal }, "to": { "id": n },
            "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 213 }],
        })).collect::<Vec<_>>() }),
    )
    .await;
    run.post(
        207,
        "/crm/v4/associations/deals/notes/batch/create",
        json!({ "inputs": [
            { "from": { "id": deal }, "to": { "id": notes[0] },
              "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 213 }] },
            { "from": { "id": deal }, "to": { "id": "99999999999" },
              "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 213 }] },
        ] }),
    )
    .await;
    // Reads with v3 `associations`, one record and a list page.
    run.get(
        200,
        &format!("/crm/v3/objects/deals/{deal}?associations=notes,contacts,companies"),
    )
    .await;
    run.get(200, "/crm/v3/objects/deals?limit=3&associations=notes")
        .await;
    run.get(
        200,
        &format!("/crm/v3/objects/notes/{}?associations=deals", notes[0]),
    )
    .await;
    run.post(
        200,
        "/crm/v4/associations/deals/notes/batch/read",
        json!({ "inputs": [{ "id": deal }] }),
    )
    .await;
    run.post(
        207,
        "/crm/v4/associations/deals/notes/batch/read",
        json!({ "inputs": [{ "id": deal }, { "id": "99999999999" }] }),
    )
    .await;
    run.post(
        200,
        "/crm/v4/associations/deals/tasks/batch/associate/default",
        json!({ "inputs": [{ "from": { "id": deal }, "to": { "id": tasks[0] } }] }),
    )
    .await;
    // A partial failure: the spec documents only 200 (with `errors`) for this call.
    run.call(
        &[200, 207],
        Method::POST,
        "/crm/v4/associations/deals/tasks/batch/associate/default",
        Some(json!({ "inputs": [
            { "from": { "id": deal }, "to": { "id": tasks[1] } },
            { "from": { "id": deal }, "to": { "id": "99999999999" } },
        ] })),
    )
    .await;
    run.post(
        204,
        "/crm/v4/associations/deals/notes/batch/archive",
        json!({ "inputs": [{ "from": { "id": deal }, "to": [{ "id": notes[1] }] }] }),
    )
    .await;
    run.delete(204, &format!("{v4}/contacts/{}", contacts[1]))
        .await;
    run.get(200, "/crm/associations/v4/deals/companies/labels")
        .await;
    run.get(200, "/crm/associations/v4/contacts/companies/labels")
        .await;
    run.get(200, "/crm/v4/associations/deals/contacts/labels")
        .await;
    // Association errors.
    run.put(404, &format!("{v4}/default/contacts/99999999999"), None)
        .await;
    run.put(
        400,
        &format!("{v4}/companies/{company}"),
        Some(json!([{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 999 }])),
    )
    .await;
    run.get(
        404,
        "/crm/v4/objects/deals/99999999999/associations/contacts",
    )
    .await;

    // ---- Properties and groups ----
    run.get(200, "/crm/v3/properties/deals").await;
    run.get(200, "/crm/v3/properties/contacts?archived=true")
        .await;
    run.get(200, "/crm/v3/properties/deals/dealname").await;
    run.get(404, "/crm/v3/properties/deals/no_such_property")
        .await;
    run.patch(
        200,
        "/crm/v3/properties/deals/conformance_key",
        json!({ "label": "Conformance key (renamed)" }),
    )
    .await;
    run.post(
        409,
        "/crm/v3/properties/deals",
        json!({ "name": "conformance_key", "label": "Again", "type": "string", "fieldType": "text", "groupName": "dealinformation" }),
    )
    .await;
    run.post(
        201,
        "/crm/v3/properties/deals",
        json!({
            "name": "conformance_tier", "label": "Tier", "type": "enumeration", "fieldType": "select",
            "groupName": "dealinformation",
            "options": [{ "label": "Gold", "value": "gold" }, { "label": "Silver", "value": "silver", "displayOrder": 1 }],
        }),
    )
    .await;
    run.post(
        400,
        "/crm/v3/properties/deals",
        json!({ "name": "conformance_bad", "label": "Bad", "type": "number", "fieldType": "select", "groupName": "dealinformation" }),
    )
    .await;
    let prop = |name: &str| json!({ "name": name, "label": name, "type": "string", "fieldType": "text", "groupName": "dealinformation" });
    run.post(
        201,
        "/crm/v3/properties/deals/batch/create",
        json!({ "inputs": [prop("conformance_batch_a")] }),
    )
    .await;
    run.post(
        207,
        "/crm/v3/properties/deals/batch/create",
        json!({ "inputs": [prop("conformance_batch_b"), prop("conformance_tier")] }),
    )
    .await;
    run.post(
        200,
        "/crm/v3/properties/deals/batch/read",
        json!({ "inputs": [{ "name": "dealname" }, { "name": "conformance_tier" }], "archived": false }),
    )
    .await;
    run.post(
        207,
        "/crm/v3/properties/deals/batch/read",
        json!({ "inputs": [{ "name": "dealname" }, { "name": "no_such_property" }], "archived": false }),
    )
    .await;
    run.post(
        204,
        "/crm/v3/properties/deals/batch/archive",
        json!({ "inputs": [{ "name": "conformance_batch_a" }] }),
    )
    .await;
    run.delete(204, "/crm/v3/properties/deals/conformance_batch_b")
        .await;
    run.get(200, "/crm/v3/properties/deals?archived=true").await;

    run.get(200, "/crm/v3/properties/deals/groups").await;
    run.post(
        201,
        "/crm/v3/properties/deals/groups",
        json!({ "name": "conformance_group", "label": "Conformance" }),
    )
    .await;
    run.post(
        409,
        "/crm/v3/properties/deals/groups",
        json!({ "name": "conformance_group", "label": "Again" }),
    )
    .await;
    run.get(200, "/crm/v3/properties/deals/groups/conformance_group")
        .await;
    run.patch(
        200,
        "/crm/v3/properties/deals/groups/conformance_group",
        json!({ "label": "Renamed", "displayOrder": 3 }),
    )
    .await;
    run.delete(204, "/crm/v3/properties/deals/groups/conformance_group")
        .await;
    run.get(404, "/crm/v3/properties/deals/groups/conformance_group")
        .await;

    // ---- Pipelines and stages ----
    run.get(200, "/crm/v3/pipelines/deals").await;
    run.get(200, "/crm/v3/pipelines/deals/default").await;
    let pipeline = json!({
        "label": "Conformance pipeline", "displayOrder": 5,
        "stages": [
            { "label": "Open", "displayOrder": 0, "metadata": { "probability": "0.5" } },
            { "label": "Won", "displayOrder": 1, "metadata": { "probability": "1.0", "isClosed": "true" } },
        ],
    });
    let created = run
        .post(201, "/crm/v3/pipelines/deals", pipeline.clone())
        .await;
    let pid = id_of(&created, "create pipeline");
    run.post(409, "/crm/v3/pipelines/deals", pipeline).await;
    run.patch(
        200,
        &format!("/crm/v3/pipelines/deals/{pid}"),
        json!({ "label": "Conformance pipeline (renamed)" }),
    )
    .await;
    run.get(200, &format!("/crm/v3/pipelines/deals/{pid}/stages"))
        .await;
    let stage = run
        .post(
            201,
            &format!("/crm/v3/pipelines/deals/{pid}/stages"),
            json!({ "label": "Review", "displayOrder": 2, "metadata": { "probability": "0.7" } }),
        )
        .await;
    let sid = id_of(&stage, "create stage");
    run.get(200, &format!("/crm/v3/pipelines/deals/{pid}/stages/{sid}"))
        .await;
    run.patch(
        200,
        &format!("/crm/v3/pipelines/deals/{pid}/stages/{sid}"),
        json!({ "label": "Review (renamed)", "metadata": { "probability": "0.75" } }),
    )
    .await;
    run.post(
        400,
        &format!("/crm/v3/pipelines/deals/{pid}/stages"),
        json!({ "label": "No probability" }),
    )
    .await;
    run.get(
        404,
        &format!("/crm/v3/pipelines/deals/{pid}/stages/no_such_stage"),
    )
    .await;
    run.delete(204, &format!("/crm/v3/pipelines/deals/{pid}"))
        .await;
    run.get(404, &format!("/crm/v3/pipelines/deals/{pid}"))
        .await;
    run.get(400, "/crm/v3/pipelines/contacts").await;

    // ---- Owners ----
    let owners = run.get(200, "/crm/v3/owners").await;
    let owner = &owners.body["results"][0];
    let (owner_id, user_id, email) = (
        owner["id"].as_str().unwrap_or_default().to_owned(),
        owner["userId"].to_string(),
        owner["email"].as_str().unwrap_or_default().to_owned(),
    );
    let page = run.get(200, "/crm/v3/owners?limit=1").await;
    if let Some(after) = page.body["paging"]["next"]["after"].as_str() {
        run.get(200, &format!("/crm/v3/owners?limit=1&after={after}"))
            .await;
    } else {
        run.surprises
            .push("GET /crm/v3/owners?limit=1: no paging.next with 3 owners".into());
    }
    run.get(200, &format!("/crm/v3/owners?email={email}")).await;
    run.get(200, &format!("/crm/v3/owners/{owner_id}")).await;
    run.get(200, &format!("/crm/v3/owners/{user_id}?idProperty=userId"))
        .await;
    run.get(404, "/crm/v3/owners/1").await;
    run.patch(
        200,
        &format!("/crm/v3/objects/deals/{deal}"),
        json!({ "properties": { "hubspot_owner_id": owner_id } }),
    )
    .await;

    // ---- Files ----
    let file = upload(run, Some(r#"{"access":"PRIVATE"}"#), 201).await;
    let fid = id_of(&file, "upload");
    run.get(200, &format!("/files/v3/files/{fid}")).await;
    run.get(200, &format!("/files/v3/files/{fid}/signed-url"))
        .await;
    run.get(
        200,
        &format!("/files/v3/files/{fid}/signed-url?expirationSeconds=600"),
    )
    .await;
    run.get(200, &format!("/files/v3/files/{fid}/download"))
        .await;
    run.post(
        201,
        "/crm/v3/objects/notes",
        json!({ "properties": { "hs_timestamp": "2024-05-02T00:00:00.000Z", "hs_attachment_ids": fid } }),
    )
    .await;
    run.get(
        400,
        &format!("/files/v3/files/{fid}/signed-url?expirationSeconds=0"),
    )
    .await;
    run.delete(204, &format!("/files/v3/files/{fid}")).await;
    run.get(404, &format!("/files/v3/files/{fid}")).await;
    run.get(404, &format!("/files/v3/files/{fid}/signed-url"))
        .await;
    upload(run, None, 400).await;

    // ---- Other error answers ----
    run.post(
        409,
        "/crm/v3/objects/contacts",
        json!({ "properties": new_props("contacts", 1, None) }),
    )
    .await;
    run.patch(
        400,
        &format!("/crm/v3/objects/deals/{deal}"),
        json!({ "properties": { "amount": "lots" } }),
    )
    .await;
    run.patch(
        400,
        &format!("/crm/v3/objects/deals/{deal}"),
        json!({ "properties": { "dealstage": "nowhere" } }),
    )
    .await;
    run.get(400, &format!("/crm/v3/objects/deals/{deal}?archived=maybe"))
        .await;
    run.get(404, "/crm/v3/objects/deals/99999999999").await;
    run.post(
        400,
        "/crm/v3/objects/deals/batch/read",
        json!({ "inputs": (0..101).map(|i| json!({ "id": i.to_string() })).collect::<Vec<_>>(),
                "properties": [], "propertiesWithHistory": [] }),
    )
    .await;
    run.call(&[400], Method::POST, "/crm/v3/objects/deals", None)
        .await;

    // 401: an unknown token and no token at all.
    for rb in [
        run.p
            .http
            .get(run.p.url(&run.dialect.path("/crm/v3/objects/deals")))
            .bearer_auth("pat-not-a-real-token"),
        run.p
            .http
            .get(run.p.url(&run.dialect.path("/crm/v3/owners"))),
    ] {
        let a = run.p.send(rb).await;
        if a.status != 401 {
            run.surprises.push(format!(
                "unauthenticated call: expected 401, got {} ({})",
                a.status, a.text
            ));
        }
    }

    // 429 from fault injection, then a 503 burst, then faults cleared and calls answered again.
    run.p.set_faults(json!({ "rate_429": 1.0 })).await;
    run.get(429, "/crm/v3/objects/deals").await;
    run.post(429, "/crm/v3/objects/deals/search", json!({ "limit": 1 }))
        .await;
    run.patch(
        429,
        &format!("/crm/v3/objects/deals/{deal}"),
        json!({ "properties": { "amount": "1" } }),
    )
    .await;
    // Injected server errors carry HubSpot's error body too.
    run.p
        .set_faults(json!({ "burst_count": 2, "burst_status": 503 }))
        .await;
    run.get(503, &format!("/crm/v3/objects/deals/{deal}")).await;
    run.post(
        503,
        "/crm/v4/associations/deals/notes/batch/read",
        json!({ "inputs": [{ "id": deal }] }),
    )
    .await;
    let cleared = run.p.control(Method::DELETE, "/faults", None).await;
    assert_eq!(cleared.status, 204, "clear faults: {}", cleared.text);
    run.get(200, "/crm/v3/objects/deals?limit=1").await;
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

/// Fewer distinct documented operations than this means the scenario stopped reaching part of
/// the API (the scenario currently reaches 84).
const MIN_OPERATIONS: usize = 80;

/// Statuses of JSON answers the scenario provokes on purpose; each must have been validated at
/// least once.
const STATUSES: [u16; 9] = [200, 201, 207, 400, 401, 404, 409, 429, 503];

/// Runs the scenario in `dialect` on a recording sandbox: the run (with its surprises) and
/// every answer.
async fn record(dialect: Dialect) -> (Run, Vec<Recorded>) {
    let sb = common::sandbox_with(SandboxConfig {
        record_responses: true,
        rate_limit_per_10s: None,
        daily_limit: None,
        search_per_s: None,
        seed: Some(7),
        ..SandboxConfig::default()
    })
    .await;
    let mut run = Run {
        p: common::portal(&sb, "hubspot"),
        dialect,
        surprises: Vec::new(),
    };
    scenario(&mut run).await;
    let recorded = sb.recorded();
    sb.shutdown().await;
    (run, recorded)
}

#[tokio::test]
async fn every_answer_matches_hubspots_openapi_specs() {
    answers_match(Dialect::Legacy).await;
}

/// The same scenario on the date-versioned paths dealsync calls by default, checked against
/// HubSpot's 2026-09 specs (2026-03 for files and the per-record association listing).
#[tokio::test]
async fn every_dated_answer_matches_hubspots_2026_09_specs() {
    answers_match(Dialect::Dated).await;
}

async fn answers_match(dialect: Dialect) {
    let specs = Specs::load(dialect);
    let (run, recorded) = record(dialect).await;
    // Every call must have gone where the dialect says: a dated run that slipped back to a
    // legacy path would be checked against nothing it claims to be.
    if dialect == Dialect::Dated {
        let legacy: Vec<&str> = recorded
            .iter()
            .map(|r| r.path.as_str())
            .filter(|p| (p.contains("/v3/") || p.contains("/v4/")) && !p.ends_with("/download"))
            .collect();
        assert!(
            legacy.is_empty(),
            "dated run called legacy paths: {legacy:?}"
        );
    }

    let report = check(&specs, &recorded);
    let statuses: BTreeSet<u16> = report.validated.values().flatten().copied().collect();
    let mut problems = Vec::new();
    if !report.mismatches.is_empty() {
        problems.push(format!(
            "{} answer(s) do not match HubSpot's OpenAPI specs:\n  {}",
            report.mismatches.len(),
            report.mismatches.join("\n  ")
        ));
    }
    if !report.unmatched.is_empty() {
        problems.push(format!(
            "{} JSON answer(s) have no documented operation (add a justified alias or fix the route):\n  {}",
            report.unmatched.len(),
            report.unmatched.join("\n  ")
        ));
    }
    if !run.surprises.is_empty() {
        problems.push(format!(
            "the scenario did not get the answers it meant to provoke:\n  {}",
            run.surprises.join("\n  ")
        ));
    }
    if report.validated.len() < MIN_OPERATIONS {
        problems.push(format!(
            "only {} distinct operations were validated (at least {MIN_OPERATIONS} expected)",
            report.validated.len()
        ));
    }
    let statuses_wanted: &[u16] = match dialect {
        Dialect::Legacy => &STATUSES,
        // The dated specs document no 207: partial failures come back in a 200 or 201.
        Dialect::Dated => &STATUSES[..2]
            .iter()
            .chain(&STATUSES[3..])
            .copied()
            .collect::<Vec<_>>(),
    };
    let missing: Vec<u16> = statuses_wanted
        .iter()
        .copied()
        .filter(|s| !statuses.contains(s))
        .collect();
    if !missing.is_empty() {
        problems.push(format!("no answer with status {missing:?} was validated"));
    }
    let summary = format!(
        "{} answers recorded; {} JSON answers validated across {} documented operations ({} operation/status pairs); \
         {} answers without a JSON body; aliases validated as their documented twin: {:?}",
        recorded.len(),
        report.answers_validated,
        report.validated.len(),
        report.validated.values().map(BTreeSet::len).sum::<usize>(),
        report.without_body,
        report.aliased,
    );
    eprintln!("validated operations and statuses:");
    for (op, s) in &report.validated {
        eprintln!("  {op}: {s:?}");
    }
    eprintln!("{summary}");
    if !problems.is_empty() {
        eprintln!("\n{}", problems.join("\n\n"));
        // The report is printed just above. Unwinding without the panic hook keeps it at the
        // end of the log instead of burying it under a backtrace when RUST_BACKTRACE is set.
        std::panic::resume_unwind(Box::new(format!(
            "{} conformance problem(s), listed above",
            problems.len()
        )));
    }
}

/// Every call the scenario makes has its operation in the spec files, body or no body.
///
/// The test above reports a *JSON* answer on an undocumented path, but counts a body-less one
/// (a 204 DELETE, a download) without looking further; so an operation dropped from the
/// reduced extract in `fixtures/` would go unnoticed there. This test notices it.
#[tokio::test]
async fn every_call_of_the_scenario_is_in_the_specs() {
    for dialect in [Dialect::Legacy, Dialect::Dated] {
        calls_documented(dialect).await;
    }
}

async fn calls_documented(dialect: Dialect) {
    let specs = Specs::load(dialect);
    let (_run, recorded) = record(dialect).await;

    let calls: BTreeSet<(String, String)> = recorded
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    let bodyless = recorded.iter().filter(|r| r.body.is_none()).count();
    let missing: Vec<String> = calls
        .iter()
        .filter_map(|(method, path)| {
            let twin = alias_target(method, path);
            specs
                .find(method, twin.as_deref().unwrap_or(path))
                .err()
                .map(|why| format!("{method} {path}: {why}"))
        })
        .collect();
    assert!(
        bodyless > 0,
        "the scenario made no body-less call, so this test checks nothing the other does not"
    );
    assert!(
        missing.is_empty(),
        "{dialect:?}: {} call(s) of the scenario have no operation in {} (refresh the extract \
         with scripts/extract-openapi.py, keeping the operation):\n  {}",
        missing.len(),
        spec_dir().display(),
        missing.join("\n  ")
    );
}

/// `base` with the value at `pointer` replaced (`Some`) or removed (`None`).
fn edited(base: &Value, pointer: &str, to: Option<Value>) -> Value {
    let mut v = base.clone();
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    let slot = v
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("{pointer} is not inside an object"));
    match to {
        Some(x) => slot.insert(key.to_owned(), x),
        None => slot.remove(key),
    };
    v
}

/// The checker itself: broken answers must be caught (so the conformance test cannot pass by
/// validating nothing), and the one allowed deviation must stay narrow.
#[test]
fn the_checker_catches_broken_answers() {
    let specs = Specs::load(Dialect::Legacy);
    let answer = |method: &str, path: &str, status: u16, body: Value| Recorded {
        method: method.into(),
        path: path.into(),
        query: None,
        status,
        body: Some(body),
    };
    let deal = json!({
        "id": "1", "archived": false,
        "createdAt": "2024-05-01T10:00:00.000Z", "updatedAt": "2024-05-01T10:00:00.000Z",
        "properties": { "dealname": "A", "hubspot_owner_id": null },
        "propertiesWithHistory": { "dealname": [
            { "value": "A", "timestamp": "2024-05-01T10:00:00.000Z", "sourceType": "INTEGRATION" },
        ] },
    });
    let error = json!({
        "status": "error", "message": "m", "category": "OBJECT_NOT_FOUND",
        "correlationId": "aeb5f871-7f07-4993-9211-075dc63e7cbf",
    });
    let owner = json!({
        "id": "1", "type": "PERSON", "archived": false, "userId": 4_000_000_000_u64,
        "createdAt": "2024-05-01T10:00:00.000Z", "updatedAt": "2024-05-01T10:00:00.000Z",
    });
    const DEAL_1: &str = "/crm/v3/objects/deals/1";
    // (what, answer, whether the checker must object)
    let cases = [
        (
            "a valid deal (null property value allowed)",
            answer("GET", DEAL_1, 200, deal.clone()),
            false,
        ),
        (
            "the same, through the type id",
            answer("GET", "/crm/v3/objects/0-3/1", 200, deal.clone()),
            false,
        ),
        (
            "a valid error",
            answer("GET", "/crm/v3/objects/tasks/1", 404, error.clone()),
            false,
        ),
        (
            "id missing",
            answer("GET", DEAL_1, 200, edited(&deal, "/id", None)),
            true,
        ),
        (
            "id null",
            answer("GET", DEAL_1, 200, edited(&deal, "/id", Some(Value::Null))),
            true,
        ),
        (
            "archived a string",
            answer(
                "PATCH",
                DEAL_1,
                200,
                edited(&deal, "/archived", Some(json!("no"))),
            ),
            true,
        ),
        (
            "createdAt not a date-time",
            answer(
                "GET",
                "/crm/v3/objects/notes/1",
                200,
                edited(&deal, "/createdAt", Some(json!("yesterday"))),
            ),
            true,
        ),
        (
            "a property value a number",
            answer(
                "GET",
                DEAL_1,
                200,
                edited(&deal, "/properties/dealname", Some(json!(5))),
            ),
            true,
        ),
        (
            "a history entry without timestamp",
            answer(
                "GET",
                DEAL_1,
                200,
                edited(&deal, "/propertiesWithHistory/dealname/0/timestamp", None),
            ),
            true,
        ),
        (
            "correlationId not a uuid",
            answer(
                "GET",
                DEAL_1,
                404,
                edited(&error, "/correlationId", Some(json!("x"))),
            ),
            true,
        ),
        (
            "category missing",
            answer(
                "GET",
                "/crm/v3/owners/1",
                404,
                edited(&error, "/category", None),
            ),
            true,
        ),
        (
            "create answered 200 instead of 201",
            answer("POST", "/crm/v3/objects/deals", 200, deal.clone()),
            true,
        ),
        (
            "a body where the spec documents none",
            answer("DELETE", DEAL_1, 204, json!({})),
            true,
        ),
        (
            "userId beyond int32",
            answer("GET", "/crm/v3/owners/1", 200, owner),
            true,
        ),
        (
            "an association category outside the enum",
            answer(
                "GET",
                "/crm/associations/v4/deals/contacts/labels",
                200,
                json!({ "results": [{ "category": "SOMETHING", "typeId": 3 }] }),
            ),
            true,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, rec, must_object) in &cases {
        let report = check(&specs, std::slice::from_ref(rec));
        if report.mismatches.is_empty() == *must_object || !report.unmatched.is_empty() {
            wrong.push(format!(
                "{what}: the checker should {}object; mismatches {:?}, unmatched {:?}",
                if *must_object { "" } else { "not " },
                report.mismatches,
                report.unmatched
            ));
        }
    }
    let unknown = check(&specs, &[answer("GET", "/crm/v3/nowhere", 200, json!({}))]);
    if unknown.unmatched.len() != 1 {
        wrong.push(format!(
            "an undocumented path must be reported as unmatched: {:?}",
            unknown.unmatched
        ));
    }
    assert!(
        wrong.is_empty(),
        "the checker is wrong:\n  {}",
        wrong.join("\n  ")
    );
}

/// A schema that refers to itself is inlined once and then referred to under `definitions`.
#[test]
fn inlining_survives_cycles() {
    let doc = json!({ "components": { "schemas": {
        "Node": { "type": "object", "required": ["name"], "properties": {
            "name": { "type": "string", "example": null },
            "children": { "type": "array", "items": { "$ref": "#/components/schemas/Node" } },
        } },
    } } });
    let v = compile(&doc, &json!({ "$ref": "#/components/schemas/Node" }));
    assert!(v.is_valid(
        &json!({ "name": "a", "children": [{ "name": "b", "children": [{ "name": "c" }] }] })
    ));
    assert!(!v.is_valid(
        &json!({ "name": "a", "children": [{ "name": "b", "children": [{ "name": 3 }] }] })
    ));
    assert!(!v.is_valid(&json!({ "name": "a", "children": [{ "children": [] }] })));
}
