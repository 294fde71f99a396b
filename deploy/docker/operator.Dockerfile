# The gantry-operator image: the operator, and the launcher that run pods' `init` and
# `launcher-sidecar` containers start from the same image (its entrypoint, with the
# argument `init` or `sidecar`), with the worker binary next to it: `init` copies it into
# the run pod's binaries volume, and the worker container runs it inside the stack's
# runner image, whatever C library that image has, so it is built static. The Helm
# chart runs `gantry-operator` as the command.
#
#   docker build -f deploy/docker/operator.Dockerfile -t registry.example.com/gantry-dev/gantry-operator:0.1.0 .
#
# The launcher checks out stacks with the real `git`, so the runtime image carries it.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p gantry-operator -p gantry-launcher \
      --bin gantry-operator --bin gantry-launcher \
 && RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked \
      -p gantry-worker --target "$(uname -m)-unknown-linux-gnu" \
 && cp "target/$(uname -m)-unknown-linux-gnu/release/gantry-worker" target/release/gantry-worker

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/gantry-operator /src/target/release/gantry-launcher \
     /src/target/release/gantry-worker /usr/local/bin/
# The chart's pod security context asks for a non-root user; run pods' launcher
# containers follow the pool's spec.pod options.
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/gantry-launcher"]
