"""deploy/kubernetes: every overlay renders with ``kubectl kustomize`` and validates.

Rendered by whatever ``kubectl`` is on PATH (CI: Debian's ``kubernetes-client``, kubectl 1.20
with kustomize v2.0.3, the oldest the manifests are written for); each object is validated
against the Kubernetes OpenAPI schemas shipped offline in the ``kubernetes-validate`` package
(strict: unknown fields are errors). The ServiceMonitor is a CRD without a shipped schema, so
it is checked by hand. Then what a schema cannot see: probes, security context, volumes,
selectors, Secret references, and the ConfigMap's config through ``check-config`` with
exactly the environment the Deployment gives it.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require
from tests.deploy.dockerfile import REPO_ROOT
from tests.gateway_process import run_cli
from tests.registry import MissingPrerequisite

KUBERNETES = REPO_ROOT / "deploy" / "kubernetes"
OVERLAYS = ["sqlite-single", "postgres-ha", "servicemonitor"]
TARGETS = ["base", *(f"overlays/{name}" for name in OVERLAYS)]
GATEWAY_TARGETS = ["base", "overlays/sqlite-single", "overlays/postgres-ha"]
# The oldest Kubernetes the schemas cover and the newest: policy/v1 PDBs need 1.21+.
SCHEMA_VERSIONS = ("1.25.0", "latest")
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
SECRET_NAME = "preheat-gateway"
STATE_DIR = "/var/lib/preheat-gateway"


def find_kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise MissingPrerequisite("kubectl not installed: apt-get install kubernetes-client")
    return kubectl


@functools.cache
def rendered(target: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [require(find_kubectl), "kustomize", str(KUBERNETES / target)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
    # Current kubectl warns that `bases`/`patchesStrategicMerge` are deprecated; nothing else.
    for line in result.stderr.splitlines():
        assert "is deprecated" in line or not line.strip(), f"kubectl kustomize {target}: {line}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(target: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in rendered(target) if o["kind"] == kind]


def deployment(target: str) -> dict[str, Any]:
    [found] = objects(target, "Deployment")
    return found


def container(target: str) -> dict[str, Any]:
    [found] = deployment(target)["spec"]["template"]["spec"]["containers"]
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_every_object_validates_against_the_kubernetes_schemas(target: str) -> None:
    import kubernetes_validate

    validated = 0
    for obj in rendered(target):
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue  # a CRD: no schema ships with kubernetes-validate; checked in its own test
        for version in SCHEMA_VERSIONS:
            version = kubernetes_validate.latest_version() if version == "latest" else version
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                pytest.fail(f"{target}: {obj['kind']}/{obj['metadata']['name']} against {version}: {path}: {error.message}")
            validated += 1
    assert validated or target == "overlays/servicemonitor"


def test_the_validator_really_rejects_a_broken_object() -> None:
    """Guard against a validator that accepts anything (e.g. a schema lookup that silently fails)."""
    import kubernetes_validate

    broken = yaml.safe_load(yaml.safe_dump(deployment("base")))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/livez"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.25.0", strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment("base")))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.25.0", strict=True)


@pytest.mark.parametrize("target", GATEWAY_TARGETS)
def test_probes_resources_and_a_locked_down_non_root_pod(target: str) -> None:
    pod = deployment(target)["spec"]["template"]["spec"]
    gateway = container(target)
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gateway["startupProbe"]["httpGet"]["path"] == "/livez"
    assert [p["containerPort"] for p in gateway["ports"] if p["name"] == "http"] == [8080]
    assert gateway["resources"]["requests"]["cpu"] and gateway["resources"]["requests"]["memory"]
    assert gateway["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = gateway["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] >= 20, "room for the preStop pause and uvicorn's 10 s drain"
    assert gateway["image"] == "preheat-gateway:0.1.0" and ":latest" not in gateway["image"]


@pytest.mark.parametrize("target", GATEWAY_TARGETS)
def test_volumes_are_well_formed_and_only_tmp_and_state_are_writable(target: str) -> None:
    pod = deployment(target)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name, volume in volumes.items():
        sources = set(volume) - {"name"}
        assert len(sources) == 1, f"volume {name} has {sorted(sources)}: exactly one source"
    mounts = {m["mountPath"]: m for m in container(target)["volumeMounts"]}
    assert set(mounts) == {"/etc/preheat-gateway", STATE_DIR, "/tmp"}
    assert mounts["/etc/preheat-gateway"]["readOnly"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    configmaps = {c["metadata"]["name"] for c in objects(target, "ConfigMap")}
    assert volumes[mounts["/etc/preheat-gateway"]["name"]]["configMap"]["name"] in configmaps
    args = container(target)["args"]
    assert args == ["serve", "--config", "/etc/preheat-gateway/config.yaml"]


def test_sqlite_single_is_one_replica_recreated_on_a_claim() -> None:
    spec = deployment("overlays/sqlite-single")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    state = next(m["name"] for m in container("overlays/sqlite-single")["volumeMounts"] if m["mountPath"] == STATE_DIR)
    claim = volumes[state]["persistentVolumeClaim"]["claimName"]
    [pvc] = objects("overlays/sqlite-single", "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    config = yaml.safe_load(configmap_config("overlays/sqlite-single"))
    assert config["server"]["state_dir"] == STATE_DIR and not config["store"].get("url"), "SQLite in the state directory"


def test_postgres_ha_runs_three_replicas_with_the_password_from_a_secret() -> None:
    spec = deployment("overlays/postgres-ha")["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert {c["topologyKey"] for c in spec["template"]["spec"]["topologySpreadConstraints"]} >= {"kubernetes.io/hostname"}
    url = yaml.safe_load(configmap_config("overlays/postgres-ha"))["store"]["url"]
    assert url.startswith("postgresql://")
    assert not re.match(r"postgresql://[^@/]*:[^@/]*@", url), "no password in a ConfigMap"
    env = {e["name"]: e for e in container("overlays/postgres-ha")["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": "postgres-password"}
    [pdb] = objects("overlays/postgres-ha", "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("target", GATEWAY_TARGETS)
def test_service_and_pdb_select_the_pods(target: str) -> None:
    labels = deployment(target)["spec"]["template"]["metadata"]["labels"]
    assert deployment(target)["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [service] = objects(target, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8080, "http")]
    [pdb] = objects(target, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [account] = objects(target, "ServiceAccount")
    assert deployment(target)["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_the_servicemonitor_scrapes_the_service_metrics_port() -> None:
    [monitor] = rendered("overlays/servicemonitor")
    assert (monitor["apiVersion"], monitor["kind"]) in CRDS
    [service] = objects("base", "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+s", endpoint["interval"])


def secret_refs(target: str) -> dict[str, str]:
    """Environment variable -> Secret key, for every secretKeyRef of the gateway container."""
    refs = {}
    for variable in container(target).get("env", []):
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == SECRET_NAME and not ref.get("optional"), variable
            refs[variable["name"]] = ref["key"]
    return refs


@pytest.mark.parametrize("target", TARGETS)
def test_no_secret_values_are_shipped(target: str) -> None:
    assert not objects(target, "Secret"), "the Secret is created by the operator, never rendered from the repo"
    for obj in rendered(target):
        text = yaml.safe_dump(obj)
        assert "BEGIN" not in text and not re.search(r"password:\s*[^\s_]", text.replace("password_env", "")), obj["kind"]


def test_the_example_secret_holds_every_referenced_key_and_only_placeholders() -> None:
    import kubernetes_validate

    example = yaml.safe_load((KUBERNETES / "base" / "secret.example.yaml").read_text())
    kubernetes_validate.validate(example, "1.25.0", strict=True)
    assert example["metadata"]["name"] == SECRET_NAME
    wanted = {key for target in GATEWAY_TARGETS for key in secret_refs(target).values()}
    assert set(example["stringData"]) == wanted
    assert all(value.startswith("<") and value.endswith(">") for value in example["stringData"].values())
    kustomization = yaml.safe_load((KUBERNETES / "base" / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"]


def configmap_config(target: str) -> str:
    [configmap] = objects(target, "ConfigMap")
    return configmap["data"]["config.yaml"]


@pytest.mark.parametrize("target", GATEWAY_TARGETS)
def test_the_configmap_config_passes_check_config_with_the_deployment_environment(target: str, tmp_path: Path) -> None:
    """Only the variables the Deployment sets are set: a *_env the pod would lack fails here."""
    path = tmp_path / "config.yaml"
    path.write_text(configmap_config(target))
    env_names = set(re.findall(r"_env:\s*(\w+)", path.read_text()))
    given = {e["name"]: e.get("value", "value-from-a-secret") for e in container(target).get("env", [])}
    assert env_names <= set(given), f"config names {sorted(env_names - set(given))}, which the Deployment does not set"
    blank = {name: "" for name in env_names}  # whatever the test runner's environment has
    result = run_cli("check-config", str(path), env={**blank, **given, "PREHEAT_GATEWAY_STATE_DIR": str(tmp_path)}, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    assert config["server"]["listen"].endswith(":8080")
    assert config["store"]["secret_key_env"] in secret_refs(target), "replicas share the sealing key from the Secret"
    assert given.get("PREHEAT_GATEWAY_STATE_DIR") == config["server"]["state_dir"] == STATE_DIR
