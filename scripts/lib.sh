# Shared by the scripts: repo root, build prerequisites, and the cargo target folder.
# Sourced, not run.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '\n==> %s\n' "$*" >&2; }

# The Rust toolchain comes with the machine (rustup); librdkafka is built from source by
# the rdkafka crate and needs a C compiler and make.
ensure_build_tools() {
    command -v cargo >/dev/null || {
        echo "cargo not found: install Rust (https://rustup.rs), version 1.95 or newer" >&2
        exit 1
    }
    if ! command -v cc >/dev/null || ! command -v make >/dev/null; then
        [ "$(id -u)" = 0 ] || { echo "a C compiler and make are needed (apt-get install build-essential)" >&2; exit 1; }
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends build-essential >&2
    fi
}
