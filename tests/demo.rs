//! `dealsync demo` end to end through the real binary: it exits 0 only when every step was
//! verified against the sandbox, and it ends with the status table. partner-a is installed by
//! OAuth, and every call goes to the date-versioned paths.

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
    for step in 1..=14 {
        assert!(
            stdout.contains(&format!("\n{step}. ")),
            "step {step} missing: {stdout}"
        );
    }
    assert!(!stdout.contains("failed"), "{stdout}");
    assert!(stdout.matches("   ✔ ").count() >= 23, "{stdout}");
    // partner-a installs by OAuth; the daemon holds no token for it; dated paths only.
    assert!(
        stdout.contains("partner-a installs dealsync's app from its install link"),
        "{stdout}"
    );
    assert!(
        stdout.contains("partner-a is installed (HubSpot portal "),
        "{stdout}"
    );
    assert!(
        stdout.contains("the store binds partner-a to portal "),
        "{stdout}"
    );
    assert!(stdout.contains("1 code exchanged"), "{stdout}");
    assert!(
        stdout.contains("API calls used HubSpot's 2026-09 paths (files 2026-03)"),
        "{stdout}"
    );
    // Shared messages both ways, with files and the thread, and a private note kept home.
    assert!(stdout.contains("HubSpot shows the message"), "{stdout}");
    assert!(
        stdout.contains("the partner's CRM shows the message"),
        "{stdout}"
    );
    assert!(
        stdout.contains("it is a reply to the partner's original message"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the partner's deal has no trace of it"),
        "{stdout}"
    );
    assert!(stdout.contains("MESSAGES  active 4"), "{stdout}");
    // A registration: refused with the reason, then accepted and linked.
    assert!(
        stdout.contains("refused, and the deal says why: the deal has no associated contact"),
        "{stdout}"
    );
    assert!(stdout.contains("✔ registered: partner deal"), "{stdout}");
    // HubSpot adding a partner: held until confirmed, then the deal and the welcome note.
    assert!(stdout.contains("partner-b's deal"), "{stdout}");
    assert!(
        stdout.contains("the welcome note is its first shared message"),
        "{stdout}"
    );
    assert!(!stdout.contains("Not in this demo yet"), "{stdout}");
    assert!(stdout.contains("DEAD LETTERS  0 open of "), "{stdout}");
    assert!(stdout.contains("15 steps verified"), "{stdout}");
    // partner-b refuses custom note properties: its messages are marked by the tag.
    assert!(
        stdout.contains("so it arrives as a note starting with #shared"),
        "{stdout}"
    );
    assert!(
        stdout.contains("HubSpot's rep reads it without the tag; the private note was never read"),
        "{stdout}"
    );
    // Notifications (signed, verified by the demo) and the deal team.
    assert!(stdout.contains("✔ message_shared → hubspot: "), "{stdout}");
    assert!(stdout.contains("✔ comment_added → partner: "), "{stdout}");
    assert!(
        stdout.contains("refused alex.rep@hubspot.example: a user of HubSpot's account"),
        "{stdout}"
    );
    assert!(
        stdout.contains("HubSpot sees the partner's team: partner-a: Blair Seller"),
        "{stdout}"
    );
}
