//! The `storepulse` command line outside of Kafka: schema listing and argument errors.

use std::process::Command;

fn storepulse(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_storepulse"))
        .args(args)
        .env_remove("STOREPULSE_CONFLUENT_IDS")
        .output()
        .expect("the binary runs")
}

#[test]
fn schemas_lists_every_version_with_its_wire_fingerprint_and_registry_id() {
    let out = storepulse(&["schemas", "--confluent-ids", "17=order_placed.v1"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let order = text
        .lines()
        .find(|l| l.starts_with("order_placed.v1"))
        .expect("order_placed is listed");
    assert!(order.contains("fd b2 1a 58 9b 6a be 66"), "{order}");
    assert!(order.trim_end().ends_with("17"), "{order}");
    assert_eq!(text.lines().count(), 5, "a header and four schemas: {text}");
}

#[test]
fn a_confluent_mapping_to_an_unknown_schema_is_refused_with_a_reason() {
    let out = storepulse(&["schemas", "--confluent-ids", "17=refund_issued.v1"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown schema \"refund_issued\""));
}

#[test]
fn migrate_applies_the_migrations_and_is_idempotent_and_never_prints_the_password() {
    // The local server trusts loopback, so a password in the URL is accepted and unused:
    // what matters is that it is not printed.
    let url = crate::helpers::database_url().replacen("://postgres@", "://postgres:hunter2@", 1);
    assert!(url.contains("hunter2"), "{url}");
    for _ in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_storepulse"))
            .arg("migrate")
            .env("STOREPULSE_DATABASE_URL", &url)
            .output()
            .expect("the binary runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            printed.contains("migrations applied to postgres://postgres:****@"),
            "{printed}"
        );
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}

#[test]
fn serve_refuses_a_config_file_with_an_unknown_key() {
    let path = std::env::temp_dir().join(format!("storepulse-{}.toml", rand::random::<u32>()));
    std::fs::write(&path, "[kafka]\nbrokerz = \"x\"\n").expect("written");
    let out = Command::new(env!("CARGO_BIN_EXE_storepulse"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("brokerz"));
}

#[test]
fn json_logs_are_one_object_a_line_with_level_target_and_message() {
    // serve with no broker to reach: it logs that it listens, then waits for Kafka.
    let mut child = Command::new(env!("CARGO_BIN_EXE_storepulse"))
        .arg("serve")
        .env("STOREPULSE_KAFKA_BROKERS", "127.0.0.1:1")
        .env("STOREPULSE_HTTP_ADDR", "127.0.0.1:0")
        .env("STOREPULSE_DATABASE_URL", crate::helpers::database_url())
        .env("STOREPULSE_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    std::thread::sleep(std::time::Duration::from_secs(4));
    child.kill().expect("killed");
    let out = child.wait_with_output().expect("reaped");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "serve logs: {stderr}");
    for line in lines {
        let json: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            json["level"].is_string() && json["target"].is_string(),
            "{line}"
        );
        assert!(json["fields"]["message"].is_string(), "{line}");
    }
}

#[test]
fn a_missing_broker_is_logged_once_per_10_s_per_client_not_per_retry() {
    // librdkafka reports "all brokers down" many times a second once its clients run
    // (278 error lines in 25 s before its logs were rate-limited).
    let mut child = Command::new(env!("CARGO_BIN_EXE_storepulse"))
        .arg("serve")
        .env("STOREPULSE_KAFKA_BROKERS", "127.0.0.1:1")
        .env("STOREPULSE_HTTP_ADDR", "127.0.0.1:0")
        .env("STOREPULSE_DATABASE_URL", crate::helpers::database_url())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    std::thread::sleep(std::time::Duration::from_secs(35));
    child.kill().expect("killed");
    let out = child.wait_with_output().expect("reaped");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors = stderr.lines().filter(|l| l.contains(" ERROR ")).count();
    assert!(
        (1..=12).contains(&errors),
        "{errors} error lines in 35 s: {stderr}"
    );
}
