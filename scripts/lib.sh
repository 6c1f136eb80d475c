# Shared by the scripts: repo root, build prerequisites, and the cargo target folder.
# Sourced, not run.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Brings the local stack up and exports its variables; stops here if it did not come up
# (`eval "$(scripts/stack up)"` would go on: eval of nothing succeeds).
stack_up() {
    local env
    env=$("$repo/scripts/stack" up "$@") || die "the local stack did not come up (scripts/stack logs)"
    eval "$env"
}

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

# The cluster drill (tests/cluster_drill): HAProxy from Debian's packages in front of the
# edges.
ensure_cluster_tools() {
    if ! command -v haproxy >/dev/null; then
        [ "$(id -u)" = 0 ] || { echo "haproxy is needed (apt-get install haproxy)" >&2; exit 1; }
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >&2
    fi
}

# The browser tests: Debian's Chromium with playwright-core and Debian's Firefox ESR with
# puppeteer-core, both from npm (never a browser download of their own).
ensure_browser_tools() {
    if [ ! -x /usr/bin/chromium ]; then
        [ "$(id -u)" = 0 ] || { echo "chromium is needed (apt-get install chromium)" >&2; exit 1; }
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
    fi
    if [ ! -x /usr/bin/firefox-esr ]; then
        [ "$(id -u)" = 0 ] || { echo "firefox-esr is needed (apt-get install firefox-esr)" >&2; exit 1; }
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends firefox-esr >&2
    fi
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        [ "$(id -u)" = 0 ] || { echo "node and npm are needed (apt-get install nodejs npm)" >&2; exit 1; }
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >&2
    fi
    # The TLS test makes its own CA and certificate with openssl.
    if ! command -v openssl >/dev/null; then
        [ "$(id -u)" = 0 ] || { echo "openssl is needed (apt-get install openssl)" >&2; exit 1; }
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl >&2
    fi
    if [ ! -d "$repo/tests/browser/node_modules/playwright-core" ] \
        || [ ! -d "$repo/tests/browser/node_modules/puppeteer-core" ]; then
        (cd "$repo/tests/browser" && npm ci --no-audit --no-fund --loglevel=error >&2)
    fi
}
