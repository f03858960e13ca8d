"""The compose demo's client: push an image to the origin, preheat it the way Harbor does, wait.

1. Pushes ``$DEMO_REPOSITORY:$DEMO_TAG`` (a small two-layer image built here, byte-for-byte
   the same on every run) to the token-protected origin as the ``admin`` account.
2. Gets a pull token for that repository as ``robot$preheat``, as Harbor core does before it
   calls a preheat provider.
3. ``POST /oapi/v1/jobs`` to the gateway (Dragonfly's Open API, what Harbor 2.12+ sends) with
   that token in ``args.headers`` and the gateway's personal access token as the bearer.
4. Polls ``GET /oapi/v1/jobs/{id}`` until SUCCESS or FAILURE and prints each cluster's result.

Exit status 0 on SUCCESS, 1 on FAILURE or timeout. Uses ``httpx`` (a gateway dependency), so
it runs in the gateway image.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import sys
import tarfile
import time
from pathlib import Path

import httpx

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def secret(name: str) -> str:
    return (Path(env("DEMO_SECRETS_DIR", "/demo-secrets")) / name).read_text().strip()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzipped tar layer and its diff_id, reproducible (fixed mtimes, fixed order)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 0
            tar.addfile(info, io.BytesIO(content))
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, mtime=0), digest(uncompressed)


def build_image(repository: str, tag: str) -> tuple[bytes, list[bytes]]:
    """(manifest, blobs): a config and two layers, one text file and 2 MiB of noise."""
    hello = f"{repository}:{tag}, preheated by harbor-preheat-gateway\n".encode()
    layers = [layer({"hello.txt": hello}), layer({"data.bin": random.Random(8).randbytes(2 << 20)})]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
            "history": [{"created_by": "deploy/compose/demo/run_demo.py"} for _ in layers],
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": digest(config)},
            "layers": [{"mediaType": DOCKER_LAYER, "size": len(blob), "digest": digest(blob)} for blob, _ in layers],
        },
        indent=3,
    ).encode()
    return manifest, [config, *(blob for blob, _ in layers)]


def registry_token(client: httpx.Client, origin: str, account: str, password: str, scope: str) -> str:
    """The registry's own token dance: its 401 names the realm; the realm hands out the JWT."""
    challenge = client.get(f"{origin}/v2/").headers.get("WWW-Authenticate", "")
    scheme, _, params = challenge.partition(" ")
    if scheme.lower() != "bearer":
        raise SystemExit(f"demo: {origin} did not ask for a bearer token (WWW-Authenticate: {challenge!r})")
    fields = dict(part.split("=", 1) for part in params.split(","))
    realm, service = fields["realm"].strip('"'), fields.get("service", "").strip('"')
    response = client.get(realm, params={"service": service, "scope": scope}, auth=(account, password))
    response.raise_for_status()
    return str(response.json()["token"])


def push(client: httpx.Client, origin: str, repository: str, tag: str) -> str:
    token = registry_token(client, origin, "admin", secret("admin-password"), f"repository:{repository}:pull,push")
    auth = {"Authorization": f"Bearer {token}"}
    manifest, blobs = build_image(repository, tag)
    for blob in blobs:
        blob_digest = digest(blob)
        if client.head(f"{origin}/v2/{repository}/blobs/{blob_digest}", headers=auth).status_code == 200:
            continue
        started = client.post(f"{origin}/v2/{repository}/blobs/uploads/", headers=auth)
        started.raise_for_status()
        upload = httpx.URL(origin).join(started.headers["Location"]).copy_merge_params({"digest": blob_digest})
        client.put(
            upload, content=blob, headers={**auth, "Content-Type": "application/octet-stream"}
        ).raise_for_status()
    response = client.put(
        f"{origin}/v2/{repository}/manifests/{tag}", content=manifest, headers={**auth, "Content-Type": DOCKER_MANIFEST}
    )
    response.raise_for_status()
    say(
        f"pushed {repository}:{tag} ({len(blobs) - 1} layers, {sum(map(len, blobs))} bytes) to {origin}, {digest(manifest)}"
    )
    return digest(manifest)


def wait_until_ready(client: httpx.Client, gateway: str, deadline: float) -> None:
    while True:
        try:
            if client.get(f"{gateway}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: the gateway at {gateway} never became ready")
        time.sleep(1)


def summary(job: dict) -> str:
    parts = []
    for state in (job.get("result") or {}).get("job_states") or []:
        for result in state.get("results") or []:
            progress = state.get("progress") or {}
            parts.append(
                f"cluster {result['scheduler_cluster_id']}: {state['state']} "
                f"{progress.get('items_done', 0)}/{progress.get('items_total', 0)} blobs "
                f"{progress.get('bytes_transferred', 0)}/{progress.get('bytes_total', 0)} bytes"
            )
    return "; ".join(parts)


def main() -> int:
    origin = env("DEMO_ORIGIN", "http://origin:5000").rstrip("/")
    gateway = env("DEMO_GATEWAY", "http://gateway:8080").rstrip("/")
    repository, tag = env("DEMO_REPOSITORY", "demo/hello"), env("DEMO_TAG", "1.0")
    clusters = [int(c) for c in env("DEMO_CLUSTERS", "1,2").split(",") if c.strip()]
    scope = env("DEMO_SCOPE", "all_seed_peers")
    deadline = time.monotonic() + float(env("DEMO_TIMEOUT", "300"))

    with httpx.Client(timeout=30, trust_env=False) as client:
        push(client, origin, repository, tag)
        # What Harbor core hands a preheat provider: a short-lived pull token for one repository.
        pull = registry_token(
            client, origin, "robot$preheat", secret("robot-password"), f"repository:{repository}:pull"
        )
        wait_until_ready(client, gateway, deadline)
        api = {"Authorization": f"Bearer {secret('gateway-token')}"}
        url = f"{origin}/v2/{repository}/manifests/{tag}"
        body = {
            "type": "preheat",
            "args": {
                "type": "image",
                "url": url,
                "tag": "",
                "filtered_query_params": "",
                "headers": {"Authorization": f"Bearer {pull}"},
                "scope": scope,
                "concurrent_count": 0,
                "timeout": 0,
            },
            "scheduler_cluster_ids": clusters,
        }
        created = client.post(f"{gateway}/oapi/v1/jobs", json=body, headers=api)
        if created.status_code != 200:
            say(f"the gateway refused the job: HTTP {created.status_code} {created.text}")
            return 1
        job = created.json()
        say(f"job {job['id']} created: preheat {url} into clusters {clusters}, scope {scope}")
        while job["state"] not in ("SUCCESS", "FAILURE"):
            if time.monotonic() > deadline:
                say(f"job {job['id']} still {job['state']} at the deadline: {summary(job)}")
                return 1
            time.sleep(1)
            response = client.get(f"{gateway}/oapi/v1/jobs/{job['id']}", headers=api)
            response.raise_for_status()
            job = response.json()
            say(f"job {job['id']} {job['state']}: {summary(job)}")

    for state in job["result"]["job_states"]:
        for result in state["results"]:
            say(
                f"cluster {result['scheduler_cluster_id']} {state['state']}{': ' + state['error'] if state['error'] else ''}"
            )
            for row in result["success_tasks"] or []:
                say(f"  warmed {row['url'].rsplit('/', 1)[-1][:19]}... on {row['hostname']}")
            for row in result["failure_tasks"] or []:
                say(f"  FAILED {row['url'].rsplit('/', 1)[-1][:19]}... on {row['hostname']}: {row['description']}")
    say(f"job {job['id']} finished: {job['state']}")
    return 0 if job["state"] == "SUCCESS" else 1


if __name__ == "__main__":
    sys.exit(main())
