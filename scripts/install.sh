#!/usr/bin/env bash
# Installs everything bpfshare needs on a fresh Debian/Ubuntu machine, idempotently:
# system packages (clang, llvm, bpftool, iproute2, libbpf headers, lua5.1), a Python virtual
# environment with the package, its `dev` extra (what the local control plane needs) and its test
# tools, the example BPF objects, and the local control plane (built from Go modules into
# ~/.cache/bpfshare; a cold build takes many minutes, a warm one seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v clang >/dev/null || need_apt+=(clang)
command -v llvm-strip >/dev/null || need_apt+=(llvm)
command -v bpftool >/dev/null || need_apt+=(bpftool)
command -v tc >/dev/null || need_apt+=(iproute2)
command -v nsenter >/dev/null || need_apt+=(util-linux)
command -v setpriv >/dev/null || need_apt+=(util-linux)  # tests/deploy: the DaemonSet's capabilities only
command -v make >/dev/null || need_apt+=(make)
command -v lua5.1 >/dev/null || need_apt+=(lua5.1)  # tests/deploy: the Argo CD health check
[ -f /usr/include/bpf/bpf_helpers.h ] || need_apt+=(libbpf-dev)
[ -f /usr/include/linux/bpf.h ] || need_apt+=(linux-libc-dev)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v buildah >/dev/null || need_apt+=(buildah)  # bpfshare cluster image
command -v debootstrap >/dev/null || need_apt+=(debootstrap)  # the image's local base
command -v containerd >/dev/null || need_apt+=(containerd)  # the node; ctr imports the image
command -v runc >/dev/null || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
command -v iptables >/dev/null || need_apt+=(iptables)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install: apt packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "install: python virtual environment in $VENV"
  python3 -m venv "$VENV"
fi
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "install: python dependencies"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e '.[dev,test]'
  touch "$stamp"
fi

echo "install: example BPF objects (bpf/ -> /opt/bpfshare/bpf, where examples/ refers to them)"
make -s -C bpf
if [ -w /opt ] || [ "$(id -u)" -eq 0 ]; then make -s -C bpf install; fi

if [ "${BPFSHARE_SKIP_CONTROL_PLANE:-0}" != 1 ]; then
  "$VENV/bin/bpfshare" cluster build
fi
echo "install: done"
