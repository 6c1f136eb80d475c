//! The functional core stays pure: its source never names an I/O crate or the clock.
//! (A grep, not a proof; the compiler would enforce it if the core moved into a crate of
//! its own without those dependencies.)

use std::path::{Path, PathBuf};

/// Files of the core: decoding, validation, samples, the aggregates, the scenario generator.
const CORE: &[&str] = &[
    "src/events",
    "src/aggregate",
    "src/simulate/scenario.rs",
    "src/stream.rs",
    "src/simulate/scenario",
];

const FORBIDDEN: &[&str] = &[
    "tokio",
    "rdkafka",
    "sqlx",
    "axum",
    "std::fs",
    "std::net",
    "std::io::stdin",
    "SystemTime",
    "Instant",
    "thread_rng",
    "rand::rng()",
    "std::env",
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("readable folder") {
            rust_files(&entry.expect("entry").path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_owned());
    }
}

#[test]
fn core_modules_name_no_io_crate_and_no_clock() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for core in CORE {
        rust_files(&root.join(core), &mut files);
    }
    assert!(files.len() >= 6, "the core files are found: {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable source");
        // Tests beside the code may read fixtures from disk.
        let code = if file.ends_with("tests.rs") {
            ""
        } else {
            text.as_str()
        };
        for word in FORBIDDEN {
            assert!(
                !code.contains(word),
                "{} mentions {word}: the core does no I/O and reads no clock",
                file.display()
            );
        }
    }
}
