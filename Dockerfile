# syntax=docker/dockerfile:1
# The bpfshare agent image: `bpfshare agent` with the example BPF objects under /opt/bpfshare/bpf.
#
#   docker build -t bpfshare/agent:0.1.0 .
#
# Every step is a subcommand of scripts/image-build.sh, which tests/deploy/test_image.py also runs
# on the host (this repository's machines have no container engine), so the steps stay tested.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- builder: compile bpf/*.c with clang, build the wheel ------------------------------------------
# (operator/bpfshare without controlplane/, the development-only local control plane: .dockerignore
# leaves it out of the context and the wheel step out of the wheel)
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY scripts/image-build.sh scripts/
RUN scripts/image-build.sh builder-deps
COPY pyproject.toml README.md ./
COPY operator/bpfshare operator/bpfshare
COPY bpf bpf
RUN scripts/image-build.sh bpf /out \
 && scripts/image-build.sh wheel /out/wheels

# -- runtime: slim Python, the package, the objects -------------------------------------------------
FROM ${PYTHON_IMAGE}
COPY scripts/image-build.sh /usr/local/lib/bpfshare/image-build.sh
RUN APT_CLEAN=1 /usr/local/lib/bpfshare/image-build.sh runtime-deps
COPY --from=builder /out/wheels /tmp/wheels
RUN /usr/local/lib/bpfshare/image-build.sh install-wheel /tmp/wheels && rm -rf /tmp/wheels
COPY --from=builder /out/opt/bpfshare/bpf /opt/bpfshare/bpf
COPY scripts/mount-bpffs.sh /usr/local/bin/bpfshare-mount-bpffs
# Python writes no .pyc at run time (the root filesystem is read-only in the DaemonSet).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["bpfshare", "agent"]
