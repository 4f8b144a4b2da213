#!/usr/bin/env bash
# Copy crds/*.yaml to where they are read from besides crds/: deploy/base/crds/ (kustomize loads
# nothing outside deploy/base) and operator/bpfshare/api/crds/ (the package's copy: the validation of
# `apply -f` and the agent, and the demo's CRD install). Tests fail while a copy differs.
set -euo pipefail
cd "$(dirname "$0")/.."
for dir in deploy/base/crds operator/bpfshare/api/crds; do
  cp crds/*.yaml "$dir/"
done
