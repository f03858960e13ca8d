"""deploy/helm/preheat-gateway: the chart, linted and rendered by a real Helm.

Helm comes from ``./scripts/install-helm`` (``.cache/helm/helm``) or ``$PREHEAT_GATEWAY_HELM``;
missing, the tests skip, and fail under ``PREHEAT_GATEWAY_REQUIRE_PREREQS=1`` (CI). Every
example values file (deploy/helm/examples/) is linted with ``--strict`` and rendered with
``helm template``; each object is validated offline against the Kubernetes 1.25 and latest
OpenAPI schemas of ``kubernetes-validate`` (strict: unknown fields are errors), the Prometheus
Operator objects (CRDs, no schema shipped) structurally. Then what a schema cannot see: the
two shapes, probes and drain timing, the security context, Secret references only, the
rendered gateway config through ``check-config`` with exactly the pod's environment, alerts on
metrics the gateway really exports, the node DaemonSet's hosts.toml written by its own script,
wrong values refused with a message, and deploy/README.md in step with the chart.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require
from tests.deploy.dockerfile import REPO_ROOT
from tests.deploy.test_grafana import metric_names
from tests.gateway_process import run_cli
from tests.registry import MissingPrerequisite

HELM_DIR = REPO_ROOT / "deploy" / "helm"
CHART = HELM_DIR / "preheat-gateway"
EXAMPLES_DIR = HELM_DIR / "examples"
EXAMPLES = ["single", "ha", "ingress-tls", "monitoring", "node-daemonset"]
TARGETS = ["default", *EXAMPLES]  # "default": the chart's values alone
README = REPO_ROOT / "deploy" / "README.md"
HELM_ENV = "PREHEAT_GATEWAY_HELM"
HELM_CACHE = REPO_ROOT / ".cache" / "helm" / "helm"
RELEASE, NAMESPACE = "preheat-gateway", "preheat-gateway"
SCHEMA_VERSIONS = ("1.25.0", "latest")
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
STATE_DIR = "/var/lib/preheat-gateway"
CONFIG_PATH = "/etc/preheat-gateway/config.yaml"
ALERTS = {
    "PreheatGatewayJobsFailing",
    "PreheatGatewayClusterUnreachable",
    "PreheatGatewayEventLoopLag",
    "PreheatGatewayLocalCacheNearMax",
    "PreheatGatewayStateVolumeFull",
}
# Series the alerts may use besides the gateway's own: the kubelet's, for the state volume.
KUBELET_SERIES = {"kubelet_volume_stats_used_bytes", "kubelet_volume_stats_capacity_bytes"}


def find_helm() -> str:
    for candidate in (os.environ.get(HELM_ENV), str(HELM_CACHE), shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise MissingPrerequisite(f"helm not installed: run ./scripts/install-helm (or set {HELM_ENV})")


@functools.cache
def helm_home() -> dict[str, str]:
    """Helm's cache, config and data in a directory of their own, not the user's home."""
    home = Path(tempfile.mkdtemp(prefix="helm-home-"))
    return {f"HELM_{kind}_HOME": str(home / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require(find_helm), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **helm_home()},
        cwd=REPO_ROOT,
    )


def values_args(target: str) -> list[str]:
    return [] if target == "default" else ["-f", str(EXAMPLES_DIR / f"{target}.yaml")]


def template(*args: str) -> subprocess.CompletedProcess[str]:
    return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)


@functools.cache
def rendered(target: str, *extra: str) -> tuple[dict[str, Any], ...]:
    result = template(*values_args(target), *extra)
    assert result.returncode == 0, f"helm template ({target}) failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(target: str, kind: str, *extra: str) -> list[dict[str, Any]]:
    return [o for o in rendered(target, *extra) if o["kind"] == kind]


def one(target: str, kind: str, *extra: str) -> dict[str, Any]:
    [found] = objects(target, kind, *extra)
    return found


def gateway_configmap(target: str, *extra: str) -> dict[str, Any]:
    [found] = [c for c in objects(target, "ConfigMap", *extra) if "config.yaml" in c["data"]]
    return found


def deployment(target: str, *extra: str) -> dict[str, Any]:
    return one(target, "Deployment", *extra)


def container(target: str, *extra: str) -> dict[str, Any]:
    [found] = deployment(target, *extra)["spec"]["template"]["spec"]["containers"]
    return found


def config_of(target: str, *extra: str) -> dict[str, Any]:
    return yaml.safe_load(gateway_configmap(target, *extra)["data"]["config.yaml"])


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES_DIR / f"{name}.yaml").read_text())


# --- the chart itself -------------------------------------------------------------------------


def test_app_version_is_the_gateway_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"], "Chart.yaml appVersion must be pyproject.toml's version"


def test_the_examples_are_the_ones_documented_and_tested() -> None:
    assert sorted(p.stem for p in EXAMPLES_DIR.glob("*.yaml")) == sorted(EXAMPLES)


@pytest.mark.parametrize("target", TARGETS)
def test_helm_lint_strict(target: str) -> None:
    result = helm("lint", "--strict", str(CHART), *values_args(target))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    for line in result.stdout.splitlines():
        assert not line.startswith(("[WARNING]", "[ERROR]")), line


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_validates_against_the_kubernetes_schemas(target: str) -> None:
    import kubernetes_validate

    validated = 0
    for obj in rendered(target):
        assert obj["metadata"].get("namespace") in (None, NAMESPACE)
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue  # no schema ships with kubernetes-validate: test_prometheus_operator_objects
        for version in SCHEMA_VERSIONS:
            version = kubernetes_validate.latest_version() if version == "latest" else version
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                pytest.fail(
                    f"{target}: {obj['kind']}/{obj['metadata']['name']} against {version}: {path}: {error.message}"
                )
            validated += 1
    assert validated >= 2 * 6


def test_the_validator_really_rejects_a_broken_object() -> None:
    """Guard against a validator that accepts anything (a schema lookup that silently fails)."""
    import kubernetes_validate

    broken = json.loads(json.dumps(deployment("single")))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/livez"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.25.0", strict=True)
    broken = json.loads(json.dumps(deployment("single")))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.25.0", strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_objects_are_labelled_and_named_for_the_release(target: str) -> None:
    names = set()
    for obj in rendered(target):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE and labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/name"] == "preheat-gateway" and labels["app.kubernetes.io/component"]
        names.add((obj["kind"], obj["metadata"]["name"]))
        assert obj["metadata"]["name"].startswith(RELEASE)
    assert len(names) == len(rendered(target)), "two objects of one kind share a name"


# --- the two shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["default", "single", "ingress-tls", "monitoring", "node-daemonset"])
def test_single_is_one_replica_recreated_on_a_claim(target: str) -> None:
    spec = deployment(target)["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    state = next(m["name"] for m in container(target)["volumeMounts"] if m["mountPath"] == STATE_DIR)
    claim = volumes[state]["persistentVolumeClaim"]["claimName"]
    pvc = one(target, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", "helm uninstall keeps the store"
    config = config_of(target)
    assert config["server"]["state_dir"] == STATE_DIR and not config["store"].get("url"), (
        "SQLite in the state directory"
    )


def test_ha_runs_three_replicas_rolling_on_postgresql_with_secrets_from_existing_secrets() -> None:
    spec = deployment("ha")["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = spec["template"]["spec"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    for constraint in pod["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert not objects("ha", "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["state"], "replicas keep no state of their own"
    store = config_of("ha")["store"]
    assert store["url"].startswith("postgresql://") and not re.match(r"postgresql://[^@/]*:[^@/]*@", store["url"])
    env = {e["name"]: e for e in container("ha")["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "preheat-gateway-db", "key": "password"}
    assert env[store["secret_key_env"]]["valueFrom"]["secretKeyRef"] == {"name": "preheat-gateway", "key": "secret-key"}
    assert one("ha", "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("target", TARGETS)
def test_probes_and_drain_timing_fit_the_gateway(target: str) -> None:
    pod = deployment(target)["spec"]["template"]["spec"]
    gateway = container(target)
    scheme = "HTTPS" if config_of(target)["server"].get("tls") else "HTTP"
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http", "scheme": scheme}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": scheme}
    assert gateway["startupProbe"]["httpGet"]["path"] == "/livez"
    command = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    pause = float(re.fullmatch(r"import time; time.sleep\((\d+)\)", command[2])[1])
    assert pause >= 3, "endpoints controllers need a moment to drop the pod"
    # SIGTERM comes after preStop; uvicorn then drains for up to 10 s (timeout_graceful_shutdown)
    # and the runner hands unfinished tasks back to the store.
    assert "timeout_graceful_shutdown=10" in (REPO_ROOT / "gateway" / "launch.py").read_text()
    assert pod["terminationGracePeriodSeconds"] >= pause + 10 + 5
    assert gateway["args"] == ["serve", "--config", CONFIG_PATH]


# --- security ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_a_locked_down_non_root_pod_with_requests_and_limits(target: str) -> None:
    pod = deployment(target)["spec"]["template"]["spec"]
    gateway = container(target)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = gateway["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"]
    assert pod["automountServiceAccountToken"] is False
    assert one(target, "ServiceAccount")["automountServiceAccountToken"] is False
    assert gateway["resources"]["requests"]["cpu"] and gateway["resources"]["requests"]["memory"]
    assert gateway["resources"]["limits"]["memory"]
    image = gateway["image"]
    assert image.endswith(":0.1.0") and ":latest" not in image, "the image tag defaults to appVersion"


@pytest.mark.parametrize("target", TARGETS)
def test_volumes_are_well_formed_and_only_tmp_and_state_are_writable(target: str) -> None:
    pod = deployment(target)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name, volume in volumes.items():
        assert len(set(volume) - {"name"}) == 1, f"volume {name}: exactly one source"
    mounts = {m["mountPath"]: m for m in container(target)["volumeMounts"]}
    writable = {path for path, mount in mounts.items() if not mount.get("readOnly")}
    assert writable == {STATE_DIR, "/tmp"}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    config_volume = volumes[mounts[str(Path(CONFIG_PATH).parent)]["name"]]
    assert config_volume["configMap"]["name"] == gateway_configmap(target)["metadata"]["name"]


def secret_refs(target: str, *extra: str) -> dict[str, tuple[str, str]]:
    """Environment variable -> (Secret, key), for every secretKeyRef of the gateway container."""
    refs = {}
    for variable in container(target, *extra).get("env", []):
        if ref := variable.get("valueFrom", {}).get("secretKeyRef"):
            assert not ref.get("optional"), variable
            refs[variable["name"]] = (ref["name"], ref["key"])
    return refs


def inline_secrets(value: Any, path: str = "") -> Any:
    """Paths of keys named like a secret that hold a value (not a reference to one)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key.lower() in {"password", "passwd", "token", "secret_key", "api_key"} and isinstance(item, (str, int)):
                yield f"{path}.{key}"
            yield from inline_secrets(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from inline_secrets(item, f"{path}[{index}]")


@pytest.mark.parametrize("target", TARGETS)
def test_no_secret_is_rendered_and_none_is_inline(target: str) -> None:
    assert not objects(target, "Secret"), "Secrets are the operator's, referenced by name, never rendered"
    for obj in rendered(target):
        text = yaml.safe_dump(obj)
        assert "BEGIN" not in text, obj["kind"]
        assert not list(inline_secrets(obj)), f"{obj['kind']}: {list(inline_secrets(obj))}"
        config = (
            yaml.safe_load(obj["data"]["config.yaml"])
            if obj["kind"] == "ConfigMap" and "config.yaml" in obj["data"]
            else {}
        )
        assert not list(inline_secrets(config)), list(inline_secrets(config))
        assert not re.search(r"://[^/@:\s]+:[^/@\s]+@", text), f"{obj['kind']}: a URL with a password"


@pytest.mark.parametrize("target", TARGETS)
def test_the_rendered_config_passes_check_config_with_the_pods_environment(target: str, tmp_path: Path) -> None:
    """Only the variables the pod gets are set: a *_env key the pod would lack fails here."""
    text = gateway_configmap(target)["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    config = yaml.safe_load(text)
    env_names = set(re.findall(r"_env:\s*(\w+)", text))
    given = {e["name"]: e.get("value", "value-from-a-secret") for e in container(target).get("env", [])}
    assert env_names <= set(given), f"config names {sorted(env_names - set(given))}, which the pod does not set"
    assert given["PREHEAT_GATEWAY_STATE_DIR"] == config["server"]["state_dir"] == STATE_DIR
    if "secret_key_env" in config["store"]:
        assert config["store"]["secret_key_env"] in secret_refs(target)
    if config["server"].get("tls"):  # check-config reads no certificate; the Secret is mounted there
        tls_mount = next(m for m in container(target)["volumeMounts"] if m["name"] == "tls")
        assert all(Path(f).parent == Path(tls_mount["mountPath"]) for f in config["server"]["tls"].values())
    blank = {name: "" for name in env_names}  # whatever the test runner's environment has
    # Paths under the pod's state directory stay as they are: check-config does not create them.
    result = run_cli(
        "check-config", str(path), env={**blank, **given, "PREHEAT_GATEWAY_STATE_DIR": str(tmp_path)}, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert config["server"]["listen"] == f"0.0.0.0:{container(target)['ports'][0]['containerPort']}"


@pytest.mark.parametrize(
    ("target", "endpoint"),
    [
        ("ha", "http://preheat-gateway.preheat-gateway.svc:8080"),
        ("ingress-tls", "https://preheat-gateway.example.com"),
    ],
)
def test_the_install_notes_say_where_harbor_reaches_the_gateway(target: str, endpoint: str) -> None:
    result = helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *values_args(target))
    assert result.returncode == 0, result.stderr
    notes = result.stdout[result.stdout.index("NOTES:") :]
    assert (
        f"rollout status deploy/{RELEASE}" in notes
        and "token create --config /etc/preheat-gateway/config.yaml" in notes
    )
    assert re.search(rf"^\s+{re.escape(endpoint)}$", notes, re.M), notes


# --- Service, ports, NetworkPolicy, Ingress ---------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_service_pdb_and_networkpolicy_select_the_gateway_pods(target: str) -> None:
    labels = deployment(target)["spec"]["template"]["metadata"]["labels"]
    selector = deployment(target)["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    service = one(target, "Service")
    assert service["spec"]["selector"] == selector
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [("http", 8080, "http")]
    assert one(target, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    policy = one(target, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == ["http"]
    account = one(target, "ServiceAccount")
    assert deployment(target)["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


MIRROR_PORT = ("--set", "mirror.separatePort=true", "--set", "mirror.port=5000")


def test_a_separate_mirror_listener_gets_its_own_container_and_service_port() -> None:
    ports = {p["name"]: p["containerPort"] for p in container("single", *MIRROR_PORT)["ports"]}
    assert ports == {"http": 8080, "mirror": 5000}
    service = one("single", "Service", *MIRROR_PORT)
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http", 8080, "http"),
        ("mirror", 5000, "mirror"),
    ]
    server = config_of("single", *MIRROR_PORT)["server"]
    assert server["mirror_listen"] == "0.0.0.0:5000" and server["listen"] == "0.0.0.0:8080"
    policy = one("single", "NetworkPolicy", *MIRROR_PORT)
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == ["http", "mirror"]
    ingress = one("ingress-tls", "Ingress", *MIRROR_PORT)
    assert {p["backend"]["service"]["port"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]} == {
        "http"
    }
    import kubernetes_validate

    for obj in rendered("single", *MIRROR_PORT):
        kubernetes_validate.validate(obj, "1.25.0", strict=True)


def test_a_separate_mirror_listener_passes_check_config(tmp_path: Path) -> None:
    from gateway.config import ServerConfig

    if "mirror_listen" not in ServerConfig.__struct_fields__:
        pytest.skip(
            "this gateway has no server.mirror_listen yet (the nodes issue): nothing to check the chart's key against"
        )
    path = tmp_path / "config.yaml"
    path.write_text(gateway_configmap("single", *MIRROR_PORT)["data"]["config.yaml"])
    env = {e["name"]: e.get("value", "x") for e in container("single", *MIRROR_PORT)["env"]}
    result = run_cli("check-config", str(path), env={**env, "PREHEAT_GATEWAY_STATE_DIR": str(tmp_path)}, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ingress_with_tls_reaches_the_api_port_and_the_pods_serve_https() -> None:
    ingress = one("ingress-tls", "Ingress")
    values = example("ingress-tls")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == values["ingress"]["tls"]
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "preheat-gateway.example.com"
    [path] = rule["http"]["paths"]
    assert path["backend"]["service"] == {
        "name": one("ingress-tls", "Service")["metadata"]["name"],
        "port": {"name": "http"},
    }
    tls = config_of("ingress-tls")["server"]["tls"]
    volumes = {v["name"]: v for v in deployment("ingress-tls")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == values["tls"]["secretName"]
    assert set(tls) == {"cert", "key"} and tls["cert"].endswith("/tls.crt") and tls["key"].endswith("/tls.key")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"
    policy = one("ingress-tls", "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["from"] == values["networkPolicy"]["apiFrom"]


# --- Prometheus Operator and Grafana ----------------------------------------------------------


def gateway_series() -> set[str]:
    """Every series name the gateway exports, read from its source (gateway/metrics.py, gateway/services.py)."""
    families: dict[str, str] = {}
    for source in (REPO_ROOT / "gateway").rglob("*.py"):
        text = source.read_text()
        for kind, name in re.findall(r"\b(Counter|Gauge|Histogram)\(\s*f\"\{PREFIX\}_(\w+)\"", text):
            families[f"preheat_gateway_{name}"] = kind
        for kind, name in re.findall(r"\b(counter|gauge)_family\(\s*\"(\w+)\"", text):
            families[f"preheat_gateway_{name}"] = kind.title()
    series = set()
    for name, kind in families.items():
        if kind == "Histogram":
            series |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif kind == "Counter":
            series.add(name if name.endswith("_total") else f"{name}_total")
        else:
            series.add(name)
    assert {
        "preheat_gateway_jobs_finished_total",
        "preheat_gateway_cluster_up",
        "preheat_gateway_event_loop_lag_seconds_bucket",
    } <= series
    return series


def test_the_service_monitor_scrapes_the_api_port() -> None:
    monitor = one("monitoring", "ServiceMonitor")
    assert (monitor["apiVersion"], monitor["kind"]) in CRDS
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = one("monitoring", "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+s", endpoint["interval"]) and re.fullmatch(r"\d+s", endpoint["scrapeTimeout"])
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "tlsConfig"}


def test_the_prometheus_rule_alerts_on_metrics_that_exist() -> None:
    rule = one("monitoring", "PrometheusRule")
    assert (rule["apiVersion"], rule["kind"]) in CRDS and set(rule["spec"]) == {"groups"}
    series = gateway_series()
    alerts = {}
    for group in rule["spec"]["groups"]:
        assert set(group) == {"name", "rules"}
        for entry in group["rules"]:
            assert set(entry) == {"alert", "expr", "for", "labels", "annotations"}, entry
            assert re.fullmatch(r"\d+[smh]", entry["for"]) and entry["labels"]["severity"] in {"warning", "critical"}
            assert entry["annotations"]["summary"] and entry["annotations"]["description"]
            expr = entry["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            names = metric_names(expr)
            assert names and names <= series | KUBELET_SERIES, (
                f"{entry['alert']}: {sorted(names - series - KUBELET_SERIES)} are not exported"
            )
            for name in names & series:
                assert re.search(rf'{name}\{{namespace="{NAMESPACE}", job="{RELEASE}"', expr), (
                    f"{entry['alert']}: {name} not scoped to the release"
                )
            alerts[entry["alert"]] = entry
    assert set(alerts) == ALERTS
    assert (
        'state="FAILURE"' in alerts["PreheatGatewayJobsFailing"]["expr"]
        and "> 0.1" in alerts["PreheatGatewayJobsFailing"]["expr"]
    )
    claim = one("monitoring", "PersistentVolumeClaim")["metadata"]["name"]
    assert f'persistentvolumeclaim="{claim}"' in alerts["PreheatGatewayStateVolumeFull"]["expr"]
    # The Prometheus templates in annotations survive Helm's: they reach Prometheus as written.
    assert "{{ $labels.cluster }}" in alerts["PreheatGatewayClusterUnreachable"]["annotations"]["summary"]


def test_without_a_claim_there_is_no_state_volume_alert() -> None:
    rule = one("ha", "PrometheusRule", "--set", "metrics.prometheusRule.enabled=true")
    assert {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]} == ALERTS - {
        "PreheatGatewayStateVolumeFull"
    }


def test_the_dashboard_configmap_is_the_grafana_dashboard() -> None:
    source = REPO_ROOT / "deploy" / "grafana" / "preheat-gateway.json"
    assert (CHART / "files" / "preheat-gateway.json").read_bytes() == source.read_bytes(), (
        "deploy/helm/preheat-gateway/files/preheat-gateway.json must be a copy of deploy/grafana/preheat-gateway.json"
    )
    [dashboard] = [c for c in objects("monitoring", "ConfigMap") if "preheat-gateway.json" in c["data"]]
    assert json.loads(dashboard["data"]["preheat-gateway.json"]) == json.loads(source.read_text())
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert len(json.dumps(dashboard)) < 900_000, "a ConfigMap holds at most 1 MiB"


# --- the node DaemonSet -----------------------------------------------------------------------


def node_objects() -> tuple[dict[str, Any], dict[str, Any]]:
    [files] = [c for c in objects("node-daemonset", "ConfigMap") if "hosts.json" in c["data"]]
    return one("node-daemonset", "DaemonSet"), files


def test_the_node_daemonset_is_locked_down_but_for_the_hosts_directory() -> None:
    daemonset, _files = node_objects()
    spec = daemonset["spec"]
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == "node-hosts"
    gateway_selector = deployment("node-daemonset")["spec"]["selector"]["matchLabels"]
    assert not gateway_selector.items() <= spec["template"]["metadata"]["labels"].items(), (
        "the Service must not select it"
    )
    pod = spec["template"]["spec"]
    [writer] = pod["containers"]
    assert writer["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    host_paths = [v["hostPath"] for v in pod["volumes"] if "hostPath" in v]
    assert host_paths == [{"path": "/etc/containerd/certs.d", "type": "DirectoryOrCreate"}]
    assert writer["resources"]["limits"]["memory"]
    assert writer["image"] == container("node-daemonset")["image"]
    assert {"operator": "Exists"} in pod["tolerations"], "every node, tainted or not"


def test_the_node_daemonset_writes_hosts_toml_that_containerd_reads(tmp_path: Path) -> None:
    """Its own script, run on the rendered ConfigMap: one hosts.toml per registry, as TOML."""
    daemonset, files = node_objects()
    [writer] = daemonset["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in writer["volumeMounts"]}
    assert writer["command"][:2] == ["python", f"{mounts['files']}/write_hosts.py"]
    assert writer["command"][2:] == [mounts["files"], mounts["hosts-dir"]]
    config_dir, hosts_dir = tmp_path / "config", tmp_path / "certs.d"
    config_dir.mkdir()
    for key, value in files["data"].items():
        (config_dir / key).write_text(value)
    (hosts_dir / "unrelated.example.com").mkdir(parents=True)
    (hosts_dir / "unrelated.example.com" / "hosts.toml").write_text('server = "https://unrelated.example.com"\n')
    result = subprocess.run(
        [sys.executable, str(config_dir / "write_hosts.py"), str(config_dir), str(hosts_dir), "--once"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    written = {p.parent.name: tomllib.loads(p.read_text()) for p in hosts_dir.glob("*/hosts.toml")}
    assert set(written) == {"harbor.example.com", "docker.io", "unrelated.example.com"}
    assert written["harbor.example.com"] == {
        "server": "https://harbor.example.com",
        "host": {"http://harbor-mirror.nodes.example.internal:5000": {"capabilities": ["pull", "resolve"]}},
    }
    assert written["docker.io"] == {
        "server": "https://registry-1.docker.io",
        "host": {
            "https://harbor.example.com/v2/dockerhub-proxy": {
                "capabilities": ["pull", "resolve"],
                "override_path": True,
            }
        },
    }
    # A registry dropped from the values goes on the next run; what the writer did not write stays.
    (config_dir / "hosts.json").write_text(
        json.dumps({"docker.io": (hosts_dir / "docker.io" / "hosts.toml").read_text()})
    )
    subprocess.run(
        [sys.executable, str(config_dir / "write_hosts.py"), str(config_dir), str(hosts_dir), "--once"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    assert sorted(p.parent.name for p in hosts_dir.glob("*/hosts.toml")) == ["docker.io", "unrelated.example.com"]
    assert not (hosts_dir / "harbor.example.com").exists()


def test_node_mirrors_default_to_the_mirror_clusters_endpoints() -> None:
    extra = ("--set", "nodeDaemonSet.enabled=true", "--set", "nodeDaemonSet.registries[0].host=harbor.example.com")
    [files] = [c for c in objects("single", "ConfigMap", *extra) if "hosts.json" in c["data"]]
    hosts = tomllib.loads(json.loads(files["data"]["hosts.json"])["harbor.example.com"])
    endpoints = [
        e["url"] for c in example("single")["config"]["clusters"] if c["adapter"] == "mirror" for e in c["endpoints"]
    ]
    assert list(hosts["host"]) == endpoints


# --- wrong values -----------------------------------------------------------------------------


def write_values(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


SINGLE_CLUSTERS = example("single")["config"]["clusters"]
WRONG = {
    "sqlite with two replicas": (
        {"replicas": 2},
        r"/store/type.*value must be 'postgresql'",
    ),
    "an inline registry password": (
        {
            "config": {
                "registries": {"credentials": [{"host": "h.example.com", "username": "u", "password": "hunter2"}]},
                "clusters": SINGLE_CLUSTERS,
            }
        },
        r"/config/registries/credentials/0.*additional propert(y|ies) 'password' not allowed",
    ),
    "an inline password in a cluster": (
        {
            "config": {
                "clusters": [
                    {
                        "id": 1,
                        "name": "m",
                        "adapter": "mirror",
                        "endpoints": [{"url": "http://m:5000", "username": "u", "password": "hunter2"}],
                    }
                ]
            }
        },
        r"config\.clusters\[0\]\.endpoints\[0\]\.password: inline secrets are refused: name an environment variable \(password_env\)",
    ),
    "an inline token": (
        {
            "config": {
                "clusters": [
                    {"id": 1, "name": "df", "adapter": "dragonfly", "manager": "http://df:8080", "token": "t0ken"}
                ]
            }
        },
        r"config\.clusters\[0\]\.token: inline secrets are refused",
    ),
    "a URL with a password": (
        {
            "config": {
                "clusters": [
                    {"id": 1, "name": "m", "adapter": "mirror", "endpoints": [{"url": "http://u:hunter2@m:5000"}]}
                ]
            }
        },
        r"config\.clusters\[0\]\.endpoints\[0\]\.url: a URL with a password is refused",
    ),
    "an unknown adapter": (
        {"config": {"clusters": [{"id": 1, "name": "x", "adapter": "bittorrent"}]}},
        r"/config/clusters/0/adapter.*must be one of 'local', 'mirror', 'proxy', 'dragonfly', 'kraken'",
    ),
    "a PostgreSQL password in the URL": (
        {
            **example("ha"),
            "store": {
                **example("ha")["store"],
                "postgresql": {**example("ha")["store"]["postgresql"], "url": "postgresql://u:hunter2@db/gw"},
            },
        },
        r"store\.postgresql\.url: a password in the URL would sit in a ConfigMap",
    ),
    "ha without a shared sealing key": (
        {**example("ha"), "store": {**example("ha")["store"], "secretKey": {"secretName": ""}}},
        r"store\.secretKey\.secretName: with store\.type postgresql every replica",
    ),
    "a *_env no Secret fills": (
        {
            "config": {
                "registries": {"credentials": [{"host": "h.example.com", "username": "u", "password_env": "NOT_SET"}]},
                "clusters": SINGLE_CLUSTERS,
            }
        },
        r"config\.registries\.credentials\[0\]\.password_env: NOT_SET is not set in the pod: add it to secretEnv",
    ),
    "a *_file no Secret is mounted at": (
        {
            "config": {
                "registries": {
                    "credentials": [{"host": "h.example.com", "username": "u", "password_file": "/etc/robot"}]
                },
                "clusters": SINGLE_CLUSTERS,
            }
        },
        r"config\.registries\.credentials\[0\]\.password_file: /etc/robot is not in a mounted Secret",
    ),
    "a key the chart sets": (
        {"config": {"server": {"listen": "0.0.0.0:9999"}, "clusters": SINGLE_CLUSTERS}},
        r"config\.server\.listen: set by the chart from service\.port",
    ),
    "a grace period shorter than the drain": (
        {"terminationGracePeriodSeconds": 15},
        r"terminationGracePeriodSeconds: 15 cuts the gateway's drain short.*at least 25",
    ),
    "a shutdown delay the grace period does not cover": (
        {"config": {"server": {"shutdown_delay_seconds": 20}, "clusters": SINGLE_CLUSTERS}},
        r"terminationGracePeriodSeconds: 30 cuts.*/readyz 503 for 20 s.*at least 40",
    ),
    "a misspelt value": (
        {"replica": 3},
        r"additional propert(y|ies) 'replica' not allowed",
    ),
    "a wrong type": (
        {"replicas": "three"},
        r"/replicas.*(expected integer|got string, want integer)",
    ),
    "a store that does not exist": (
        {"store": {"type": "mysql"}},
        r"/store/type.*must be one of 'sqlite', 'postgresql'",
    ),
}


@pytest.mark.parametrize("case", list(WRONG))
def test_wrong_values_are_refused_before_anything_renders_with_a_message(case: str, tmp_path: Path) -> None:
    values, message = WRONG[case]
    result = template("-f", write_values(tmp_path, values))
    assert result.returncode != 0, f"{case}: rendered anyway"
    assert not result.stdout.strip(), "nothing is rendered"
    assert re.search(message, result.stderr, re.S), f"{case}: {result.stderr}"
    if message.startswith("/") or "not allowed" in message:  # the schema's: helm lint refuses it too
        lint = helm("lint", "--strict", str(CHART), "-f", write_values(tmp_path, values))
        assert lint.returncode != 0, f"{case}: helm lint passed"
    # (helm lint only logs a template's `fail`; template, install and upgrade stop on it.)


def test_sqlite_with_two_replicas_is_refused_by_the_template_too(tmp_path: Path) -> None:
    """For --skip-schema-validation: the template's own message says why."""
    result = template("--skip-schema-validation", "--set", "replicas=2")
    assert result.returncode != 0
    assert re.search(
        r"replicas: 2 with store\.type sqlite is refused: SQLite allows one gateway process per database.*store\.type: postgresql",
        result.stderr,
    ), result.stderr


def test_the_schema_knows_the_builtin_adapters() -> None:
    from adapters.registry import BUILTIN

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["definitions"]["cluster"]["properties"]["adapter"]["enum"] == list(BUILTIN)


# --- docs -------------------------------------------------------------------------------------


def load_reference() -> Any:
    sys.path.insert(0, str(HELM_DIR))
    try:
        import values_reference
    finally:
        sys.path.remove(str(HELM_DIR))
    return values_reference


def test_every_value_is_documented_and_the_readme_reference_is_generated_from_values_yaml() -> None:
    reference = load_reference()
    text = (CHART / "values.yaml").read_text()
    rows = reference.rows(text)  # raises for a key without its `# --` comment
    assert len(rows) > 60
    readme = README.read_text()
    assert reference.updated_readme(readme, text) == readme, (
        "deploy/README.md's values reference is stale: .venv/bin/python deploy/helm/values_reference.py --write"
    )


def test_the_reference_generator_refuses_an_undocumented_key() -> None:
    reference = load_reference()
    with pytest.raises(reference.UndocumentedKey, match=r"image\.tag"):
        reference.rows("image:\n  # -- Documented.\n  repository: x\n  tag: ''\n")


def documented_counts() -> dict[str, dict[str, int]]:
    """The README's table of rendered objects: example -> kind -> count."""
    readme = README.read_text()
    start = readme.index("<!-- rendered objects -->")
    lines = readme[start : readme.index("<!-- end of rendered objects -->")].splitlines()
    header = [cell.strip().strip("`") for cell in lines[2].strip("|").split("|")]
    assert header[0] == "object"
    counts: dict[str, dict[str, int]] = {name: {} for name in header[1:]}
    for line in lines[4:]:
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        kind = cells[0].strip("`")
        if kind == "total":
            for name, cell in zip(header[1:], cells[1:], strict=False):
                assert int(cell) == sum(counts[name].values()), f"README: the total of {name}"
            continue
        for name, cell in zip(header[1:], cells[1:], strict=False):
            if cell:
                counts[name][kind] = int(cell)
    return counts


def test_the_chart_renders_the_objects_the_readme_shows() -> None:
    documented = documented_counts()
    assert set(documented) == set(EXAMPLES)
    for name in EXAMPLES:
        actual: dict[str, int] = {}
        for obj in rendered(name):
            actual[obj["kind"]] = actual.get(obj["kind"], 0) + 1
        assert documented[name] == actual, f"{name}: the README shows {documented[name]}, the chart renders {actual}"


def test_the_readme_installs_with_helm_and_the_kustomize_copy_is_gone() -> None:
    readme = README.read_text()
    for command in (
        "helm install",
        "helm upgrade",
        "helm rollback",
        "helm uninstall",
        "helm lint",
        "docker build",
        "docker push",
    ):
        assert command in readme, command
    for name in EXAMPLES:
        assert f"examples/{name}.yaml" in readme
    assert not (REPO_ROOT / "deploy" / "kubernetes").exists(), "one way to deploy: the chart"
    assert "kustomize" not in readme.lower().replace("kustomize's helmcharts", "")
