#!/usr/bin/env bash
# Renders manifests/ from the Helm chart with its default values, for `kubectl apply -f manifests/` and
# `kubectl apply -k manifests/`. manifests/ is never edited by hand; tests/chart fails when it is stale.
#
#   hack/render-manifests.sh          rewrite manifests/
#   hack/render-manifests.sh DIR      write to DIR instead (the staleness test compares the two)
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-manifests}"
HELM="${HELM:-$(hack/build-k8s.sh --print)/helm}"
NAMESPACE=gpufleet-system

mkdir -p "$OUT"
{
  echo "# Rendered from charts/gpufleet by hack/render-manifests.sh with the chart's default values. Do not edit:"
  echo "# change the chart (or its values) and run the script again."
  echo "---"
  echo "apiVersion: v1"
  echo "kind: Namespace"
  echo "metadata:"
  echo "  name: $NAMESPACE"
  echo "  labels:"
  echo "    app.kubernetes.io/part-of: gpufleet"
  echo "    # The operator pod meets the restricted Pod Security Standard; nothing else runs here."
  echo "    pod-security.kubernetes.io/enforce: restricted"
  # --kube-version: the chart's oldest supported version, so the output does not depend on how helm was built.
  "$HELM" template gpufleet charts/gpufleet --namespace "$NAMESPACE" --kube-version 1.34.0 --skip-tests
} > "$OUT/gpufleet.yaml"

# Named `Kustomization`, not kustomization.yaml: `kubectl apply -f manifests/` reads every *.yaml of the folder
# and would try to apply the kustomization itself.
cat > "$OUT/Kustomization" <<'YAML'
# For `kubectl apply -k manifests/`; written by hack/render-manifests.sh.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - gpufleet.yaml
YAML
