#!/usr/bin/env python3
"""Writes the reduced extract of HubSpot's OpenAPI specs that dealsync's tests read.

    python3 scripts/extract-openapi.py /path/to/shared/hubspot-openapi fixtures/hubspot-openapi

SOURCE holds HubSpot's published specs, unchanged, from the public repository
HubSpot/HubSpot-public-api-spec-collection: the legacy v3/v4 files at its top and the
date-versioned ones under `2026-09/`. OUT gets the same layout, reduced to what the tests and
the sandbox need, plus a README.md naming the source and what was kept:

* only the operations dealsync calls or the sandbox serves (KEEP below; a rule that matches
  nothing in its file is an error, so a changed upstream spec is noticed, not silently thinned);
* documentation removed: `description`, `summary`, `example(s)`, `externalDocs`, `tags`,
  schema `title`s and every `x-*` extension (only where they are OpenAPI keywords: a schema
  property that happens to be *named* `description` stays);
* of `components`, only what the kept operations reach through `$ref`s (transitively), and the
  security schemes they name.

The output is deterministic (sorted keys, fixed indentation, one trailing newline), so running
the script again on the same SOURCE gives no diff. Python 3.11+, standard library only.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

UPSTREAM = "HubSpot/HubSpot-public-api-spec-collection"

OBJECTS = [
    # CRUD, batch and search; not merge or GDPR delete.
    (None, r"^/crm/(v3/objects|objects/\d{4}-\d{2})/[^/]+$"),
    (None, r"^/crm/(v3/objects|objects/\d{4}-\d{2})/[^/]+/search$"),
    (None, r"^/crm/(v3/objects|objects/\d{4}-\d{2})/[^/]+/batch/(archive|create|read|update|upsert)$"),
    (None, r"^/crm/(v3/objects|objects/\d{4}-\d{2})/[^/]+/\{[^/]+\}$"),
]
ASSOCIATIONS = [
    (None, r"^/crm/(v4/associations|associations/\d{4}-\d{2})/\{[^/]+\}/\{[^/]+\}/batch/(archive|create|read|associate/default)$"),
    (None, r"^/crm/(v4/objects|objects/\d{4}-\d{2})/\{[^/]+\}/\{[^/]+\}/associations/default/\{[^/]+\}/\{[^/]+\}$"),
    (None, r"^/crm/(v4/objects|objects/\d{4}-\d{2})/\{[^/]+\}/\{[^/]+\}/associations/\{[^/]+\}/\{[^/]+\}$"),
]
# Only 2026-03 (and v4) publish the per-record listing.
ASSOCIATIONS_LIST = [
    ("get", r"^/crm/(v4/objects|objects/\d{4}-\d{2})/\{[^/]+\}/\{[^/]+\}/associations/\{[^/]+\}$"),
]
LABELS = [("get", r"^/crm/associations/(v4|\d{4}-\d{2})/\{[^/]+\}/\{[^/]+\}/labels$")]
PROPERTIES = [(None, r"^/crm/(v3/properties|properties/\d{4}-\d{2})/")]
VALIDATIONS = [(None, r"^/crm/property-validations/\d{4}-\d{2}/")]
PIPELINES = [(None, r"^/crm/(v3/pipelines|pipelines/\d{4}-\d{2})/(?!.*/audit$)")]
OWNERS = [(None, r"^/crm/(v3/owners|owners/\d{4}-\d{2})(/\{ownerId\})?$")]
FILES = [
    ("post", r"^/files/(v3|\d{4}-\d{2})/files$"),
    ("get", r"^/files/(v3|\d{4}-\d{2})/files/\{fileId\}$"),
    ("delete", r"^/files/(v3|\d{4}-\d{2})/files/\{fileId\}$"),
    ("get", r"^/files/(v3|\d{4}-\d{2})/files/\{fileId\}/signed-url$"),
]
# Downloads are served by the sandbox under v3 only (2026-03 has no such path).
FILES_DOWNLOAD = [("get", r"^/files/v3/files/\{fileId\}/download$")]
OAUTH = [(None, r"^/oauth/\d{4}-\d{2}/token(/introspect|/revoke)?$")]
WEBHOOKS = [(None, r"^/(webhooks/v3|app-webhooks/\d{4}-\d{2})/\{appId\}/(settings|subscriptions)")]

# file (relative to SOURCE) -> the operations kept from it. Files not listed are not extracted.
KEEP: dict[str, list[tuple[str | None, str]]] = {
    "crm-associations-schema-v4.json": LABELS,
    "crm-associations-v4.json": ASSOCIATIONS + ASSOCIATIONS_LIST,
    "crm-companies-v3.json": OBJECTS,
    "crm-contacts-v3.json": OBJECTS,
    "crm-deals-v3.json": OBJECTS,
    "crm-notes-v3.json": OBJECTS,
    "crm-objects-v3.json": OBJECTS,
    "crm-owners-v3.json": OWNERS,
    "crm-pipelines-v3.json": PIPELINES,
    "crm-properties-v3.json": PROPERTIES,
    "crm-quotes-v3.json": OBJECTS,
    "files-v3.json": FILES + FILES_DOWNLOAD,
    "webhooks-v3.json": WEBHOOKS,
    "2026-09/crm-associations-2026-03.json": ASSOCIATIONS + ASSOCIATIONS_LIST,
    "2026-09/crm-associations-schema.json": LABELS,
    "2026-09/crm-associations.json": ASSOCIATIONS,
    "2026-09/crm-companies.json": OBJECTS,
    "2026-09/crm-contacts.json": OBJECTS,
    "2026-09/crm-deals.json": OBJECTS,
    "2026-09/crm-notes.json": OBJECTS,
    "2026-09/crm-objects.json": OBJECTS,
    "2026-09/crm-owners.json": OWNERS,
    "2026-09/crm-pipelines.json": PIPELINES,
    "2026-09/crm-properties.json": PROPERTIES,
    "2026-09/crm-property-validations.json": VALIDATIONS,
    # crm-quotes.json also repeats the per-record association calls; crm-associations.json
    # is where the tests look for those, so only the object calls are kept here.
    "2026-09/crm-quotes.json": OBJECTS,
    "2026-09/crm-tasks.json": OBJECTS,
    "2026-09/files-2026-03.json": FILES,
    "2026-09/oauth.json": OAUTH,
    "2026-09/webhooks.json": WEBHOOKS,
}

METHODS = ("get", "put", "post", "patch", "delete")

# OpenAPI keywords that only document; dropped wherever they are keywords.
DOC_KEYS = {"description", "summary", "example", "examples", "externalDocs", "tags", "title"}

# Keys whose value maps *names* (of properties, statuses, media types, schemes, scopes…) to
# objects; inside such a map, keys are data and are never stripped.
NAME_MAPS = {
    "properties", "patternProperties", "definitions", "responses", "content", "headers",
    "links", "callbacks", "encoding", "variables", "scopes", "mapping", "schemas",
    "securitySchemes", "parameters", "requestBodies",
}

# Keywords whose value is data (not OpenAPI structure): copied as they are.
LITERALS = {"default", "enum", "const", "required"}


def is_doc(key: str) -> bool:
    return key in DOC_KEYS or key.startswith("x-")


def strip(value, names: bool = False):
    """`value` without documentation. `names`: `value` is a map of names to objects."""
    if isinstance(value, list):
        return [strip(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        if names:
            out[key] = strip(v)
        elif is_doc(key):
            continue
        elif key in LITERALS:
            out[key] = v
        elif key in NAME_MAPS and isinstance(v, dict):
            out[key] = strip(v, names=True)
        else:
            out[key] = strip(v)
    return out


def refs(value, found: set[str]) -> None:
    if isinstance(value, dict):
        for key, v in value.items():
            if key == "$ref" and isinstance(v, str):
                found.add(v)
            else:
                refs(v, found)
    elif isinstance(value, list):
        for v in value:
            refs(v, found)


def security_names(value, found: set[str]) -> None:
    for requirement in value or []:
        found.update(requirement)


def kept(name: str, doc: dict) -> dict:
    """The kept operations of `doc`, as a `paths` object (unstripped)."""
    rules = KEEP[name]
    used = [False] * len(rules)
    paths = {}
    for template, item in doc["paths"].items():
        ops = {}
        for method in METHODS:
            if method not in item:
                continue
            for i, (m, pattern) in enumerate(rules):
                if (m is None or m == method) and re.search(pattern, template):
                    used[i] = True
                    ops[method] = item[method]
        if ops:
            # Path-level fields (shared parameters, servers) go with the operations.
            shared = {k: v for k, v in item.items() if k not in METHODS}
            paths[template] = {**shared, **ops}
    unused = [rules[i] for i, u in enumerate(used) if not u]
    if unused:
        sys.exit(f"{name}: no operation matches {unused}; has the upstream spec changed?")
    return paths


def reduce(name: str, doc: dict) -> dict:
    paths = strip(kept(name, doc), names=True)
    components = doc.get("components", {})

    # Everything reachable from the kept operations, following $refs through components.
    reached: set[str] = set()
    todo: set[str] = set()
    refs(paths, todo)
    while todo:
        ref = todo.pop()
        if ref in reached:
            continue
        reached.add(ref)
        match = re.fullmatch(r"#/components/([^/]+)/([^/]+)", ref)
        if not match or match[2] not in components.get(match[1], {}):
            sys.exit(f"{name}: $ref {ref} does not resolve to a component")
        refs(strip(components[match[1]][match[2]]), todo)

    out_components: dict[str, dict] = {}
    for ref in reached:
        kind, key = ref.split("/")[2:]
        out_components.setdefault(kind, {})[key] = strip(components[kind][key])

    schemes: set[str] = set()
    security_names(doc.get("security"), schemes)
    for item in paths.values():
        for method in METHODS:
            if method in item:
                security_names(item[method].get("security"), schemes)
    for scheme in schemes:
        defined = components.get("securitySchemes", {})
        if scheme not in defined:
            sys.exit(f"{name}: security scheme {scheme} is not defined")
        out_components.setdefault("securitySchemes", {})[scheme] = strip(defined[scheme])

    out = {
        "openapi": doc["openapi"],
        "info": {"title": doc["info"]["title"], "version": doc["info"]["version"]},
        "paths": paths,
        "components": out_components,
    }
    for key in ("servers", "security"):
        if key in doc:
            out[key] = strip(doc[key])
    return out


def dump(value, depth: int = 0, width: int = 100) -> str:
    """JSON with sorted keys; a value that fits in `width` columns stays on one line.

    One line per scope requirement or small schema keeps the files small (about half the size
    of one key per line) and their diffs readable.
    """
    flat = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))
    if depth + len(flat) <= width or not isinstance(value, (dict, list)) or not value:
        return flat
    pad = " " * (depth + 1)
    if isinstance(value, dict):
        items = [
            f"{pad}{json.dumps(k, ensure_ascii=False)}: {dump(value[k], depth + 1, width)}"
            for k in sorted(value)
        ]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    items = [pad + dump(v, depth + 1, width) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * depth + "]"


def snapshot_date(source: Path) -> str:
    text = (source / "2026-09" / "README.md").read_text(encoding="utf-8")
    match = re.search(r"snapshot of (\d{4}-\d{2}-\d{2})", text)
    if not match:
        sys.exit(f"{source}/2026-09/README.md does not name its snapshot date")
    return match[1]


def readme(date: str, rows: list[tuple[str, str, int, int]], skipped: list[str]) -> str:
    lines = [
        "# HubSpot's OpenAPI specs, reduced for dealsync's tests",
        "",
        "Generated by `scripts/extract-openapi.py`; do not edit by hand.",
        "",
        f"Source: HubSpot's own published OpenAPI 3.0 descriptions, from the public repository",
        f"{UPSTREAM} (snapshot of {date}). The legacy v3/v4",
        "files are at the top of this folder, the date-versioned ones (2026-09, and the 2026-03",
        "files that still carry calls 2026-09 lacks) under `2026-09/`, each under its upstream name.",
        "",
        "Reduced to what the tests and the sandbox need: only the operations dealsync calls or the",
        "sandbox serves; no `description`, `summary`, `example(s)`, `externalDocs`, `tags`, schema",
        "`title` or `x-*` extension (so the files are not complete OpenAPI documents: a response",
        "has no `description`); of `components`, only what the kept operations reach through",
        "`$ref`s and the security schemes they name. Schemas, parameters, statuses and",
        "security requirements are otherwise HubSpot's, unchanged.",
        "",
        "| file | version | operations | components |",
        "|---|---|---|---|",
    ]
    lines += [f"| {f} | {v} | {o} | {c} |" for f, v, o, c in rows]
    lines += [
        "",
        "Not extracted (nothing in them is called or served): " + ", ".join(skipped) + ".",
        "",
        "To refresh from a newer snapshot (the output is deterministic: an unchanged source",
        "gives no diff):",
        "",
        "    python3 scripts/extract-openapi.py /path/to/shared/hubspot-openapi fixtures/hubspot-openapi",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    source, out = Path(argv[1]), Path(argv[2])
    date = snapshot_date(source)
    for sub in (out, out / "2026-09"):
        sub.mkdir(parents=True, exist_ok=True)
        # A file dropped from KEEP must not linger from an earlier run.
        for stale in sub.glob("*.json"):
            stale.unlink()
    rows = []
    for name in sorted(KEEP):
        doc = json.loads((source / name).read_text(encoding="utf-8"))
        reduced = reduce(name, doc)
        (out / name).write_text(dump(reduced) + "\n", encoding="utf-8")
        ops = sum(1 for item in reduced["paths"].values() for m in METHODS if m in item)
        comps = sum(len(v) for v in reduced["components"].values())
        rows.append((name, reduced["info"]["version"], ops, comps))
    skipped = sorted(
        str(p.relative_to(source))
        for p in [*source.glob("*.json"), *source.glob("2026-09/*.json")]
        if str(p.relative_to(source)) not in KEEP
    )
    (out / "README.md").write_text(readme(date, rows, skipped), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv)
