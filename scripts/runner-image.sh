#!/usr/bin/env bash
# Builds the runner image the docker executor uses for stacks that name none
# (deploy/docker/runner.Dockerfile), offline: busybox-static and terraform from this
# machine and a static gantry-worker, in an image FROM scratch.
#
#   scripts/runner-image.sh [TAG]          TAG defaults to gantry-runner:<version>
#
# GANTRY_RUNNER_WORKER names the static worker binary to put in (default: the release
# build of `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p gantry-worker
# --target <arch>-unknown-linux-gnu`, built here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
tag="${1:-gantry-runner:$version}"
target="$(uname -m)-unknown-linux-gnu"
worker="${GANTRY_RUNNER_WORKER:-${CARGO_TARGET_DIR:-target}/$target/release/gantry-worker}"

fail() { echo "error: $*" >&2; exit 1; }
command -v docker >/dev/null || fail "docker is not on PATH: install Docker Engine and start it"
busybox=$(command -v busybox) || fail "busybox is not on PATH (Debian: apt-get install busybox-static)"
terraform=$(command -v terraform) || fail "terraform is not on PATH"
# ldd lists a "=>" line per shared library; a static binary has none.
dynamic() { ldd "$1" 2>/dev/null | grep -q '=>'; }
if dynamic "$busybox"; then
  fail "$busybox is linked dynamically; the image has no C library (Debian: apt-get install busybox-static)"
fi
if [ ! -x "$worker" ]; then
  [ -n "${GANTRY_RUNNER_WORKER:-}" ] && fail "GANTRY_RUNNER_WORKER=$worker is not an executable file"
  echo "==> building the static worker ($worker)"
  RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked -p gantry-worker --target "$target"
fi
if dynamic "$worker"; then
  fail "$worker is linked dynamically; build it with RUSTFLAGS='-C target-feature=+crt-static' and --target $target"
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
root="$context/rootfs"
mkdir -p "$root/bin" "$root/usr/local/bin" "$root/etc" "$root/tmp"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
cp "$(readlink -f "$terraform")" "$root/usr/local/bin/terraform"
cp "$worker" "$root/usr/local/bin/gantry-worker"
printf 'root:x:0:0:root:/root:/bin/sh\ngantry:x:1983:1983:gantry run:/tmp:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\ngantry:x:1983:\n' > "$root/etc/group"
cp deploy/docker/runner.Dockerfile "$context/Dockerfile"

revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# The initialization policy reads it from the image's label: nothing of the image runs before.
terraform_version=$("$terraform" version -json 2>/dev/null \
  | sed -n 's/.*"terraform_version": *"\([^"]*\)".*/\1/p' | head -n 1)
[ -n "$terraform_version" ] || fail "$terraform version -json did not say its version"
echo "==> building $tag"
DOCKER_BUILDKIT=0 docker build --quiet --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
  --build-arg "TERRAFORM_VERSION=$terraform_version" \
  -t "$tag" "$context" >/dev/null
echo "$tag"
