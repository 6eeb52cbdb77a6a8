//! Rules about which module may use which, checked by reading the sources (issue #16): the
//! sandbox is a test double and the demo's stage, so production modules never import it; and
//! dealsync's property names are spelled in one place, `properties.rs`.

use std::path::{Path, PathBuf};

/// Files allowed to name `sandbox::`: the sandbox itself, the demo (which runs on it), the
/// library root that declares it, and the CLI, whose `sandbox` command starts it.
fn may_use_sandbox(rel: &Path) -> bool {
    rel.starts_with("sandbox")
        || rel == Path::new("demo.rs")
        || rel == Path::new("lib.rs")
        || rel == Path::new("cli.rs")
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files whose `"dealsync_…"` literals are not property names: metric names, and the uids of
/// the HubSpot project's components.
fn may_spell_dealsync_names(rel: &Path) -> bool {
    rel == Path::new("properties.rs")
        || rel == Path::new("metrics.rs")
        || rel == Path::new("project.rs")
}

/// Every line of code holding `needle` outside the allowed files, as `file:line: text`.
fn found(src: &Path, needle: &str, allowed: fn(&Path) -> bool) -> Vec<String> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut found = Vec::new();
    for path in files {
        let rel = path.strip_prefix(src).expect("under src/");
        if allowed(rel) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read a source file");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains(needle) {
                found.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

fn sandbox_uses(src: &Path) -> Vec<String> {
    found(src, "sandbox::", may_use_sandbox)
}

#[test]
fn no_production_module_imports_the_sandbox() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = sandbox_uses(&src);
    assert!(
        found.is_empty(),
        "production code must not depend on the sandbox (use crate::time for time \
         helpers):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_an_import_when_there_is_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("engine")).unwrap();
    std::fs::write(
        dir.path().join("engine/mod.rs"),
        "// sandbox:: in a comment is fine\nlet t = crate::sandbox::model::iso(0);\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("demo.rs"), "use crate::sandbox::start;\n").unwrap();
    let found = sandbox_uses(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("engine/mod.rs:2:"), "{found:?}");
}

#[test]
fn property_names_are_spelled_only_in_properties_rs() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = found(&src, "\"dealsync_", may_spell_dealsync_names);
    assert!(
        found.is_empty(),
        "name dealsync's properties through crate::properties:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_property_check_sees_a_raw_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("team.rs"),
        "// \"dealsync_team_add\" in a comment is fine\nlet p = \"dealsync_team_add\";\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("metrics.rs"), "\"dealsync_jobs_total\"\n").unwrap();
    let found = found(dir.path(), "\"dealsync_", may_spell_dealsync_names);
    assert_eq!(found, vec!["team.rs:2: let p = \"dealsync_team_add\";"]);
}

/// The wiring runs one way: config produces settings, the daemon builds its parts from a
/// config, and the engine and the notifier know neither (issue #16: config → daemon → engine
/// → notify → config was a cycle).
#[test]
fn config_daemon_engine_and_notify_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    type Allowed = fn(&Path) -> bool;
    let forbidden: [(&str, Allowed); 3] = [
        ("crate::daemon", |rel| rel != Path::new("config.rs")),
        ("crate::config", |rel| {
            !(rel.starts_with("engine") || rel == Path::new("notify.rs"))
        }),
        ("crate::daemon", |rel| {
            !(rel.starts_with("engine") || rel == Path::new("notify.rs"))
        }),
    ];
    let mut found_all = Vec::new();
    for (needle, allowed) in forbidden {
        found_all.extend(found(&src, needle, allowed));
    }
    assert!(
        found_all.is_empty(),
        "a dependency against the wiring's direction:\n{}",
        found_all.join("\n")
    );
}
