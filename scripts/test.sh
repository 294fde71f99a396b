#!/usr/bin/env bash
# Runs every Gantry test on a fresh machine: formatting, lints, then unit, contract and
# end-to-end tests against real components (git, openssl, terraform, SQLite files, a
# PostgreSQL cluster it starts in a temporary directory).
# Installs the Debian packages it needs when they are missing and it can; under CI
# (CI=true) a missing tool fails the run instead of skipping anything.
set -euo pipefail
cd "$(dirname "$0")/.."

missing_packages=()
require() { # command, Debian package ("" when not packaged)
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ -n "$2" ]; then missing_packages+=("$2"); return 0; fi
  echo "error: '$1' is required by the tests and is not on PATH." >&2
  case "$1" in
    terraform) echo "  Install Terraform from https://developer.hashicorp.com/terraform/install (1.5 or newer)." >&2 ;;
    cargo) echo "  Install Rust with rustup: https://rustup.rs" >&2 ;;
    docker) echo "  Install Docker Engine (Debian: apt-get install docker.io) and start it." >&2 ;;
  esac
  exit 1
}
require cargo ""
require git git
require openssl openssl
require terraform ""
require docker ""
require busybox busybox-static
require chromium chromium              # the web UI's browser test
require chromedriver chromium-driver
require python3 python3
require systemd-analyze systemd   # verifies deploy/systemd
if [ ${#missing_packages[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing_packages[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing_packages[@]}"
fi

# The docker executor's tests run containers on the local daemon.
if ! docker info >/dev/null 2>&1; then
  echo "error: the Docker daemon is not reachable (docker info failed)." >&2
  echo "  Start it: sudo systemctl start docker (or: sudo dockerd &), and make sure this user may use it." >&2
  exit 1
fi

# helm lints and renders deploy/helm in the chart tests; Debian does not package it.
if ! command -v helm >/dev/null 2>&1; then
  scripts/install-helm.sh
fi

# The S3 blob store's tests run against moto's S3 server (PyPI only, not packaged by Debian).
if ! python3 -c 'import moto.server' >/dev/null 2>&1; then
  echo "==> installing moto's S3 server"
  python3 -m pip install --quiet 'moto[server]' \
    || python3 -m pip install --quiet --break-system-packages 'moto[server]'
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

echo "==> formatting"
cargo fmt --all -- --check
echo "==> lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> building the binaries the end-to-end tests start"
cargo build --workspace --bins --locked
echo "==> building the static worker the container tests run in an image without a C library"
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --locked -p gantry-worker --target "$(uname -m)-unknown-linux-gnu"
echo "==> starting a throwaway PostgreSQL cluster for the PostgreSQL tests"
require_postgres() {
  for tool in initdb pg_ctl postgres; do
    command -v "$tool" >/dev/null 2>&1 && continue
    # Debian installs the server binaries outside PATH.
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$found" ] && [ -x "$found/$tool" ]; then PATH="$found:$PATH"; continue; fi
    echo "==> installing Debian package: postgresql"
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq && $sudo apt-get install -y -qq postgresql
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    PATH="$found:$PATH"
  done
  export PATH
}
require_postgres
postgres_dir=$(mktemp -d)
chmod 755 "$postgres_dir"  # the cluster runs as the postgres user when this runs as root
test_postgres="${CARGO_TARGET_DIR:-target}/debug/gantry-test-postgres"
GANTRY_TEST_POSTGRES_URL=$("$test_postgres" start "$postgres_dir/cluster")
export GANTRY_TEST_POSTGRES_URL
trap '"$test_postgres" stop "$postgres_dir/cluster" >/dev/null 2>&1 || true; rm -rf "$postgres_dir"' EXIT

echo "==> tests"
cargo nextest run --workspace --locked --no-fail-fast "$@"
