"""GPUs by Dynamic Resource Allocation: the spec's claim form, the ResourceClaimTemplate the operator owns, the
pods' claims, and that the plan counts claimed devices as GPUs (budget, status)."""

from __future__ import annotations

import pytest

from gpufleet import claims
from gpufleet.model import Deployment, Depth, Reading, Snapshot
from gpufleet.plan import FleetState, plan_tick
from gpufleet.resources import claim_template, deployment
from gpufleet.spec import SpecError, parse_spec

H100 = "device.attributes['gpu.nvidia.com'].productName == 'NVIDIA H100 80GB HBM3'"
AT_LEAST_40G = "device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('40Gi')) >= 0"


def spec_with(claim: dict | None = None, **worker):
    raw = {"broker": {"url": "redis://redis:6379/0"}, "queues": ["gpu"], "worker": {"image": "w:1", **worker}}
    if claim is not None:
        raw["worker"]["claim"] = claim
    return parse_spec(raw)


def pod_spec(spec, name="embed"):
    return deployment(spec, namespace="ml", name=name, uid="u1", replicas=2)["spec"]["template"]["spec"]


def test_the_claim_form_defaults_to_one_whole_nvidia_gpu():
    w = spec_with({}).worker
    assert (w.claim.device_class_name, w.claim.count, w.claim.selectors, w.claim.template_name) == (
        "gpu.nvidia.com", 1, (), None,
    )  # fmt: skip
    assert w.gpus_per_pod == 1
    assert spec_with({"count": 3}).worker.gpus_per_pod == 3
    assert spec_with(None, gpus=2).worker.gpus_per_pod == 2 and spec_with(None, gpus=2).worker.claim is None


def test_the_template_asks_for_count_devices_of_the_class_with_every_selector():
    spec = spec_with({"deviceClassName": "mig.nvidia.com", "count": 2, "selectors": [H100, AT_LEAST_40G]})
    body = claim_template(spec, namespace="ml", name="embed", uid="u1")
    assert body["apiVersion"] == "resource.k8s.io/v1" and body["kind"] == "ResourceClaimTemplate"
    meta = body["metadata"]
    assert meta["namespace"] == "ml" and meta["name"].startswith("embed-gpus-")
    (owner,) = meta["ownerReferences"]
    assert owner["kind"] == "GpuTaskQueue" and owner["uid"] == "u1" and owner["controller"] is True
    assert meta["labels"]["gpufleet.dev/fleet"] == "embed"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "gpufleet"
    (request,) = body["spec"]["spec"]["devices"]["requests"]
    assert request == {
        "name": "gpu",
        "exactly": {
            "deviceClassName": "mig.nvidia.com",
            "allocationMode": "ExactCount",
            "count": 2,
            "selectors": [{"cel": {"expression": H100}}, {"cel": {"expression": AT_LEAST_40G}}],
        },
    }
    plain = claim_template(spec_with({}), namespace="ml", name="embed", uid="u1")
    assert "selectors" not in plain["spec"]["spec"]["devices"]["requests"][0]["exactly"]


def test_the_template_name_follows_its_spec_which_the_api_server_keeps_immutable():
    one = claims.template_name("embed", spec_with({}).worker.claim)
    assert one == claims.template_name("embed", spec_with({"count": 1}).worker.claim)  # same spec, same name
    assert one != claims.template_name("embed", spec_with({"count": 2}).worker.claim)
    assert one != claims.template_name("embed", spec_with({"selectors": [H100]}).worker.claim)
    assert one != claims.template_name("other", spec_with({}).worker.claim)
    assert len(claims.template_name("q" * 200, spec_with({}).worker.claim)) <= 253


def test_each_pod_claims_from_the_template_and_the_worker_container_uses_the_claim():
    spec = spec_with({"count": 2})
    pod = pod_spec(spec)
    name = claim_template(spec, namespace="ml", name="embed", uid="u1")["metadata"]["name"]
    assert pod["resourceClaims"] == [{"name": "gpus", "resourceClaimTemplateName": name}]
    (container,) = pod["containers"]
    assert container["resources"]["claims"] == [{"name": "gpus"}]
    # No extended resource besides the claim; the GPU nodes' taint is still tolerated.
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GPUFLEET_GPUS"] == "2" and env["GPUFLEET_REQUIRE_GPU"] == "1"


def test_a_template_of_the_users_is_claimed_from_and_none_is_made():
    spec = spec_with({"templateName": "h100-shared", "count": 2})
    assert claim_template(spec, namespace="ml", name="embed", uid="u1") is None
    assert pod_spec(spec)["resourceClaims"] == [{"name": "gpus", "resourceClaimTemplateName": "h100-shared"}]
    assert spec.worker.gpus_per_pod == 2


def test_the_extended_resource_form_is_unchanged():
    pod = pod_spec(spec_with(None, gpus=2))
    assert "resourceClaims" not in pod
    (container,) = pod["containers"]
    assert container["resources"] == {"requests": {"nvidia.com/gpu": 2}, "limits": {"nvidia.com/gpu": 2}}
    assert claim_template(spec_with(None, gpus=2), namespace="ml", name="embed", uid="u1") is None


@pytest.mark.parametrize(
    "worker, claim, path",
    [
        ({"gpus": 2}, {}, "spec.worker.claim"),
        ({"gpus": 0}, {"count": 1}, "spec.worker.claim"),
        ({}, {"templateName": "mine", "selectors": [H100]}, "spec.worker.claim.templateName"),
        ({}, {"templateName": "mine", "deviceClassName": "gpu.nvidia.com"}, "spec.worker.claim.templateName"),
    ],
)
def test_one_form_or_the_other(worker, claim, path):
    with pytest.raises(SpecError) as err:
        spec_with(claim, **worker)
    assert err.value.path == path


def _snap(spec, name, replicas, queued):
    return Snapshot(
        namespace="ml", name=name, uid=f"u-{name}", generation=1, now=100.0, spec=spec,
        reading=Reading({"gpu": Depth(queued, 0)}, {}), deployment=Deployment(replicas, replicas, replicas), pods={},
    )  # fmt: skip


def test_the_budget_and_the_status_count_claimed_devices_like_extended_resources():
    claimed, extended = spec_with({"count": 2}), spec_with(None, gpus=2)
    snaps = [_snap(claimed, "claimed", 1, 20), _snap(extended, "extended", 1, 20)]
    plans = plan_tick(snaps, {}, {}, 8)
    shares = {key[1]: p.status["gpuShare"]["gpus"] for key, p in plans.items()}
    # 8 GPUs, 2 per pod on either side, equal weights: two pods (four devices) each.
    assert shares == {"claimed": 4, "extended": 4}
    assert all(p.status["gpus"] == 2 for p in plans.values())  # one pod running, two GPUs
    # The template goes with the Deployment of a new generation, before it.
    assert plans[("ml", "claimed")].claim_template["kind"] == "ResourceClaimTemplate"
    assert plans[("ml", "extended")].claim_template is None


def test_a_new_fleet_applies_its_template_with_its_deployment():
    spec = spec_with({})
    plans = plan_tick([_snap(spec, "fresh", 0, 0)], {("ml", "fresh"): FleetState(uid="u-fresh")}, {}, None)
    p = plans[("ml", "fresh")]
    name = p.claim_template["metadata"]["name"]
    assert p.deployment["spec"]["template"]["spec"]["resourceClaims"][0]["resourceClaimTemplateName"] == name
