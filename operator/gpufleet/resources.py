"""Pure builders of the Kubernetes objects a GpuTaskQueue owns. They return dicts and touch nothing."""

from __future__ import annotations

from typing import Any

from gpufleet import claims
from gpufleet.crd import GROUP, KIND, VERSION
from gpufleet.model import (
    BUSY_LABEL,
    DELETION_COST,
    DO_NOT_DISRUPT,
    FLEET_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SAFE_TO_EVICT,
)
from gpufleet.spec import QueueSpec, SentinelSpec
from gpufleet_worker import contract
from gpufleet_worker.contract import Env as E

CA_MOUNT = "/etc/gpufleet/broker-ca"


def deployment_name(name: str) -> str:
    return f"{name}-workers"


def selector_labels(name: str) -> dict[str, str]:
    return {FLEET_LABEL: name, "app.kubernetes.io/component": "worker"}


def labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/name": "gpufleet-worker",
        "app.kubernetes.io/instance": name,
        MANAGED_BY_LABEL: MANAGED_BY,
    }


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _secret_env(var: str, ref) -> dict[str, Any]:
    return {"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def sentinel_url(sentinel: SentinelSpec) -> str:
    """kombu's sentinel:// broker URL, one per sentinel joined by ';', without credentials."""
    return ";".join(
        f"sentinel://[{h}]:{p}" if ":" in h else f"sentinel://{h}:{p}" for h, p in sentinel.sentinels
    )


def sentinel_env(sentinel: SentinelSpec) -> list[dict[str, Any]]:
    env = [
        {"name": E.BROKER_URL, "value": sentinel_url(sentinel)},
        {"name": E.BROKER_SENTINEL_MASTER, "value": sentinel.master_name},
    ]
    if sentinel.password_secret_ref:
        env.append(_secret_env(E.BROKER_SENTINEL_PASSWORD, sentinel.password_secret_ref))
    return env


def worker_env(spec: QueueSpec, namespace: str, name: str) -> list[dict[str, Any]]:
    """The environment of docs/worker-contract.md, then the user's own variables (which may override)."""
    b, w = spec.broker, spec.worker
    env: list[dict[str, Any]] = [
        {"name": E.FLEET, "value": f"{namespace}/{name}"},
        {"name": E.POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    if b.sentinel:
        env += sentinel_env(b.sentinel)
    elif b.url_secret_ref:
        env.append(_secret_env(E.BROKER_URL, b.url_secret_ref))
    else:
        env.append({"name": E.BROKER_URL, "value": b.url})
    if b.password_secret_ref:
        env.append(_secret_env(E.BROKER_PASSWORD, b.password_secret_ref))
    if b.database is not None:
        env.append({"name": E.BROKER_DB, "value": str(b.database)})
    if b.tls.enabled and b.tls.insecure_skip_verify:
        env.append({"name": E.BROKER_TLS_INSECURE, "value": "1"})
    if b.tls.enabled and b.tls.ca_secret_ref:
        env.append({"name": E.BROKER_TLS_CA_FILE, "value": f"{CA_MOUNT}/ca.crt"})
    env += [
        {"name": E.GLOBAL_KEYPREFIX, "value": b.global_keyprefix},
        {"name": E.PRIORITY_STEPS, "value": ",".join(str(s) for s in b.priority_steps)},
        {"name": E.PRIORITY_SEP, "value": b.separator},
        {"name": E.UNACKED_KEY, "value": b.unacked_key},
        {"name": E.QUEUES, "value": ",".join(spec.queues)},
        {"name": E.POOL, "value": w.pool},
        {"name": E.CONCURRENCY, "value": str(w.slots)},
        {"name": E.VISIBILITY_TIMEOUT, "value": str(w.visibility_timeout_seconds)},
        {"name": E.TASK_TIME_LIMIT, "value": str(w.task_time_limit_seconds)},
        {"name": E.HEARTBEAT_FILE, "value": contract.HEARTBEAT_FILE},
        {"name": E.GPUS, "value": str(w.gpus_per_pod)},
        {"name": contract.CUPY_CACHE_DIR[0], "value": contract.CUPY_CACHE_DIR[1]},
        {"name": E.STATE_INTERVAL, "value": f"{contract.STATE_INTERVAL_SECONDS:g}"},
    ]
    if w.gpus_per_pod > 0 and w.require_gpu:
        env.append({"name": E.REQUIRE_GPU, "value": "1"})
    overridden = {var["name"] for var in w.env}
    return [var for var in env if var["name"] not in overridden] + [dict(var) for var in w.env]


def worker_command(spec: QueueSpec) -> tuple[list[str], list[str]]:
    w = spec.worker
    if w.command or w.args:
        return list(w.command), list(w.args)
    # args only: the image's ENTRYPOINT (tini) stays PID 1 and forwards SIGTERM to Celery.
    return [], [
        "celery", "-A", w.celery_app, "worker",
        "--pool", w.pool,
        "--concurrency", str(w.slots),
        "--queues", ",".join(spec.queues),
        "--hostname", "$(GPUFLEET_POD_NAME)@gpufleet",
        "--loglevel", "INFO",
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip


def _resources(spec: QueueSpec) -> dict[str, Any]:
    w = spec.worker
    out: dict[str, dict[str, Any]] = {k: dict(v) for k, v in w.resources.items()}
    if w.gpus > 0 and w.claim is None:
        # Extended resources cannot be overcommitted: request equals limit.
        for kind in ("requests", "limits"):
            out.setdefault(kind, {})[w.gpu_resource] = w.gpus
    return out


def _tolerations(spec: QueueSpec) -> list[dict[str, Any]]:
    w = spec.worker
    tolerations = [dict(t) for t in w.tolerations]
    gpu_taint = {"key": w.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
    # GPU nodes carry this taint whether their GPUs are a device plugin's or a DRA driver's.
    if w.gpus_per_pod > 0 and gpu_taint not in tolerations:
        tolerations.append(gpu_taint)
    return tolerations


def deployment(spec: QueueSpec, *, namespace: str, name: str, uid: str, replicas: int) -> dict[str, Any]:
    """The worker Deployment of one GpuTaskQueue, as applied with server-side apply."""
    w = spec.worker
    command, args = worker_command(spec)
    container: dict[str, Any] = {
        "name": "worker",
        "image": w.image,
        "imagePullPolicy": w.image_pull_policy,
        **({"command": command} if command else {}),
        "args": args,
        "env": worker_env(spec, namespace, name),
        "resources": _resources(spec),
        "volumeMounts": [{"name": "gpufleet-run", "mountPath": contract.RUN_DIR}],
        # A worker that exits with an error leaves its log's last lines as its termination message: the queue's
        # condition quotes them (a celeryApp that does not import says why).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "livenessProbe": {
            "exec": {"command": ["python", "-m", "gpufleet_worker.health"]},
            "periodSeconds": 20,
            "timeoutSeconds": 10,
            "failureThreshold": 3,
        },
        # The heartbeat appears only once CUDA is initialised; give a cold GPU node time before liveness counts.
        "startupProbe": {
            "exec": {"command": ["python", "-m", "gpufleet_worker.health"]},
            "periodSeconds": 10,
            "timeoutSeconds": 10,
            "failureThreshold": 60,
        },
        # The restricted Pod Security Standard, whatever the namespace enforces.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": w.security.read_only_root_filesystem,
        },
    }
    pod_claims, container_claims = claims.pod_claims(spec, name)
    if container_claims:
        container["resources"]["claims"] = container_claims
    # The only writable paths: scratch for Python, Celery and CuPy's kernel cache; the heartbeat's directory.
    container["volumeMounts"].insert(0, {"name": "tmp", "mountPath": "/tmp"})
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "gpufleet-run", "emptyDir": {}},
    ]
    ca = spec.broker.tls.ca_secret_ref if spec.broker.tls.enabled else None
    if ca:
        volumes.append(
            {
                "name": "broker-ca",
                "secret": {"secretName": ca.name, "items": [{"key": ca.key, "path": "ca.crt"}]},
            }
        )
        container["volumeMounts"].append({"name": "broker-ca", "mountPath": CA_MOUNT, "readOnly": True})

    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": w.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": w.security.run_as_user,
            "runAsGroup": w.security.run_as_group,
            "fsGroup": w.security.fs_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    optional = {
        "nodeSelector": dict(w.node_selector) or None,
        "tolerations": _tolerations(spec) or None,
        "affinity": dict(w.affinity) if w.affinity else None,
        "priorityClassName": w.priority_class_name,
        "serviceAccountName": w.service_account_name,
        "imagePullSecrets": [{"name": s} for s in w.image_pull_secrets] or None,
        "resourceClaims": pod_claims or None,
    }
    pod_spec |= {k: v for k, v in optional.items() if v is not None}

    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name),
            "namespace": namespace,
            "labels": labels(name),
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(name)},
            # A GPU fleet has no spare GPU to surge onto: replace pods one at a time instead.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": {
                "metadata": {
                    "labels": {**dict(w.pod_labels), **labels(name)},
                    "annotations": dict(w.pod_annotations),
                },
                "spec": pod_spec,
            },
        },
    }


def busy_pdb(*, namespace: str, name: str, uid: str) -> dict[str, Any]:
    """A PodDisruptionBudget that allows no eviction of the fleet's busy workers (the operator labels a pod busy
    while its worker runs a task): `kubectl drain` and the Eviction API wait for them, and evict idle ones."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": f"{name}-busy-workers",
            "namespace": namespace,
            "labels": labels(name),
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": {
            "maxUnavailable": 0,
            "selector": {"matchLabels": {**selector_labels(name), BUSY_LABEL: "true"}},
        },
    }


def claim_template(spec: QueueSpec, *, namespace: str, name: str, uid: str) -> dict[str, Any] | None:
    """The ResourceClaimTemplate the operator owns for a claim-based fleet (each pod's claim is made from it);
    None when the fleet asks for GPUs as an extended resource or names a template of its own."""
    claim = spec.worker.claim
    if claim is None or claim.template_name:
        return None
    return {
        "apiVersion": claims.API_VERSION,
        "kind": "ResourceClaimTemplate",
        "metadata": {
            "name": claims.template_name(name, claim),
            "namespace": namespace,
            "labels": labels(name),
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": claims.template_spec(claim),
    }


# What the cluster autoscaler and Karpenter honour: a node with such a pod is not scaled down or consolidated.
PROTECTION = {SAFE_TO_EVICT: "false", DO_NOT_DISRUPT: "true"}
BUSY_DELETION_COST = (
    "1000"  # above any idle pod's (which carry none, or a negative one): a rollout takes idle first
)


def pod_metadata(protect: bool | None, deletion_cost: str | None) -> dict[str, Any]:
    """The metadata patch of one worker pod: protected while busy (or released), and/or a deletion cost."""
    out: dict[str, Any] = {}
    if protect is not None:
        out["labels"] = {BUSY_LABEL: "true" if protect else None}
        out["annotations"] = {k: v if protect else None for k, v in PROTECTION.items()}
        out["annotations"][DELETION_COST] = BUSY_DELETION_COST if protect else None
    if deletion_cost is not None:
        out.setdefault("annotations", {})[DELETION_COST] = deletion_cost
    return out
