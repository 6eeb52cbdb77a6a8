//! Rules about which module may use which, checked by reading the sources (issue #16): the
//! sandbox is a test double and the demo's stage, so production modules never import it.

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

/// Every `sandbox::` outside the allowed files, as `file:line: text`.
fn sandbox_uses(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut found = Vec::new();
    for path in files {
        let rel = path.strip_prefix(src).expect("under src/");
        if may_use_sandbox(rel) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read a source file");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("sandbox::") {
                found.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    found
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
