"""docs/nodes.md: every snippet is what the runtime it is for would read.

Each fenced block is parsed with its tool's own format (TOML for containerd and CRI-O, JSON for
Docker and the containers auth file, YAML for the Helm values and the Kubernetes objects, which
are validated against the Kubernetes schemas) and checked for the keys that tool reads. The
DaemonSet's script is run with a POSIX shell into a temporary directory and what it writes is
read back as TOML. The gateway's hosts.toml is also loaded by a real containerd pulling through a
real gateway, in tests/integration/test_node_pulls.py (``documented_gateway_hosts_toml``).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "nodes.md"
ORIGIN, GATEWAY = "https://harbor.example.com", "http://preheat-gw.example.com:5000"
CONTAINERD_HOST_KEYS = {"capabilities", "ca", "client", "skip_verify", "header", "override_path"}


def blocks(language: str) -> list[str]:
    """The fenced blocks of docs/nodes.md in ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), re.S | re.M)


def hosts_tomls() -> list[dict[str, Any]]:
    return [doc for doc in map(tomllib.loads, blocks("toml")) if "server" in doc]


def documented_gateway_hosts_toml(*, origin: str, gateway: str, token: str) -> str:
    """The gateway's hosts.toml from docs/nodes.md with its example names replaced (for containerd)."""
    [text] = [t for t in blocks("toml") if "header" in t]
    return text.replace(ORIGIN, origin).replace(GATEWAY, gateway).replace("phg_…", token)


def test_the_readme_links_this_page() -> None:
    assert "(docs/nodes.md)" in (ROOT / "README.md").read_text()


def test_every_hosts_toml_is_one_containerd_reads() -> None:
    documents = hosts_tomls()
    assert len(documents) >= 4, "the gateway's own mirror, distribution, Harbor proxy-cache, Zot"
    for doc in documents:
        assert set(doc) <= {"server", "host", "capabilities", "ca", "skip_verify"}, doc
        assert doc["server"].startswith("https://")
        for url, host in doc["host"].items():
            assert re.match(r"^https?://[^/]+(/v2/.+)?$", url), url
            assert set(host) <= CONTAINERD_HOST_KEYS, host
            assert set(host["capabilities"]) <= {"pull", "resolve", "push"} and "resolve" in host["capabilities"]
            assert ("/v2/" in url) == host.get("override_path", False), "a path in the URL needs override_path"


def test_the_gateways_hosts_toml_sends_the_pull_token() -> None:
    doc = tomllib.loads(documented_gateway_hosts_toml(origin=ORIGIN, gateway=GATEWAY, token="phg_x"))
    assert doc["server"] == ORIGIN
    assert doc["host"][GATEWAY]["header"] == {"Authorization": "Bearer phg_x"}


def test_the_containerd_config_points_the_cri_plugin_at_the_hosts_directory() -> None:
    [config] = [tomllib.loads(t) for t in blocks("toml") if "config_path" in t]
    assert config["version"] == 2
    assert config["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["config_path"] == "/etc/containerd/certs.d"


def test_the_cri_o_drop_in_is_registries_conf_version_2() -> None:
    [conf] = [tomllib.loads(t) for t in blocks("toml") if "[[registry]]" in t]
    [registry] = conf["registry"]
    assert registry["prefix"] == registry["location"] == "harbor.example.com"
    mirrors = [m["location"] for m in registry["mirror"]]
    assert mirrors[0] == "preheat-gw.example.com:5000", "the gateway first"
    assert all(set(m) <= {"location", "insecure", "pull-from-mirror"} for m in registry["mirror"])
    assert all("://" not in location for location in mirrors), "registries.conf takes host[:port], no scheme"


def test_the_json_snippets_are_dockers_daemon_json_and_a_containers_auth_file() -> None:
    documents = [json.loads(t) for t in blocks("json")]
    [auth] = [d for d in documents if "auths" in d]
    [entry] = auth["auths"].values()
    user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
    assert (user, secret) == ("nodes", "phg_..."), "base64 of user:token"
    [daemon] = [d for d in documents if "registry-mirrors" in d]
    assert set(daemon) == {"registry-mirrors"} and all(
        m.startswith(("http://", "https://")) for m in daemon["registry-mirrors"]
    )


def test_the_helm_values_are_the_charts_and_match_its_example() -> None:
    [values] = [yaml.safe_load(t) for t in blocks("yaml") if "nodeDaemonSet" in t]
    chart = yaml.safe_load((ROOT / "deploy/helm/preheat-gateway/values.yaml").read_text())["nodeDaemonSet"]
    assert set(values["nodeDaemonSet"]) <= set(chart)
    schema = json.loads((ROOT / "deploy/helm/preheat-gateway/values.schema.json").read_text())
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - a test dependency of kubernetes-validate
        pytest.skip("jsonschema not installed")
    jsonschema.validate({"nodeDaemonSet": values["nodeDaemonSet"]}, {**schema, "required": []})
    example = yaml.safe_load((ROOT / "deploy/helm/examples/node-daemonset.yaml").read_text())["nodeDaemonSet"]
    assert values["nodeDaemonSet"]["registries"] == example["registries"]


def daemonset_objects() -> list[dict[str, Any]]:
    [text] = [t for t in blocks("yaml") if "kind: DaemonSet" in t]
    return [obj for obj in yaml.safe_load_all(text) if obj]


def test_the_daemonset_and_its_secret_validate_against_the_kubernetes_schemas() -> None:
    import kubernetes_validate

    objects = daemonset_objects()
    assert [o["kind"] for o in objects] == ["Secret", "DaemonSet"]
    for obj in objects:
        for version in ("1.25.0", kubernetes_validate.latest_version()):
            kubernetes_validate.validate(obj, version, strict=True)
    pod = objects[1]["spec"]["template"]["spec"]
    [writer] = pod["containers"]
    assert writer["securityContext"]["readOnlyRootFilesystem"] is True
    assert [v["hostPath"]["path"] for v in pod["volumes"]] == ["/etc/containerd/certs.d"]


def test_the_daemonsets_script_writes_a_hosts_toml_readable_by_root_only(tmp_path: Path) -> None:
    shell = shutil.which("sh")
    if shell is None:  # pragma: no cover - every Debian has dash
        pytest.skip("no POSIX shell")
    [writer] = daemonset_objects()[1]["spec"]["template"]["spec"]["containers"]
    script = writer["args"][0].replace("/certs.d", str(tmp_path)).replace("exec sleep 2147483647", "exit 0")
    result = subprocess.run(
        [shell, "-c", script],
        env={"TOKEN": "phg_secret", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    written = tmp_path / "harbor.example.com" / "hosts.toml"
    assert written.stat().st_mode & 0o777 == 0o600
    assert not list(written.parent.glob(".hosts.toml*")), "renamed into place"
    doc = tomllib.loads(written.read_text())
    assert doc == tomllib.loads(documented_gateway_hosts_toml(origin=ORIGIN, gateway=GATEWAY, token="phg_secret"))
