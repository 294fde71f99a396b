# The gantry-runner image: what the docker executor runs a stack's run in when the stack
# names no runner image of its own (GANTRY_DEFAULT_RUNNER_IMAGE, default
# gantry-runner:<version>). busybox for a shell and its tools, terraform, and the static
# gantry-worker; no C library, no package manager. It is built FROM scratch out of a
# root filesystem scripts/runner-image.sh assembles from the host's busybox-static,
# terraform and a static worker build, so it builds without a registry:
#
#   scripts/runner-image.sh                     # gantry-runner:<version>
#   scripts/runner-image.sh registry.example.com/gantry-runner:1.2.3
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/bin HOME=/tmp CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1
ARG VERSION=unknown
ARG REVISION=unknown
# The version of the terraform it carries: a run initialization policy reads it as
# static_run_environment.terraform_version (nothing of the image runs before the policy).
ARG TERRAFORM_VERSION=
LABEL org.opencontainers.image.title="gantry-runner" \
      org.opencontainers.image.description="Runs Gantry runs: busybox, terraform and the static gantry-worker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/gantry-dev/gantry" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.gantry.terraform-version="${TERRAFORM_VERSION}"
# The user the reference's runner images run as; the docker executor asks for it too.
USER 1983:1983
WORKDIR /tmp
CMD ["/bin/sh"]
