"""Pure builders for GPUs asked for through Dynamic Resource Allocation (resource.k8s.io/v1).

A claim-based fleet's pods each name one ResourceClaimTemplate; the ResourceClaim controller makes one claim per
pod from it, owned by the pod, so a pod that goes releases its devices with it. The template the operator owns is
named after a hash of its spec: a template's spec cannot change, so a new spec is a new template (and a new pod
template in the Deployment, which rolls the workers onto it). The old one stays, owned by the queue like the new,
until the queue goes: a ReplicaSet of the earlier spec (a rollback) still makes its pods' claims from it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gpufleet.spec import ClaimSpec, QueueSpec

API_VERSION = "resource.k8s.io/v1"
POD_CLAIM = "gpus"  # the claim's name in the pod spec, which the container's resources.claims names
REQUEST = "gpu"  # the one device request of the operator's template


def template_spec(claim: ClaimSpec) -> dict[str, Any]:
    """The `spec` of the operator's ResourceClaimTemplate: one request of `count` devices of the class, each
    satisfying every selector."""
    exactly: dict[str, Any] = {
        "deviceClassName": claim.device_class_name,
        "allocationMode": "ExactCount",
        "count": claim.count,
    }
    if claim.selectors:
        exactly["selectors"] = [{"cel": {"expression": e}} for e in claim.selectors]
    return {"spec": {"devices": {"requests": [{"name": REQUEST, "exactly": exactly}]}}}


def template_name(name: str, claim: ClaimSpec) -> str:
    """The template the fleet's pods claim from: the user's own, or the operator's for this spec."""
    if claim.template_name:
        return claim.template_name
    digest = hashlib.sha256(json.dumps(template_spec(claim), sort_keys=True).encode()).hexdigest()[:10]
    return f"{name}-gpus-{digest}"


def pod_claims(spec: QueueSpec, name: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(the pod's resourceClaims, the worker container's resources.claims); both empty without a claim."""
    claim = spec.worker.claim
    if claim is None:
        return [], []
    return [{"name": POD_CLAIM, "resourceClaimTemplateName": template_name(name, claim)}], [
        {"name": POD_CLAIM}
    ]
