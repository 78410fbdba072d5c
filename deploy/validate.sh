#!/usr/bin/env bash
# Schema check of deploy/kubernetes/ (run by .ci/run): the kustomization
# renders (`kubectl kustomize`, where kubectl is installed), and every
# built-in kind (Deployment, Service, ConfigMap, RBAC, PDB, ...) validates
# strictly — unknown fields are errors — against the Kubernetes OpenAPI
# schemas that the kubernetes-validate PyPI package ships (offline). The
# Gateway API kinds (HTTPRoute, InferencePool) have no schema there: their
# fields are checked by tests/deploy.rs against the GIE v1 API.
# Exits 2 (with a notice) when the checker cannot be installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.37.0
if ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$VERSION" >/dev/null 2>&1 || {
    echo "validate: kubernetes-validate could not be installed from PyPI" >&2
    exit 2
  }
fi
files=(deploy/kubernetes/*.yaml)
if command -v kubectl >/dev/null; then
  rendered="$(mktemp --suffix=.yaml)"
  trap 'rm -f "$rendered"' EXIT
  kubectl kustomize deploy/kubernetes >"$rendered"
  files=("$rendered")
fi
# --quiet prints warnings (kinds without a schema) and failures only.
kubernetes-validate --strict --quiet "${files[@]}"
echo "validate: deploy/kubernetes manifests passed the schema check"
