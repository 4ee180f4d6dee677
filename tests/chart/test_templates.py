"""The chart rendered with `helm template` under several values files, checked object by object."""

from __future__ import annotations

import base64
import json
import re
import textwrap

import pytest
import yaml
from helm_chart import CHART, NAMESPACE, QUEUE_API, RELEASE

from gpufleet.spec import parse_spec

FULLNAME = f"{RELEASE}-gpufleet"
SA = ("ServiceAccount", NAMESPACE, FULLNAME)
CLUSTER = "(cluster)"
CRD_FILE = CHART / "files" / "gputaskqueues.crd.yaml"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def operator_container(rendered):
    deployment = rendered.one("Deployment", FULLNAME)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def grants(rendered, subject=SA):
    """Every (scope, apiGroup, resource, verb, resourceNames) the subject holds, and which role grants it."""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in rendered.objects}
    held: dict[tuple, set[str]] = {}
    for binding in rendered.all("ClusterRoleBinding") + rendered.all("RoleBinding"):
        subjects = {(s["kind"], s.get("namespace"), s["name"]) for s in binding["subjects"]}
        if subject not in subjects:
            continue
        namespace = binding["metadata"].get("namespace")
        ref = binding["roleRef"]
        role_namespace = namespace if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], role_namespace, ref["name"])]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        key = (
                            namespace or CLUSTER,
                            group,
                            resource,
                            verb,
                            tuple(rule.get("resourceNames", ())),
                        )
                        held.setdefault(key, set()).add(ref["name"])
    return held


def table(scope, rows):
    return {
        (scope, group, resource, verb, names)
        for group, resource, verbs, names in rows
        for verb in verbs.split()
    }


# What gpufleet needs, resource by resource (operator/gpufleet/kube.py, controller.py, handlers.py).
GPUFLEET = [
    ("gpufleet.dev", "gputaskqueues", "get list watch patch", ()),
    ("gpufleet.dev", "gputaskqueues/status", "get patch update", ()),
    ("gpufleet.dev", "gputaskqueues/finalizers", "update", ()),
    ("apps", "deployments", "get list watch create patch update", ()),
    ("", "pods", "get list watch patch", ()),
    ("policy", "poddisruptionbudgets", "get create patch", ()),
    ("resource.k8s.io", "resourceclaimtemplates", "get create patch", ()),
    ("", "secrets", "get", ()),
    ("", "events", "create patch", ()),
]
KOPF_CLUSTER = [("apiextensions.k8s.io", "customresourcedefinitions", "list watch", ())]


def test_lint_is_clean(helm):
    for values in (
        [],
        ["namespaced.yaml"],
        ["redis.yaml"],
        ["monitoring.yaml"],
        ["no-crd.yaml"],
        ["ha.yaml"],
    ):
        args = ["lint", "--strict", "--kube-version", "1.35.4", str(CHART)]
        for name in values:
            args += ["-f", str(CHART.parents[1] / "tests" / "chart" / "values" / name)]
        done = helm.run(*args, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


def test_defaults_render_the_operator_and_nothing_optional(helm):
    rendered = helm.render()
    assert rendered.kinds() == sorted(
        ["ServiceAccount", "ConfigMap", "CustomResourceDefinition", "Service", "Deployment", "Pod"]
        + ["ClusterRole", "ClusterRoleBinding"] * 2
    )
    for obj in rendered.objects:
        assert len(obj["metadata"]["name"]) <= 63
        if obj["kind"] != "CustomResourceDefinition":
            assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
            assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "gpufleet"
        if obj["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]


def test_the_crd_is_the_source_file_itself_and_is_kept(helm):
    crd = helm.render().one("CustomResourceDefinition")
    assert crd == yaml.safe_load(CRD_FILE.read_text())
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_no_crd_toggle(helm):
    rendered = helm.render("no-crd.yaml")
    assert rendered.all("CustomResourceDefinition") == []
    assert rendered.one("Deployment", FULLNAME)


def test_operator_deployment(helm):
    rendered = helm.render()
    deployment = rendered.one("Deployment", FULLNAME)
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = operator_container(rendered)

    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    # The e2e process-pod runner selects the operator pod by these two labels.
    assert labels["app.kubernetes.io/name"] == "gpufleet"
    assert labels["app.kubernetes.io/component"] == "operator"
    assert pod["serviceAccountName"] == FULLNAME == rendered.one("ServiceAccount")["metadata"]["name"]

    assert container["image"] == f"ghcr.io/gpufleet/gpufleet-operator:{APP_VERSION}"
    assert container["command"] == ["tini", "--", "python", "-m", "gpufleet"]
    assert container["args"] == ["--liveness=http://0.0.0.0:8081/healthz"]
    assert {"name": "GPUFLEET_METRICS_PORT", "value": "8080"} in container["env"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "healthz": 8081}
    probe = container["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "healthz"}

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/tmp"}


def test_image_command_and_flags_are_overridable(helm):
    rendered = helm.render(
        sets=(
            "image.repository=registry.example/gpufleet",
            "image.tag=dev",
            "command={/venv/bin/python,-m,gpufleet}",
            "livenessPort=18081",
            "metrics.port=18080",
            "verbose=true",
            "podLabels.team=ml",
            "podLabels.app\\.kubernetes\\.io/component=hijack",
        )
    )
    container = operator_container(rendered)
    assert container["image"] == "registry.example/gpufleet:dev"
    assert container["command"] == ["/venv/bin/python", "-m", "gpufleet"]
    assert container["args"] == ["--liveness=http://0.0.0.0:18081/healthz", "--verbose"]
    assert {"name": "GPUFLEET_METRICS_PORT", "value": "18080"} in container["env"]
    labels = rendered.one("Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "ml"
    assert labels["app.kubernetes.io/component"] == "operator", (
        "podLabels must not override the chart's labels"
    )
    service = rendered.one("Service", f"{FULLNAME}-metrics")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 18080, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_long_names_are_cut_to_63_and_keep_their_suffix(helm):
    rendered = helm.render(sets=("fullnameOverride=" + "x" * 63, "redis.enabled=true"))
    names = {o["metadata"]["name"] for o in rendered.objects if o["kind"] != "CustomResourceDefinition"}
    assert all(len(n) <= 63 for n in names), names
    assert "x" * 63 in names
    for suffix in ("metrics", "kopf", "redis", "dashboard", "test"):
        assert any(n.endswith("-" + suffix) for n in names), suffix


def test_metrics_service_selects_the_operator_pod(helm):
    rendered = helm.render()
    service = rendered.one("Service", f"{FULLNAME}-metrics")
    labels = rendered.one("Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "operator"
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_cluster_wide_rbac_is_exactly_the_table(helm):
    held = grants(helm.render())
    expected = table(CLUSTER, GPUFLEET + KOPF_CLUSTER)
    assert set(held) == expected
    # kopf's needs and gpufleet's come from different roles.
    for (_, group, *_), roles in held.items():
        if group == "apiextensions.k8s.io":
            assert roles == {f"{FULLNAME}-kopf"}
        if group == "gpufleet.dev":
            assert roles == {FULLNAME}


def test_namespaced_rbac_stays_in_its_namespaces(helm):
    rendered = helm.render("namespaced.yaml")
    held = grants(rendered)
    secrets = [
        (g, r, v, ("redis", "broker-url")) if r == "secrets" else (g, r, v, n) for g, r, v, n in GPUFLEET
    ]
    expected = table(CLUSTER, KOPF_CLUSTER + [("", "namespaces", "list watch", ())])
    for namespace in ("team-a", "team-b"):
        expected |= table(namespace, secrets)
    assert set(held) == expected
    assert rendered.all("Role") and all(
        r["metadata"]["namespace"] in ("team-a", "team-b") for r in rendered.all("Role")
    )
    assert operator_container(rendered)["args"] == [
        "--liveness=http://0.0.0.0:8081/healthz",
        "--namespace=team-a",
        "--namespace=team-b",
    ]


LEASE = [
    ("coordination.k8s.io", "leases", "create", ()),
    ("coordination.k8s.io", "leases", "get update", (FULLNAME,)),
]


def test_high_availability_runs_replicas_on_one_lease(helm):
    rendered = helm.render("ha.yaml")
    deployment = rendered.one("Deployment", FULLNAME)
    spec, container = deployment["spec"], operator_container(rendered)
    assert spec["replicas"] == 3
    # A rollout adds a standby before it stops anyone: never fewer pods than asked for.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert container["args"] == [
        "--liveness=http://0.0.0.0:8081/healthz",
        "--leader-election",
        f"--lease-name={FULLNAME}",
        f"--lease-namespace={NAMESPACE}",
        "--identity=$(POD_NAME)",
        "--lease-duration=8",
        "--renew-deadline=5.5",
        "--retry-period=1",
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    pod_labels = spec["template"]["metadata"]["labels"]
    (spread,) = spec["template"]["spec"]["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    pdb = rendered.one("PodDisruptionBudget", FULLNAME, NAMESPACE)
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]

    # The RBAC of the defaults, and the one Lease in the release namespace: created, then read and renewed by name.
    held = grants(rendered)
    assert set(held) == table(CLUSTER, GPUFLEET + KOPF_CLUSTER) | table(NAMESPACE, LEASE)
    assert held[(NAMESPACE, "coordination.k8s.io", "leases", "update", (FULLNAME,))] == {f"{FULLNAME}-leader"}


def test_high_availability_with_namespaced_rbac_keeps_the_lease_in_the_release_namespace(helm):
    held = grants(helm.render("namespaced.yaml", "ha.yaml"))
    assert {k for k in held if k[1] == "coordination.k8s.io"} == table(NAMESPACE, LEASE)


def test_high_availability_off_is_one_pod_and_no_lease(helm):
    rendered = helm.render()
    assert rendered.one("Deployment", FULLNAME)["spec"]["replicas"] == 1
    assert not rendered.all("PodDisruptionBudget")
    assert not [k for k in grants(rendered) if k[1] == "coordination.k8s.io"]
    assert "--leader-election" not in operator_container(rendered)["args"]


@pytest.mark.parametrize(
    "sets",
    [
        ("highAvailability.renewDeadlineSeconds=15",),  # not below the duration: no fencing margin
        ("highAvailability.retryPeriodSeconds=10",),  # no renewal before the deadline
        ("highAvailability.leaseDurationSeconds=9",),
    ],
)
def test_high_availability_refuses_timings_that_do_not_fence(helm, sets):
    error = helm.refuse(sets=("highAvailability.enabled=true", *sets))
    assert "retryPeriodSeconds < renewDeadlineSeconds < leaseDurationSeconds" in error, error


def test_no_rbac_means_no_roles_and_an_existing_service_account(helm):
    rendered = helm.render(
        sets=("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=mine")
    )
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"} & set(
        rendered.kinds()
    )
    assert rendered.one("Deployment", FULLNAME)["spec"]["template"]["spec"]["serviceAccountName"] == "mine"
    error = helm.refuse(sets=("serviceAccount.create=false",))
    assert "serviceAccount.name must name an existing ServiceAccount" in error


def test_no_rule_uses_a_wildcard_or_deletes(helm):
    for values in ((), ("namespaced.yaml",)):
        rendered = helm.render(*values)
        for role in rendered.all("ClusterRole") + rendered.all("Role"):
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], role["metadata"][
                    "name"
                ]
                assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(
                    rule["verbs"]
                )


def test_bundled_redis_with_a_generated_password(helm):
    rendered = helm.render("redis.yaml")
    name = f"{FULLNAME}-redis"
    secret = rendered.one("Secret", name)
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) == 32 and password.isalnum()
    deployment = rendered.one("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "redis:7"
    assert container["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert container["env"] == [
        {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": name, "key": "password"}}}
    ]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = rendered.one("Service", name)
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 6379
    # The operator's metrics Service must not select the Redis pod.
    metrics = rendered.one("Service", f"{FULLNAME}-metrics")
    assert (
        not metrics["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_bundled_redis_password_choices(helm):
    given = helm.render("redis.yaml", sets=("redis.auth.password=s3cret",))
    assert base64.b64decode(given.one("Secret")["data"]["password"]) == b"s3cret"

    existing = helm.render("redis.yaml", sets=("redis.auth.existingSecret=mine",))
    assert existing.all("Secret") == []
    (container,) = existing.one("Deployment", f"{FULLNAME}-redis")["spec"]["template"]["spec"]["containers"]
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "mine"

    open_redis = helm.render("redis.yaml", sets=("redis.auth.enabled=false",))
    assert open_redis.all("Secret") == []
    (container,) = open_redis.one("Deployment", f"{FULLNAME}-redis")["spec"]["template"]["spec"]["containers"]
    assert "--requirepass" not in container["args"] and "env" not in container


def test_queues_from_values(helm):
    rendered = helm.render("queues.yaml", api_versions=(QUEUE_API,))
    queues = {(q["metadata"]["namespace"], q["metadata"]["name"]): q for q in rendered.all("GpuTaskQueue")}
    assert set(queues) == {(NAMESPACE, "embeddings"), ("team-a", "render")}
    values = yaml.safe_load((CHART.parents[1] / "tests" / "chart" / "values" / "queues.yaml").read_text())
    for queue in values["queues"]:
        obj = queues[(queue.get("namespace", NAMESPACE), queue["name"])]
        assert obj["apiVersion"] == "gpufleet.dev/v1alpha1"
        assert obj["spec"] == queue["spec"]
        parse_spec(obj["spec"])  # the operator accepts it


def test_queues_before_the_crd_is_served_are_refused_plainly(helm):
    error = helm.refuse("queues.yaml")
    assert "the GpuTaskQueue API (gpufleet.dev/v1alpha1) is not served yet" in error
    assert "helm upgrade" in error


def test_queues_outside_the_watched_namespaces_are_refused(helm):
    error = helm.refuse("namespaced.yaml", "queues.yaml", api_versions=(QUEUE_API,))
    assert f"queues: {NAMESPACE}/embeddings is in a namespace the operator does not watch" in error


def test_the_alert_on_fleets_whose_workers_cannot_start_is_off_by_default(helm):
    assert "PrometheusRule" not in helm.render().kinds()
    rule = helm.render("monitoring.yaml").one("PrometheusRule", FULLNAME)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    ((alert,),) = [group["rules"] for group in rule["spec"]["groups"]]
    assert alert["alert"] == "GpuFleetNoWorkerStarts" and alert["for"] == "10m"
    assert alert["labels"] == {"severity": "warning"}
    expr = " ".join(alert["expr"].split())
    # The leader's figures only: a standby's gauges keep the values of its last lead.
    leader = "* on (instance) group_left gpufleet_leader"
    assert expr == (
        f"max by (namespace, gputaskqueue) (gpufleet_desired_replicas {leader}) > 0 and on (namespace, gputaskqueue) "
        f"max by (namespace, gputaskqueue) (gpufleet_ready_workers {leader}) == 0"
    )
    # Prometheus fills in the labels; the text says where to look.
    description = alert["annotations"]["description"]
    assert "{{ $labels.namespace }}/{{ $labels.gputaskqueue }}" in description and "for 10m" in description
    assert "kubectl describe gtq -n {{ $labels.namespace }} {{ $labels.gputaskqueue }}" in description
    # It names metrics the operator exports.
    from prometheus_client import REGISTRY

    from gpufleet import metrics  # noqa: F401 - registers the operator's metrics

    assert set(re.findall(r"gpufleet_[a-z_]+", expr)) <= {family.name for family in REGISTRY.collect()}


def test_service_monitor_and_network_policy(helm):
    rendered = helm.render("monitoring.yaml")
    service = rendered.one("Service", f"{FULLNAME}-metrics")
    monitor = rendered.one("ServiceMonitor", FULLNAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "honorLabels": True}
    ]
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}

    policy = rendered.one("NetworkPolicy", FULLNAME)["spec"]
    labels = rendered.one("Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    named_ports = {p["name"] for p in operator_container(rendered)["ports"]}
    metrics_rule, healthz_rule = policy["ingress"]
    assert {p["port"] for p in metrics_rule["ports"]} == {"metrics"} and {"metrics", "healthz"} <= named_ports
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    } in metrics_rule["from"]
    test_pod = rendered.one("Pod")
    assert any(
        peer.get("podSelector", {}).get("matchLabels", {}).items() <= test_pod["metadata"]["labels"].items()
        for peer in metrics_rule["from"]
        if "podSelector" in peer
    ), "the helm test pod must be let in"
    assert healthz_rule == {"ports": [{"port": "healthz", "protocol": "TCP"}]}
    dns, *rules = policy["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert len(rules) == 2


def test_network_policy_without_egress_rules_leaves_egress_open(helm):
    policy = helm.render(sets=("networkPolicy.enabled=true",)).one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert "from" not in policy["ingress"][0], "no metricsFrom: anyone may scrape"


def test_dashboard_configmap(helm):
    configmap = helm.render().one("ConfigMap", f"{FULLNAME}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["gpufleet.json"])
    assert dashboard["uid"] == "gpufleet" and dashboard["panels"]
    other = helm.render(sets=("dashboard.namespace=monitoring",)).one("ConfigMap", f"{FULLNAME}-dashboard")
    assert other["metadata"]["namespace"] == "monitoring"
    assert helm.render(sets=("dashboard.enabled=false",)).all("ConfigMap") == []


def test_helm_test_hook(helm):
    rendered = helm.render()
    pod = rendered.one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    script = container["args"][0]
    assert "/apis/gpufleet.dev/v1alpha1" in script and '"name": ?"gputaskqueues"' in script
    assert container["env"] == [
        {"name": "METRICS_URL", "value": f"http://{FULLNAME}-metrics.{NAMESPACE}.svc:8080/metrics"}
    ]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_test_pod_runs_where_the_operator_runs(helm):
    rendered = helm.render(
        sets=("nodeSelector.pool=system", "tolerations[0].key=dedicated", "tolerations[0].operator=Exists")
    )
    operator = rendered.one("Deployment", FULLNAME)["spec"]["template"]["spec"]
    test = rendered.one("Pod")["spec"]
    assert operator["nodeSelector"] == {"pool": "system"}
    for field in ("nodeSelector", "tolerations"):
        assert test[field] == operator[field]
    assert "affinity" not in test and "affinity" not in operator


def notes_queue(helm, chart, *values, sets=()):
    notes = helm.render(*values, sets=sets, chart=chart).one("ConfigMap", "notes")["data"]["notes"]
    start = notes.index("<<'YAML'\n") + len("<<'YAML'\n")
    return notes, yaml.safe_load(textwrap.dedent(notes[start : notes.index("  YAML\n", start)]))


@pytest.mark.parametrize(
    ("values", "namespace", "url"),
    [
        ((), NAMESPACE, f"redis://redis.{NAMESPACE}.svc:6379/0"),
        (("redis.yaml",), NAMESPACE, f"redis://{FULLNAME}-redis.{NAMESPACE}.svc:6379/0"),
        (("namespaced.yaml",), "team-a", "redis://redis.team-a.svc:6379/0"),
    ],
)
def test_notes_show_a_first_queue_the_operator_accepts(helm, notes_chart, values, namespace, url):
    notes, queue = notes_queue(helm, notes_chart, *values)
    assert queue["kind"] == "GpuTaskQueue" and queue["metadata"]["namespace"] == namespace
    assert queue["spec"]["broker"]["url"] == url
    parse_spec(queue["spec"])
    assert f"kubectl -n {namespace} get gtq first -w" in notes


def test_notes_copy_the_bundled_password_into_a_watched_namespace(helm, notes_chart):
    notes, queue = notes_queue(helm, notes_chart, "redis.yaml", "namespaced.yaml")
    assert queue["spec"]["broker"]["passwordSecretRef"] == {"name": f"{FULLNAME}-redis", "key": "password"}
    assert f"kubectl -n team-a create secret generic {FULLNAME}-redis" in notes


@pytest.mark.parametrize(("image", "gpus"), [("reg.example/gpufleet-worker:0.1.0-cpu", 0), ("", 1),
                                             ("reg.example/gpufleet-worker:0.1.0-cuda", 1)])  # fmt: skip
def test_notes_first_queue_takes_celerys_default_queue_and_gpus_by_image(helm, notes_chart, image, gpus):
    notes, queue = notes_queue(
        helm, notes_chart, "redis.yaml", sets=(f"workerImage={image}",) if image else ()
    )
    assert queue["spec"]["queues"] == ["celery"]  # where a Celery app sends unless told otherwise
    assert queue["spec"]["worker"]["gpus"] == gpus
    # The first task: a pod of plain Celery, restricted, and the one command that prints its result.
    start = notes.index("<<'YAML'\n", notes.index("Send it a first task")) + len("<<'YAML'\n")
    pod = yaml.safe_load(textwrap.dedent(notes[start : notes.index("  YAML\n", start)]))
    assert pod["kind"] == "Pod" and pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert 'send_task("gpufleet.matmul"' in pod["spec"]["containers"][0]["args"][2]
    assert f"kubectl -n {NAMESPACE} logs first-task" in notes
