#!/usr/bin/env bash
# The container image's build and install steps, one subcommand each. The Dockerfile RUNs them;
# tests/deploy/test_image.py runs the same steps on the host into a temporary directory (there is no
# container engine on the development machines), so a broken step fails a test, not only a build.
#
#   image-build.sh builder-deps          apt packages of the builder stage (clang, llvm, libbpf-dev, make)
#   image-build.sh bpf DESTDIR           compile bpf/*.c into DESTDIR/opt/bpfshare/bpf (source tree untouched)
#   image-build.sh wheel OUTDIR          build the agent's bpfshare wheel into OUTDIR (no bpfshare.controlplane)
#   image-build.sh runtime-deps          apt packages of the runtime stage (iproute2, bpftool)
#   image-build.sh install-wheel DIR     pip-install DIR/bpfshare-*.whl (and its dependencies)
#
# Environment: PYTHON (default python3) builds the wheel; PIP (default "$PYTHON -m pip") installs it;
# APT_GET (default apt-get; "apt-get -s" only simulates, as the tests do), APT_UPDATE=0 (no apt-get
# update), APT_CLEAN=1 (remove the package lists afterwards: the Dockerfile sets it); CLANG; MULTIARCH.
# Run from anywhere: paths are relative to the repository root (the Docker build context).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
read -r -a PIP <<< "${PIP:-$PYTHON -m pip}"
read -r -a APT <<< "${APT_GET:-apt-get}"

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ "${APT_UPDATE:-1}" = 1 ]; then "${APT[@]}" update -qq; fi
  "${APT[@]}" install -y -qq --no-install-recommends "$@"
  if [ "${APT_CLEAN:-0}" = 1 ]; then rm -rf /var/lib/apt/lists/*; fi
}

step=${1:?usage: image-build.sh builder-deps|bpf DESTDIR|wheel OUTDIR|runtime-deps|install-wheel DIR}
case "$step" in
  builder-deps)
    # linux-libc-dev: <linux/bpf.h>; libbpf-dev: <bpf/bpf_helpers.h>; libc6-dev: <asm/*.h> paths.
    apt_install clang llvm libbpf-dev linux-libc-dev libc6-dev make bpftool  # bpftool: vmlinux.h for core_*.c
    ;;
  bpf)
    dest=${2:?usage: image-build.sh bpf DESTDIR}
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    # The Makefile finds the multiarch include directory with gcc or dpkg-architecture, neither of
    # which the slim image has: ask Python, which was built for this platform.
    multiarch=${MULTIARCH:-$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("MULTIARCH") or "")')}
    make -s -C "$ROOT/bpf" O="$build" MULTIARCH="$multiarch" ${CLANG:+CLANG="$CLANG"}
    make -s -C "$ROOT/bpf" O="$build" MULTIARCH="$multiarch" ${CLANG:+CLANG="$CLANG"} \
      install DESTDIR="$dest/opt/bpfshare/bpf"
    ;;
  wheel)
    out=${2:?usage: image-build.sh wheel OUTDIR}
    mkdir -p "$out"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # Build from a copy of exactly what the image ships (no egg-info, venv or caches of a checkout).
    # Not the local control plane (bpfshare.controlplane: `bpfshare cluster`, `bpfshare demo`), which
    # is for development, with the `dev` extra; the agent has no use for it. .dockerignore keeps it
    # out of the build context too.
    cp -r "$ROOT/pyproject.toml" "$ROOT/README.md" "$work/"
    mkdir -p "$work/operator"
    cp -r "$ROOT/operator/bpfshare" "$work/operator/"
    rm -rf "$work/operator/bpfshare/controlplane"
    find "$work" -name __pycache__ -prune -exec rm -rf {} +
    "${PIP[@]}" wheel --quiet --no-deps --wheel-dir "$out" "$work"
    ;;
  runtime-deps)
    # iproute2: tc and ip, to look at what the agent attached; bpftool: to inspect maps and programs
    # by hand (docs/troubleshooting.md). util-linux (mount, mountpoint) is in every Debian image.
    apt_install iproute2 bpftool
    ;;
  install-wheel)
    dir=${2:?usage: image-build.sh install-wheel DIR}
    wheels=("$dir"/bpfshare-*.whl)
    [ -f "${wheels[0]}" ] || { echo "image-build.sh: no bpfshare wheel in $dir" >&2; exit 1; }
    # The wheel alone, without extras: the `dev` extra is the control plane's, which the image lacks.
    "${PIP[@]}" install --quiet --no-cache-dir "${wheels[@]}"
    ;;
  *)
    echo "image-build.sh: unknown step $step" >&2
    exit 2
    ;;
esac
