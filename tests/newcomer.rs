//! What a newcomer meets first, run through the built binary: the sandbox's `--env-file` that the
//! rehearsal recipe in `config/sandbox.toml` sources, and logs without colour codes when stderr
//! is not a terminal.
//!
//! Every child process is held by a `Reaped`, which kills and waits on it when dropped, so a
//! failed assertion leaves nothing running.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A child process killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dealsync sandbox` on 127.0.0.1:0 with `extra` arguments, stdout and stderr piped, logging
/// at `info` in the default format; NO_COLOR is left out unless `no_color` gives it.
fn sandbox(extra: &[&str], no_color: Option<&str>) -> Reaped {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dealsync"));
    cmd.args([
        "sandbox",
        "--listen",
        "127.0.0.1:0",
        "--portals",
        "hubspot,partner-a",
    ])
    .args(extra)
    .env("DEALSYNC_LOG", "info")
    .env_remove("DEALSYNC_LOG_FORMAT")
    .env_remove("JOURNAL_STREAM")
    .env_remove("NO_COLOR")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    Reaped(cmd.spawn().expect("start dealsync sandbox"))
}

/// The startup line from the sandbox's stdout (it is printed once the sandbox listens).
async fn startup(child: &mut Reaped) -> Value {
    let out = child.0.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("reader")
    .expect("startup line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("startup JSON {line:?}: {e}"))
}

/// One variable after sourcing `file` in a POSIX shell, as the recipe does.
fn sourced(file: &Path, name: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(". \"$1\" && printf %s \"${name}\""))
        .arg("sh")
        .arg(file)
        .output()
        .expect("sh");
    assert!(out.status.success(), "sourcing failed: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `--env-file` writes owner-only `export` lines that a shell can source, carrying each portal's
/// token (which the sandbox accepts) and webhook secret under the names `config/sandbox.toml`
/// reads.
#[tokio::test]
async fn sandbox_env_file_exports_tokens_the_sandbox_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("sandbox.env");
    let arg = file.to_str().expect("utf-8 path");
    let mut child = sandbox(&["--env-file", arg], None);
    let start = startup(&mut child).await;
    common::eventually("the env file is written", Duration::from_secs(10), || {
        let exists = file.exists();
        async move { exists.then_some(()) }
    })
    .await;

    let mode = std::fs::metadata(&file)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}: the tokens are secrets");
    let text = std::fs::read_to_string(&file).expect("read");
    assert_eq!(
        text.lines().count(),
        4,
        "two lines per portal: {}",
        text.len()
    );
    assert!(text
        .lines()
        .all(|l| l.starts_with("export DEALSYNC_SANDBOX_")));

    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let base = start["base_url"].as_str().expect("base_url");
    let portals = start["portals"].as_array().expect("portals");
    for (p, var) in portals.iter().zip(["HUBSPOT", "PARTNER_A"]) {
        let token = sourced(&file, &format!("DEALSYNC_SANDBOX_{var}_TOKEN"));
        let secret = sourced(&file, &format!("DEALSYNC_SANDBOX_{var}_WEBHOOK_SECRET"));
        assert_eq!(token, p["token"].as_str().expect("token"), "{var} token");
        assert_eq!(
            secret,
            p["webhook_secret"].as_str().expect("secret"),
            "{var} secret"
        );
        let answer = http
            .get(format!("{base}/crm/v3/owners"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("request");
        assert_eq!(answer.status().as_u16(), 200, "{var}'s token is accepted");
    }
}

/// The sandbox's stderr up to and including the first line that contains `needle`.
async fn log_until(child: &mut Reaped, needle: &'static str) -> String {
    let err = child.0.stderr.take().expect("stderr");
    tokio::task::spawn_blocking(move || {
        let mut seen = String::new();
        for line in BufReader::new(err.take(64 * 1024)).lines() {
            let line = line.expect("log line");
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return seen;
            }
        }
        panic!("stderr ended before {needle:?}: {seen:?}");
    })
    .await
    .expect("reader")
}

/// Logs piped to a file or another program carry no ANSI colour codes, with or without
/// NO_COLOR: colour is only for a terminal.
#[tokio::test]
async fn logs_to_a_pipe_carry_no_colour_codes() {
    for no_color in [None, Some("1")] {
        let mut child = sandbox(&[], no_color);
        startup(&mut child).await;
        let logs = log_until(&mut child, "sandbox serving").await;
        assert!(
            !logs.contains("\x1b["),
            "NO_COLOR={no_color:?}: colour codes in {logs:?}"
        );
    }
}
