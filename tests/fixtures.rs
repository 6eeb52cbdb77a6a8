//! The OpenAPI extract in `fixtures/hubspot-openapi/` (legacy v3/v4 at its top, date-versioned
//! under `2026-09/`) is the reduction `scripts/extract-openapi.py` promises: no documentation
//! left, every `$ref` resolving, and no component that the kept operations do not reach.
//!
//! Whether the files are exactly what the script writes can only be checked where HubSpot's
//! full specs are (re-run the script and `git diff --exit-code fixtures/`); these tests hold
//! on a fresh clone alone. That every call the sandbox answers in the conformance scenario is
//! still documented is `conformance::every_call_of_the_scenario_is_in_the_specs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// OpenAPI keywords that only document (as in the script).
const DOC_KEYS: [&str; 7] = [
    "description",
    "summary",
    "example",
    "examples",
    "externalDocs",
    "tags",
    "title",
];

/// Keys whose value maps names to objects: inside, keys are names, not keywords, so a schema
/// property called `description` is data (as in the script).
const NAME_MAPS: [&str; 16] = [
    "properties",
    "patternProperties",
    "definitions",
    "responses",
    "content",
    "headers",
    "links",
    "callbacks",
    "encoding",
    "variables",
    "scopes",
    "mapping",
    "schemas",
    "securitySchemes",
    "parameters",
    "requestBodies",
];

/// Keywords whose value is data, never looked into.
const LITERALS: [&str; 4] = ["default", "enum", "const", "required"];

const METHODS: [&str; 5] = ["get", "put", "post", "patch", "delete"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hubspot-openapi")
}

/// Every spec file of the extract, by its path under `fixtures/hubspot-openapi/`.
fn spec_files() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for sub in ["", "2026-09"] {
        let dir = root().join(sub);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_some_and(|x| x == "json") {
                let file = entry_name(&path);
                let name = if sub.is_empty() {
                    file
                } else {
                    format!("{sub}/{file}")
                };
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let doc = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
                out.push((name, doc));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 30,
        "only {} spec files under {}",
        out.len(),
        root().display()
    );
    out
}

fn entry_name(path: &Path) -> String {
    path.file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

/// JSON pointers of documentation keywords in `v` (`names`: `v` maps names to objects).
fn documentation(v: &Value, names: bool, at: &str, found: &mut Vec<String>) {
    match v {
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                documentation(x, false, &format!("{at}/{i}"), found);
            }
        }
        Value::Object(map) => {
            for (k, x) in map {
                let here = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                if names {
                    documentation(x, false, &here, found);
                } else if DOC_KEYS.contains(&k.as_str()) || k.starts_with("x-") {
                    found.push(here);
                } else if LITERALS.contains(&k.as_str()) {
                } else {
                    let is_map = NAME_MAPS.contains(&k.as_str()) && x.is_object();
                    documentation(x, is_map, &here, found);
                }
            }
        }
        _ => {}
    }
}

/// Documentation left in a whole spec; `info.title` names the spec and stays.
fn documentation_in(doc: &Value) -> Vec<String> {
    let mut doc = doc.clone();
    if let Some(info) = doc.get_mut("info").and_then(Value::as_object_mut) {
        info.remove("title");
    }
    let mut found = Vec::new();
    documentation(&doc, false, "", &mut found);
    found.sort();
    found
}

fn refs(v: &Value, found: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => {
                        found.insert(r.clone());
                    }
                    _ => refs(x, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| refs(x, found)),
        _ => {}
    }
}

/// Why `doc`'s components are not exactly those its operations reach: dangling `$ref`s,
/// unreached components, undefined or unused security schemes.
fn reach_problems(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut reached = BTreeSet::new();
    let mut todo = BTreeSet::new();
    refs(&doc["paths"], &mut todo);
    while let Some(r) = todo.pop_first() {
        if !reached.insert(r.clone()) {
            continue;
        }
        let target = r.strip_prefix('#').and_then(|p| doc.pointer(p));
        match target {
            Some(t) if r.starts_with("#/components/") => refs(t, &mut todo),
            _ => problems.push(format!("$ref {r} does not resolve to a component")),
        }
    }
    let mut schemes = BTreeSet::new();
    let requirements = doc["paths"]
        .as_object()
        .into_iter()
        .flat_map(|paths| paths.values())
        .flat_map(|item| METHODS.iter().filter_map(|m| item.get(*m)))
        .chain(std::iter::once(doc))
        .filter_map(|op| op.get("security").and_then(Value::as_array))
        .flatten();
    for requirement in requirements {
        schemes.extend(requirement.as_object().into_iter().flat_map(|o| o.keys()));
    }
    let components = doc["components"].as_object().cloned().unwrap_or_default();
    for (kind, entries) in &components {
        for name in entries.as_object().into_iter().flat_map(|e| e.keys()) {
            let kept_for = if kind == "securitySchemes" {
                schemes.contains(name)
            } else {
                reached.contains(&format!("#/components/{kind}/{name}"))
            };
            if !kept_for {
                problems.push(format!(
                    "components/{kind}/{name} is reached by no operation"
                ));
            }
        }
    }
    for scheme in schemes {
        if components["securitySchemes"].get(scheme).is_none() {
            problems.push(format!("security scheme {scheme} is not defined"));
        }
    }
    problems.sort();
    problems
}

#[test]
fn the_extract_holds_no_documentation() {
    // The checker itself: it finds documentation in keyword position, and leaves a schema
    // property that is only *named* like a keyword alone.
    let upstream_like = json!({
        "info": { "title": "Deals", "description": "d", "x-hubspot-api-use-case": "u" },
        "paths": { "/x": { "get": {
            "summary": "s", "tags": ["Basic"],
            "responses": { "200": { "description": "ok", "content": { "application/json": {
                "schema": { "properties": {
                    "description": { "type": "string", "example": "e" },
                    "title": { "type": "string" },
                } },
            } } } },
        } } },
    });
    assert_eq!(
        documentation_in(&upstream_like),
        [
            "/info/description",
            "/info/x-hubspot-api-use-case",
            "/paths/~1x/get/responses/200/content/application~1json/schema/properties/description/example",
            "/paths/~1x/get/responses/200/description",
            "/paths/~1x/get/summary",
            "/paths/~1x/get/tags",
        ]
    );

    let mut left = Vec::new();
    for (name, doc) in spec_files() {
        left.extend(
            documentation_in(&doc)
                .into_iter()
                .map(|p| format!("{name}: {p}")),
        );
    }
    assert!(
        left.is_empty(),
        "{} documentation keyword(s) left in the extract (re-run scripts/extract-openapi.py):\n  {}",
        left.len(),
        left.join("\n  ")
    );
}

#[test]
fn the_extract_keeps_exactly_the_components_its_operations_reach() {
    // The checker itself: a dangling $ref, an orphan schema and an unused scheme are caught.
    let broken = json!({
        "paths": { "/x": { "get": {
            "responses": { "200": { "$ref": "#/components/responses/Gone" } },
            "security": [{ "oauth2": ["crm.objects.deals.read"] }],
        } } },
        "components": {
            "schemas": { "Orphan": { "type": "string" } },
            "securitySchemes": { "oauth2": { "type": "oauth2" }, "private_apps": { "type": "apiKey" } },
        },
    });
    assert_eq!(
        reach_problems(&broken),
        [
            "$ref #/components/responses/Gone does not resolve to a component",
            "components/schemas/Orphan is reached by no operation",
            "components/securitySchemes/private_apps is reached by no operation",
        ]
    );

    let mut problems = Vec::new();
    for (name, doc) in spec_files() {
        let ops = doc["paths"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.values())
            .flat_map(|item| METHODS.iter().filter(|m| item.get(**m).is_some()))
            .count();
        if ops == 0 {
            problems.push(format!("{name}: no operation"));
        }
        problems.extend(
            reach_problems(&doc)
                .into_iter()
                .map(|p| format!("{name}: {p}")),
        );
    }
    assert!(
        problems.is_empty(),
        "the extract is not reduced to what its operations reach:\n  {}",
        problems.join("\n  ")
    );
}

/// The README says which files the extract holds and where they come from; it must not drift
/// from the files themselves.
#[test]
fn the_readme_names_the_source_and_every_file() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("fixtures README.md");
    assert!(readme.contains("HubSpot/HubSpot-public-api-spec-collection"));
    assert!(readme.contains("python3 scripts/extract-openapi.py"));
    let listed: BTreeSet<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" |").next())
        .filter(|f| f.ends_with(".json"))
        .collect();
    let present: Vec<String> = spec_files().into_iter().map(|(n, _)| n).collect();
    let present: BTreeSet<&str> = present.iter().map(String::as_str).collect();
    assert_eq!(listed, present, "README.md's table and the files differ");
}
