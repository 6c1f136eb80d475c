//! The stack script is idempotent: `up` on a running stack only checks it.

use std::path::PathBuf;
use std::process::Command;

fn stack(arg: &str) -> std::process::Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/stack");
    Command::new("bash")
        .arg(script)
        .arg(arg)
        .output()
        .expect("scripts/stack runs")
}

#[test]
fn stack_up_twice_is_harmless_and_status_reports_both_services() {
    for attempt in 1..=2 {
        let out = stack("up");
        assert!(
            out.status.success(),
            "up #{attempt} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout);
        assert!(env.contains("export STOREPULSE_KAFKA_BROKERS="), "{env}");
        assert!(env.contains("export STOREPULSE_DATABASE_URL="), "{env}");
    }
    let status = stack("status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "status: {text}");
    assert!(text.contains("kafka     up"), "{text}");
    assert!(text.contains("postgres  up"), "{text}");
}

#[test]
fn an_unknown_stack_command_prints_usage_and_fails() {
    let out = stack("sideways");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("scripts/stack up"));
}
