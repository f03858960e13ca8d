"""``preheat-gateway preheat``: submit a preheat through the Open API and follow it.

It is a client of a running gateway, exactly like Harbor or a script: it sends an Open API
create request and, with ``--wait``, polls the job, drawing a progress line per cluster on a
terminal (plain lines otherwise), then prints Harbor's result table. The exit status says
how it ended, so it fits in a deploy pipeline.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from typing import Any, TextIO

import httpx

from adapters.base import SCOPES
from adapters.durations import parse_duration
from gateway.config import (
    CONFIG_ENV,
    ConfigError,
    RunnerConfig,
    load_config,
)

TOKEN_ENV = "PREHEAT_GATEWAY_TOKEN"
SERVER_ENV = "PREHEAT_GATEWAY_SERVER"
EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
MAX_GO_DURATION_NS = 2**63 - 1
_REFERENCE = re.compile(
    r"^(?P<host>[^/]+\.[^/]+|[^/]+:\d+|localhost)/(?P<repo>[^:@]+)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)


class UsageError(Exception):
    pass


def manifest_url(reference: str, *, plain_http: bool = False) -> str:
    """``harbor.example.com/library/alpine:3.19`` -> ``https://harbor.example.com/v2/library/alpine/manifests/3.19``."""
    if reference.startswith(("http://", "https://")):
        return reference
    match = _REFERENCE.fullmatch(reference)
    if not match:
        raise UsageError(
            f"{reference!r} is neither an image reference (registry.example.com/project/image:tag) nor an http(s) URL"
        )
    scheme = "http" if plain_http else "https"
    return f"{scheme}://{match['host']}/v2/{match['repo']}/manifests/{match['digest'] or match['tag'] or 'latest'}"


def timeout_ns(text: str | None) -> int:
    """``--timeout 2h`` as the Go duration in nanoseconds the Open API takes; 0 (the gateway's default) when absent."""
    if not text:
        return 0
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise UsageError(f"--timeout: {error}") from None
    default_max = RunnerConfig().max_timeout
    if not math.isfinite(seconds) or seconds * 1e9 > MAX_GO_DURATION_NS:
        raise UsageError(
            f"--timeout {text[:40]!r} is too long: the gateway accepts at most its runner.max_timeout ({default_max} by default)"
        )
    return int(seconds * 1_000_000_000)


def _server(args: argparse.Namespace) -> str:
    if args.server:
        return args.server.rstrip("/")
    if env := os.environ.get(SERVER_ENV):
        return env.rstrip("/")
    try:
        config = load_config(args.config or os.environ.get(CONFIG_ENV) or None)
    except ConfigError:
        config = load_config(None)
    host = config.server.host if config.server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    scheme = "https" if config.server.tls else "http"
    return f"{scheme}://{host}:{config.server.port}{config.server.root_path}"


def _body(args: argparse.Namespace) -> dict[str, Any]:
    urls = [
        manifest_url(target, plain_http=args.plain_http) if args.type == "image" else target for target in args.targets
    ]
    preheat: dict[str, Any] = {
        "type": args.type,
        "url": urls[0],
        "platform": args.platform or "",
        "scope": args.scope or "",
        "timeout": timeout_ns(getattr(args, "timeout", None)),
    }
    if len(urls) > 1:
        preheat["urls"] = urls[1:]
    if args.username:
        password = os.environ.get(args.password_env or "", "")
        if not password:
            raise UsageError("--username needs --password-env naming a set environment variable")
        preheat.update(username=args.username, password=password)
    return {
        "type": "preheat",
        "args": preheat,
        "scheduler_cluster_ids": args.cluster or None,
        "bio": args.description or "",
    }


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    token = os.environ.get(args.token_env or TOKEN_ENV, "")
    try:
        body = _body(args)
        server = _server(args)
    except UsageError as error:
        print(f"preheat: {error}", file=err)
        return EXIT_USAGE
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=server, headers=headers, timeout=30, verify=not args.insecure) as client:
        try:
            response = client.post("/oapi/v1/jobs", json=body)
        except httpx.TransportError as error:
            print(f"preheat: cannot reach the gateway at {server}: {error}", file=err)
            return EXIT_UNREACHABLE
        if response.status_code != 200:
            print(f"preheat: the gateway refused the job ({response.status_code}): {_error(response)}", file=err)
            if response.status_code == 401 and not token:
                print(f"preheat: set {args.token_env or TOKEN_ENV} to a token (preheat-gateway token create)", file=err)
            return EXIT_USAGE if response.status_code < 500 else EXIT_FAILED
        job = response.json()
        print(f"job {job['id']} created on {server}", file=out, flush=True)
        if not args.wait:
            return 0
        return _follow(client, job["id"], out, err, interval=args.interval)


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("errors", response.text))
    except ValueError:
        return response.text[:300]


def _follow(client: httpx.Client, job_id: int, out: TextIO, err: TextIO, *, interval: float) -> int:
    live = out.isatty()
    last_lines: list[str] = []
    while True:
        try:
            response = client.get(f"/oapi/v1/jobs/{job_id}")
            response.raise_for_status()
        except httpx.HTTPError as error:
            print(f"preheat: lost the gateway while following job {job_id}: {error}", file=err)
            return EXIT_UNREACHABLE
        job = response.json()
        kind = _kind(job)
        lines = [_progress_line(state, kind) for state in job["result"]["job_states"]]
        if live:
            if last_lines:
                out.write(f"\x1b[{len(last_lines)}F")
            out.write("".join(f"\x1b[2K{line}\n" for line in lines))
            out.flush()
        elif lines != last_lines:
            for line in lines:
                print(line, file=out, flush=True)
        last_lines = lines
        if job["state"] != "PENDING":
            break
        time.sleep(interval)
    _print_table(job, out, _kind(job))
    if job["state"] == "SUCCESS":
        print(f"job {job_id} SUCCESS", file=out)
        return 0
    errors = [state["error"] for state in job["result"]["job_states"] if state["error"]]
    print(f"job {job_id} FAILURE: {'; '.join(errors) or 'no error message'}", file=err)
    return EXIT_FAILED


def _kind(job: dict[str, Any]) -> str:
    return "file" if (job.get("args") or {}).get("type") == "file" else "image"


def _progress_line(state: dict[str, Any], kind: str = "image") -> str:
    """One cluster's progress: a bar that follows bytes when their total is known (else items),
    and, once it succeeded, what it did not have to fetch because it was already warm."""
    progress = state.get("progress") or {}
    cluster = state["results"][0]["scheduler_cluster_id"] if state.get("results") else "?"
    done, total = progress.get("items_done", 0), progress.get("items_total", 0)
    moved, size = progress.get("bytes_transferred", 0), progress.get("bytes_total", 0)
    width = 24
    if state["state"] == "SUCCESS":
        fraction = 1.0
    elif size:
        fraction = min(1.0, moved / size)
    else:
        fraction = min(1.0, (done + progress.get("items_failed", 0)) / total) if total else 0.0
    filled = int(width * fraction)
    bar = "#" * filled + "." * (width - filled)
    return f"cluster {cluster:<4} [{bar}] {done}/{total} {'files' if kind == 'file' else 'blobs'}  {_bytes_text(moved, size, state['state'])}  {state['state']}"


def _bytes_text(moved: int, size: int, state: str) -> str:
    if not size:
        return f"{_mib(moved)} fetched" if moved else "-"
    moved = min(moved, size)
    if (
        state == "SUCCESS" and moved < size
    ):  # not fetched: the blobs were already in the cache (or warmed by another job just now)
        return (
            f"already warm ({_mib(size)})"
            if moved == 0
            else f"{_mib(moved)} fetched, {_mib(size - moved)} already warm"
        )
    return f"{_mib(moved)}/{_mib(size)}"


def _mib(value: int) -> str:
    return f"{value / 1048576:.1f} MiB"


def _print_table(job: dict[str, Any], out: TextIO, kind: str = "image") -> None:
    rows = []
    for state in job["result"]["job_states"]:
        for result in state["results"]:
            cluster = str(result["scheduler_cluster_id"])
            rows += [(t["url"], t["hostname"], t["ip"], cluster, "SUCCESS", "") for t in result["success_tasks"]]
            rows += [
                (t["url"], t["hostname"], t["ip"], cluster, "FAILURE", t.get("description", ""))
                for t in result["failure_tasks"]
            ]
    if not rows:
        return
    header = ("FILE URL" if kind == "file" else "BLOB URL", "HOSTNAME", "IP", "CLUSTER", "STATE", "ERROR")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


def add_parser(commands: Any) -> None:
    preheat = commands.add_parser("preheat", help="submit a preheat to a running gateway (and follow it with --wait)")
    preheat.add_argument(
        "targets",
        nargs="+",
        metavar="REF_OR_URL",
        help="image reference, manifest URL, or file URL(s) with --type file",
    )
    preheat.add_argument("--server", help=f"gateway URL (default: ${SERVER_ENV}, else the config's server.listen)")
    preheat.add_argument("--config", help="config file, to find the gateway's address")
    preheat.add_argument(
        "--token-env", default=TOKEN_ENV, help=f"environment variable holding the token (default {TOKEN_ENV})"
    )
    preheat.add_argument("--cluster", type=int, action="append", help="cluster id; repeat for several (default: all)")
    preheat.add_argument("--platform", help="os/arch[/variant] or 'all' (default: the cluster's, else linux/amd64)")
    preheat.add_argument("--scope", choices=SCOPES)
    preheat.add_argument("--type", choices=["image", "file"], default="image")
    preheat.add_argument("--description", help="stored as the job's bio")
    preheat.add_argument(
        "--timeout",
        help="the job's time limit, e.g. 30m or 2h (default: the gateway's runner.default_timeout; "
        "at most its runner.max_timeout, 24h by default)",
    )
    preheat.add_argument("--username", help="registry username sent with the job")
    preheat.add_argument("--password-env", help="environment variable holding the registry password")
    preheat.add_argument(
        "--plain-http", action="store_true", help="the registry of an image reference speaks http, not https"
    )
    preheat.add_argument("--insecure", action="store_true", help="do not verify the gateway's TLS certificate")
    preheat.add_argument("--wait", action="store_true", help="follow the job; exit 0 on SUCCESS, 1 on FAILURE")
    preheat.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    preheat.set_defaults(func=run)
