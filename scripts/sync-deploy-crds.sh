#!/usr/bin/env bash
# Copy crds/*.yaml into deploy/base/crds/ (kustomize loads nothing outside deploy/base).
# tests/deploy/test_manifests.py fails while the copies differ.
set -euo pipefail
cd "$(dirname "$0")/.."
cp crds/bpfmap.yaml crds/bpfprogram.yaml deploy/base/crds/
