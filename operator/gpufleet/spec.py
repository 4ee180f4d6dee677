"""The typed GpuTaskQueue spec: defaults from the CRD, plus the checks its schema cannot express."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gpufleet.crd import defaulted_spec
from gpufleet_worker import contract


class SpecError(ValueError):
    """A spec the schema let through but the operator cannot honour; `path` names the field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class TLSSpec:
    enabled: bool = False
    insecure_skip_verify: bool = False
    ca_secret_ref: SecretKeyRef | None = None


@dataclass(frozen=True)
class SentinelSpec:
    """Redis Sentinel: where to ask for the master of `master_name` (kombu's sentinel:// transport)."""

    master_name: str
    sentinels: tuple[tuple[str, int], ...]
    password_secret_ref: SecretKeyRef | None = None  # the sentinels' own password, not the master's


@dataclass(frozen=True)
class BrokerSpec:
    url: str | None = None
    sentinel: SentinelSpec | None = None
    url_secret_ref: SecretKeyRef | None = None
    password_secret_ref: SecretKeyRef | None = None
    database: int | None = None
    tls: TLSSpec = TLSSpec()
    global_keyprefix: str = ""
    priority_steps: tuple[int, ...] = contract.KOMBU_PRIORITY_STEPS
    separator: str = contract.KOMBU_SEP
    unacked_key: str = contract.UNACKED_KEY


@dataclass(frozen=True)
class SecuritySpec:
    run_as_user: int = 10001
    run_as_group: int = 10001
    fs_group: int = 10001
    read_only_root_filesystem: bool = True


DEFAULT_DEVICE_CLASS = "gpu.nvidia.com"  # the DeviceClass of NVIDIA's DRA driver for whole GPUs


@dataclass(frozen=True)
class ClaimSpec:
    """GPUs asked for through Dynamic Resource Allocation: each worker pod gets its own ResourceClaim, made from
    the ResourceClaimTemplate the operator owns (device class, count, selectors) or from the user's own."""

    device_class_name: str = DEFAULT_DEVICE_CLASS
    count: int = 1  # devices per pod (with template_name: what that template allocates, for the GPU budget)
    selectors: tuple[str, ...] = ()  # CEL expressions over a device's attributes and capacity, all must hold
    template_name: str | None = None  # a ResourceClaimTemplate of the user's, in the queue's namespace


@dataclass(frozen=True)
class WorkerSpec:
    image: str
    image_pull_policy: str = "IfNotPresent"
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    celery_app: str = "gpufleet_worker.app:app"
    pool: str = "solo"
    concurrency: int = 1
    gpus: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    require_gpu: bool = True
    task_time_limit_seconds: int = 3600
    visibility_timeout_seconds: int = 7200
    termination_grace_period_seconds: int = 3600
    resources: Mapping[str, Any] = field(default_factory=dict)
    env: tuple[Mapping[str, Any], ...] = ()
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] | None = None
    priority_class_name: str | None = None
    service_account_name: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    security: SecuritySpec = field(default_factory=lambda: SecuritySpec())
    claim: ClaimSpec | None = None  # None: the extended resource (gpus of gpu_resource)

    @property
    def gpus_per_pod(self) -> int:
        """The GPUs one worker pod holds, however it asks for them: what capacity and budget count."""
        return self.claim.count if self.claim else self.gpus

    @property
    def slots(self) -> int:
        """Tasks one worker pod runs at once."""
        return 1 if self.pool == "solo" else self.concurrency


@dataclass(frozen=True)
class ScalingSpec:
    min_replicas: int = 0
    max_replicas: int = 10
    target_tasks_per_replica: int = 1
    activation_threshold: int = 1
    poll_interval_seconds: float = 1.0
    scale_up_stabilization_seconds: int = 0
    scale_down_stabilization_seconds: int = 60
    max_step_up: int | None = None  # None: no limit
    max_step_down: int | None = None  # None: no limit
    idle_seconds_before_zero: int = 300
    paused: bool = False
    drain_within_seconds: int | None = None
    target_wait_seconds: int | None = None  # None: automatic (policy.wait_target); 0: off
    gpu_surge: int = 0
    priority: int = 0
    weight: int = 1


@dataclass(frozen=True)
class QueueSpec:
    broker: BrokerSpec
    queues: tuple[str, ...]
    worker: WorkerSpec
    scaling: ScalingSpec = ScalingSpec()


def _ref(raw: Mapping[str, Any] | None) -> SecretKeyRef | None:
    return SecretKeyRef(raw["name"], raw["key"]) if raw else None


def _check_url(url: str | None) -> None:
    if url is None:
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise SpecError("spec.broker.url", f"not a valid URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss"):
        raise SpecError("spec.broker.url", f"scheme must be redis or rediss, not {parts.scheme!r}")
    if not parts.hostname:
        raise SpecError("spec.broker.url", "has no host")
    if parts.username or parts.password:
        raise SpecError("spec.broker.url", "must not carry credentials; use broker.passwordSecretRef")


def _host_port(raw: str, path: str) -> tuple[str, int]:
    """ "host:port" or "[v6]:port" (the CRD's pattern) into a pair; the port must be one TCP allows."""
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SpecError(path, f"{raw!r} is not host:port")
    if not 1 <= int(port) <= 65535:
        raise SpecError(path, f"{raw!r}: the port must be within 1..65535")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _sentinel(raw: Mapping[str, Any] | None) -> SentinelSpec | None:
    if raw is None:
        return None
    hosts = tuple(
        _host_port(h, f"spec.broker.sentinel.sentinels[{i}]") for i, h in enumerate(raw["sentinels"])
    )
    return SentinelSpec(raw["masterName"], hosts, _ref(raw.get("passwordSecretRef")))


def _claim(raw: Mapping[str, Any] | None) -> ClaimSpec | None:
    if raw is None:
        return None
    if raw.get("templateName") and ("deviceClassName" in raw or raw.get("selectors")):
        # The CRD refuses it too; this is for a spec read without the API server (files, the simulator).
        raise SpecError(
            "spec.worker.claim.templateName",
            "names a ResourceClaimTemplate of your own: put deviceClassName and selectors in it, not here",
        )
    return ClaimSpec(
        device_class_name=raw.get("deviceClassName", DEFAULT_DEVICE_CLASS),
        count=raw.get("count", 1),
        selectors=tuple(raw.get("selectors", ())),
        template_name=raw.get("templateName"),
    )


def parse_spec(raw: Mapping[str, Any]) -> QueueSpec:
    """Read a GpuTaskQueue spec (as served, or as written by hand) into the typed model.

    Raises SpecError for what the CRD schema cannot refuse at `kubectl apply` time.
    """
    try:
        s = defaulted_spec(raw)
        b, w, sc = s["broker"], s["worker"], s["scaling"]
        tls = b["tls"]
        broker = BrokerSpec(
            url=b.get("url"),
            sentinel=_sentinel(b.get("sentinel")),
            url_secret_ref=_ref(b.get("urlSecretRef")),
            password_secret_ref=_ref(b.get("passwordSecretRef")),
            database=b.get("database"),
            tls=TLSSpec(tls["enabled"], tls["insecureSkipVerify"], _ref(tls.get("caSecretRef"))),
            global_keyprefix=b["globalKeyprefix"],
            priority_steps=tuple(b["prioritySteps"]),
            separator=contract.separator(b["separator"]),
            unacked_key=b["unackedKey"],
        )
        res = w["resources"]
        worker = WorkerSpec(
            image=w["image"],
            image_pull_policy=w["imagePullPolicy"],
            command=tuple(w.get("command", ())),
            args=tuple(w.get("args", ())),
            celery_app=w["celeryApp"],
            pool=w["pool"],
            concurrency=w["concurrency"],
            gpus=w["gpus"],
            gpu_resource=w["gpuResource"],
            require_gpu=w["requireGpu"],
            task_time_limit_seconds=w["taskTimeLimitSeconds"],
            visibility_timeout_seconds=w["visibilityTimeoutSeconds"],
            termination_grace_period_seconds=w["terminationGracePeriodSeconds"],
            resources={k: dict(res[k]) for k in ("requests", "limits") if res.get(k)},
            env=tuple(w.get("env", ())),
            pod_labels=dict(w.get("podLabels", {})),
            pod_annotations=dict(w.get("podAnnotations", {})),
            node_selector=dict(w.get("nodeSelector", {})),
            tolerations=tuple(w.get("tolerations", ())),
            affinity=w.get("affinity"),
            priority_class_name=w.get("priorityClassName"),
            service_account_name=w.get("serviceAccountName"),
            image_pull_secrets=tuple(p["name"] for p in w.get("imagePullSecrets", ())),
            security=SecuritySpec(
                w["securityContext"]["runAsUser"],
                w["securityContext"]["runAsGroup"],
                w["securityContext"]["fsGroup"],
                w["securityContext"]["readOnlyRootFilesystem"],
            ),
            claim=_claim(w.get("claim")),
        )
        scaling = ScalingSpec(
            min_replicas=sc["minReplicas"],
            max_replicas=sc["maxReplicas"],
            target_tasks_per_replica=sc["targetTasksPerReplica"],
            activation_threshold=sc["activationThreshold"],
            poll_interval_seconds=float(sc["pollIntervalSeconds"]),
            scale_up_stabilization_seconds=sc["scaleUpStabilizationSeconds"],
            scale_down_stabilization_seconds=sc["scaleDownStabilizationSeconds"],
            max_step_up=sc.get("maxStepUp"),
            max_step_down=sc.get("maxStepDown"),
            idle_seconds_before_zero=sc["idleSecondsBeforeZero"],
            paused=sc["paused"],
            drain_within_seconds=sc.get("drainWithinSeconds"),
            target_wait_seconds=sc.get("targetWaitSeconds"),
            gpu_surge=sc["gpuSurge"],
            priority=sc["priority"],
            weight=sc["weight"],
        )
        queues = tuple(s["queues"])
    except KeyError as exc:
        raise SpecError(f"spec.{exc.args[0]}", "is required") from None
    except (TypeError, AttributeError) as exc:
        raise SpecError("spec", f"malformed ({exc})") from None
    return _validated(QueueSpec(broker, queues, worker, scaling))


def _check_sentinel(b: BrokerSpec) -> None:
    if b.url is not None or b.url_secret_ref is not None:
        raise SpecError("spec.broker.sentinel", "set it instead of url and urlSecretRef, not with them")
    if b.tls.enabled:
        raise SpecError("spec.broker.sentinel", "with broker.tls is not supported yet")
    if not b.sentinel.sentinels:
        raise SpecError("spec.broker.sentinel.sentinels", "name at least one sentinel")
    if len(set(b.sentinel.sentinels)) != len(b.sentinel.sentinels):
        raise SpecError("spec.broker.sentinel.sentinels", "lists a sentinel twice")
    if not b.sentinel.master_name or any(c.isspace() or c in ";/@" for c in b.sentinel.master_name):
        raise SpecError("spec.broker.sentinel.masterName", "must be a name without spaces, ';', '/' or '@'")


def _check_claim(w: WorkerSpec) -> None:
    """What the CRD's rule also refuses at apply time, for a spec read without it (files, the simulator)."""
    if w.gpus != 1:
        raise SpecError(
            "spec.worker.claim", "set worker.gpus or worker.claim, not both (claim.count is per pod)"
        )


def _validated(spec: QueueSpec) -> QueueSpec:
    b, w, sc = spec.broker, spec.worker, spec.scaling
    if b.sentinel is None and (b.url is None) == (b.url_secret_ref is None):
        raise SpecError(
            "spec.broker", "exactly one of url and urlSecretRef must be set (or sentinel instead of both)"
        )
    if b.sentinel is not None:
        _check_sentinel(b)
    _check_url(b.url)
    if not spec.queues:
        raise SpecError("spec.queues", "name at least one Celery queue")
    if len(set(spec.queues)) != len(spec.queues):
        raise SpecError("spec.queues", "lists a queue twice")
    if len(set(b.priority_steps)) != len(b.priority_steps):
        raise SpecError("spec.broker.prioritySteps", "lists a step twice")
    if sc.min_replicas > sc.max_replicas:
        raise SpecError("spec.scaling.minReplicas", "must be less than or equal to scaling.maxReplicas")
    if w.visibility_timeout_seconds <= w.task_time_limit_seconds:
        raise SpecError(
            "spec.worker.visibilityTimeoutSeconds",
            "must be greater than worker.taskTimeLimitSeconds, or a running task is handed to a second worker",
        )
    if w.claim is not None:
        _check_claim(w)
    for i, var in enumerate(w.env):
        if "value" in var and "valueFrom" in var:
            raise SpecError(f"spec.worker.env[{i}]", f"{var['name']}: set value or valueFrom, not both")
    return spec
