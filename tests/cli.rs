//! The command line as an operator meets it: `--help` on every command, `--version`, shell
//! completions, and exit codes that tell usage, config and unavailable errors apart.

use std::process::{Command, Output};

fn dealsync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dealsync"))
        .args(args)
        .env("DEALSYNC_LOG", "warn")
        .output()
        .expect("run dealsync")
}

#[test]
fn every_command_has_help_and_the_binary_a_version() {
    let v = dealsync(&["--version"]);
    assert!(v.status.success());
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("dealsync {}", env!("CARGO_PKG_VERSION"))
    );
    for cmd in [
        "run",
        "check-config",
        "setup",
        "probe",
        "status",
        "replay",
        "sandbox",
        "demo",
        "completions",
    ] {
        let h = dealsync(&[cmd, "--help"]);
        assert!(h.status.success(), "{cmd} --help");
        let text = String::from_utf8_lossy(&h.stdout);
        assert!(text.contains("Usage: dealsync"), "{cmd}: {text}");
    }
}

#[test]
fn completions_are_generated_for_the_common_shells() {
    for shell in ["bash", "zsh", "fish"] {
        let o = dealsync(&["completions", shell]);
        assert!(o.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("replay") && text.contains("status"),
            "{shell}"
        );
    }
}

#[test]
fn exit_codes_distinguish_usage_config_and_unavailable() {
    // Usage: clap rejects a bad command line, or a replay that selects nothing, with 2.
    assert_eq!(dealsync(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        dealsync(&["replay", "--config", "x.toml"]).status.code(),
        Some(2)
    );
    // Config: a file that does not exist names itself and what to do.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let o = dealsync(&["check-config", "--config", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.toml"));
    // Unavailable: a valid config whose store directory cannot be created.
    let cfg = dir.path().join("dealsync.toml");
    std::fs::write(
        &cfg,
        "[store]\npath = \"/proc/dealsync/x.db\"\ndead_letter_path = \"/proc/dealsync/dl.jsonl\"\n[hubspot]\nbase_url = \"http://127.0.0.1:9\"\ntoken_env = \"T\"\n[[partners]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:9\"\ntoken_env = \"T\"\n[partners.stage_map]\na = \"a\"\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_dealsync"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("T", "t")
        .env("DEALSYNC_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(69));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot open the store"), "{err}");
    assert!(err.contains("writable"), "says what to do: {err}");
}
