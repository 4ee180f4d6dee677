"""The worker Deployment builder: a pure function of the spec."""

from __future__ import annotations

from gpufleet.resources import deployment, worker_env
from gpufleet.spec import parse_spec

BASE = {
    "broker": {"url": "redis://redis:6379/0", "passwordSecretRef": {"name": "redis", "key": "password"}},
    "queues": ["gpu", "gpu-high"],
    "worker": {
        "image": "example/worker:1",
        "gpus": 2,
        "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}},
        "nodeSelector": {"nvidia.com/gpu.product": "H100"},
        "env": [{"name": "GPUFLEET_POOL", "value": "threads"}, {"name": "EXTRA", "value": "1"}],
    },
}


def build(spec=BASE, replicas=3):
    return deployment(parse_spec(spec), namespace="ml", name="embed", uid="uid-1", replicas=replicas)


def container(dep):
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def env_of(dep):
    return {e["name"]: e for e in container(dep)["env"]}


def test_owned_labelled_and_sized():
    dep = build()
    meta = dep["metadata"]
    assert meta["name"] == "embed-workers" and meta["namespace"] == "ml"
    (owner,) = meta["ownerReferences"]
    assert owner["kind"] == "GpuTaskQueue" and owner["uid"] == "uid-1" and owner["controller"] is True
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "gpufleet"
    assert dep["spec"]["replicas"] == 3
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_gpu_request_equals_limit_with_the_extended_resource():
    res = container(build())["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == 2
    assert res["requests"]["cpu"] == "2" and res["limits"]["memory"] == "16Gi"
    mig = {**BASE, "worker": {**BASE["worker"], "gpuResource": "nvidia.com/mig-1g.10gb", "gpus": 1}}
    res = container(build(mig))["resources"]
    assert res["limits"] == {"memory": "16Gi", "nvidia.com/mig-1g.10gb": 1}
    cpu_only = {**BASE, "worker": {"image": "w", "gpus": 0}}
    assert "nvidia.com/gpu" not in str(container(build(cpu_only))["resources"])


def test_gpu_taint_is_tolerated_once():
    tolerations = build()["spec"]["template"]["spec"]["tolerations"]
    assert tolerations.count({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}) == 1


def test_command_consumes_the_queues():
    c = container(build())
    assert "command" not in c  # the image's ENTRYPOINT (tini) stays PID 1
    args = c["args"]
    assert args[0] == "celery"
    assert args[args.index("-A") + 1] == "gpufleet_worker.app:app"
    assert args[args.index("--queues") + 1] == "gpu,gpu-high"
    custom = {**BASE, "worker": {**BASE["worker"], "command": ["python", "-m", "mine"], "args": ["--x"]}}
    c = container(build(custom))
    assert (c["command"], c["args"]) == (["python", "-m", "mine"], ["--x"])


def test_password_comes_from_the_secret_not_the_spec():
    env = env_of(build())
    assert env["GPUFLEET_BROKER_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis",
        "key": "password",
    }
    assert env["GPUFLEET_BROKER_URL"]["value"] == "redis://redis:6379/0"
    url_secret = {**BASE, "broker": {"urlSecretRef": {"name": "b", "key": "url"}}}
    env = env_of(build(url_secret))
    assert env["GPUFLEET_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {"name": "b", "key": "url"}
    assert "value" not in env["GPUFLEET_BROKER_URL"]


def test_user_env_overrides_and_comes_last():
    env = worker_env(parse_spec(BASE), "ml", "embed")
    names = [e["name"] for e in env]
    assert names.count("GPUFLEET_POOL") == 1
    assert names[-2:] == ["GPUFLEET_POOL", "EXTRA"]
    assert {e["name"]: e.get("value") for e in env}["GPUFLEET_FLEET"] == "ml/embed"
    assert {e["name"]: e.get("value") for e in env}["GPUFLEET_REQUIRE_GPU"] == "1"


def test_liveness_reads_the_heartbeat():
    c = container(build())
    assert c["livenessProbe"]["exec"]["command"] == ["python", "-m", "gpufleet_worker.health"]
    assert build()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 3600


def test_tls_ca_is_mounted_from_its_secret():
    tls = {
        **BASE,
        "broker": {
            **BASE["broker"],
            "tls": {"enabled": True, "caSecretRef": {"name": "ca", "key": "ca.pem"}},
        },
    }
    dep = build(tls)
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["broker-ca"]["secret"] == {"secretName": "ca", "items": [{"key": "ca.pem", "path": "ca.crt"}]}
    assert env_of(dep)["GPUFLEET_BROKER_TLS_CA_FILE"]["value"] == "/etc/gpufleet/broker-ca/ca.crt"


def test_building_is_deterministic():
    assert build() == build()


def test_worker_pods_meet_the_restricted_pod_security_standard():
    pod = build()["spec"]["template"]["spec"]
    c = container(build())
    # The restricted profile's rules (kubernetes.io/docs/concepts/security/pod-security-standards).
    assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsUser"] == 10001 != 0
    assert not any("hostPath" in v for v in pod["volumes"]) and "hostNetwork" not in pod
    # Read-only root, with the writable paths as volumes.
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/tmp"] == "tmp" and mounts["/tmp/gpufleet"] == "gpufleet-run"
    assert {v["name"]: v for v in pod["volumes"]}["tmp"] == {"name": "tmp", "emptyDir": {}}
    assert env_of(build())["CUPY_CACHE_DIR"]["value"].startswith("/tmp/")


def test_users_of_their_own_image_choose_its_user():
    spec = {**BASE, "worker": {**BASE["worker"], "securityContext": {"runAsUser": 1000, "fsGroup": 2000,
                                                                      "readOnlyRootFilesystem": False}}}  # fmt: skip
    dep = build(spec)
    pod = dep["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (1000, 10001, 2000)
    assert container(dep)["securityContext"]["readOnlyRootFilesystem"] is False
    assert pod["runAsNonRoot"] is True
