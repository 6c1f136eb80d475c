//! The functional core stays pure: `crates/core` depends on no I/O crate, so the compiler
//! refuses any I/O there. This test guards that dependency list (normal and build
//! dependencies; dev-dependencies may read fixtures).

use std::path::PathBuf;

/// Crates that do I/O or run an async runtime: none may be a dependency of the core.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "tokio-util",
    "rdkafka",
    "sqlx",
    "axum",
    "hyper",
    "reqwest",
    "tower",
    "socket2",
    "mimalloc",
    "tracing-subscriber",
];

#[test]
fn the_core_crate_depends_on_no_io_crate() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/core/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("the core's manifest");
    let manifest: toml::Table = text.parse().expect("valid TOML");
    let mut names = Vec::new();
    for section in ["dependencies", "build-dependencies"] {
        if let Some(table) = manifest.get(section).and_then(|d| d.as_table()) {
            names.extend(table.keys().cloned());
        }
    }
    assert!(
        names.iter().any(|n| n == "serde"),
        "dependencies are read: {names:?}"
    );
    for name in &names {
        assert!(
            !FORBIDDEN.contains(&name.as_str()),
            "crates/core depends on {name}: the core does no I/O (move that code to the shell)"
        );
    }
}
