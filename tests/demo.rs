//! `dealsync demo` end to end through the real binary: it exits 0 only when every step was
//! verified against the sandbox, and it ends with the status table.

use std::process::Command;

#[test]
fn demo_verifies_every_step_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_dealsync"))
        .arg("demo")
        .env("DEALSYNC_LOG", "warn")
        .output()
        .expect("run dealsync demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in 1..=6 {
        assert!(
            stdout.contains(&format!("\n{step}. ")),
            "step {step} missing: {stdout}"
        );
    }
    assert!(!stdout.contains("failed"), "{stdout}");
    assert!(stdout.matches("   ✔ ").count() >= 8, "{stdout}");
    assert!(stdout.contains("DEAD LETTERS  0 open of "), "{stdout}");
    assert!(stdout.contains("6 steps verified"), "{stdout}");
}
