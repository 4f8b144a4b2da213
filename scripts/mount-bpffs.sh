#!/bin/sh
# Mount bpffs at DIR (default /sys/fs/bpf) unless a bpffs is already mounted there. The agent
# DaemonSet's init container runs it (installed in the image as /usr/local/bin/bpfshare-mount-bpffs)
# with the host's /sys/fs/bpf mounted Bidirectional, so that the mount reaches the host and
# survives the pod: pins must outlive agent restarts. Idempotent; POSIX sh (the image has no bash
# guarantee).
set -eu
dir=${1:-/sys/fs/bpf}
fstype=$(stat -f -c %T "$dir")
if [ "$fstype" = bpf_fs ]; then
  echo "bpffs already mounted at $dir"
  exit 0
fi
mount -t bpf bpffs "$dir"
fstype=$(stat -f -c %T "$dir")
if [ "$fstype" != bpf_fs ]; then
  echo "mounted bpffs at $dir, but it shows as $fstype" >&2
  exit 1
fi
echo "mounted bpffs at $dir"
