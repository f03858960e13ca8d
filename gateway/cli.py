"""``preheat-gateway``: serve, check a config, manage personal access tokens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from adapters.durations import parse_duration
from gateway import preheat_cli
from gateway.config import CONFIG_ENV, Config, ConfigError, load_config


def _config_path(arg: str | None) -> str | None:
    return arg or os.environ.get(CONFIG_ENV) or None


def _load(arg: str | None) -> Config:
    try:
        return load_config(_config_path(arg))
    except ConfigError as error:
        for line in error.errors:
            print(f"config error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.allocator import tune_for_streaming
    from gateway.launch import gateway_server
    from gateway.logs import configure_logging

    tune_for_streaming()
    config = _load(args.config)
    host = args.host or config.server.host
    port = args.port or config.server.port
    config.server.listen = f"{host}:{port}"
    configure_logging()
    server = gateway_server(config, tune_process=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0 if server.started else 3  # uvicorn's STARTUP_FAILURE


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as error:
        for line in error.errors:
            print(line)
        print(f"{args.file}: {len(error.errors)} error(s)", file=sys.stderr)
        return 2
    names = ", ".join(f"{c.id} {c.name} ({c.config.adapter})" for c in config.clusters)
    print(f"{args.file}: OK; store {config.store_url.split('://')[0]}; clusters: {names}")
    return 0


async def _with_store(config: Config, action):  # type: ignore[no-untyped-def]
    from gateway.store import open_store

    store = open_store(config.store_url)
    await store.open()
    try:
        return await action(store)
    finally:
        await store.close()


def cmd_token_create(args: argparse.Namespace) -> int:
    from gateway.auth import SCOPES, hash_token, new_token

    config = _load(args.config)
    scopes = [s.strip() for s in args.scope.split(",") if s.strip()]
    if not scopes or set(scopes) - SCOPES:
        print(f"unknown scope in {args.scope!r}: choose from {', '.join(sorted(SCOPES))}", file=sys.stderr)
        return 2
    try:
        expires = time.time() + parse_duration(args.expires) if args.expires else None
    except ValueError as error:
        print(f"--expires: {error}", file=sys.stderr)
        return 2
    token = new_token()
    try:
        record = asyncio.run(
            _with_store(config, lambda s: s.create_token(args.name, hash_token(token), scopes, expires))
        )
    except ValueError as error:
        print(str(error), file=sys.stderr)
        return 1
    until = _time(record.expires_at) if record.expires_at else "never"
    print(f"Created token {record.name!r} (scopes: {', '.join(scopes)}; expires: {until}). It is shown once:")
    print(token)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    config = _load(args.config)
    records = asyncio.run(_with_store(config, lambda s: s.list_tokens()))
    print(f"{'NAME':<24} {'SCOPES':<10} {'CREATED':<21} {'EXPIRES':<21} {'LAST USED':<21} STATUS")
    now = time.time()
    for r in records:
        status = "revoked" if r.revoked_at else "expired" if r.expires_at and r.expires_at <= now else "active"
        print(
            f"{r.name:<24} {','.join(r.scopes):<10} {_time(r.created_at):<21} {_time(r.expires_at):<21} {_time(r.last_used_at):<21} {status}"
        )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if not asyncio.run(_with_store(config, lambda s: s.revoke_token(args.name))):
        print(f"no active token named {args.name!r}", file=sys.stderr)
        return 1
    print(f"Revoked token {args.name!r}; replicas stop accepting it within auth.token_cache_seconds.")
    return 0


def _time(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if timestamp else "-"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="preheat-gateway", description="A Harbor P2P preheat provider gateway.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service")
    serve.add_argument("--config", help=f"config file (default: ${CONFIG_ENV}, else the embedded default)")
    serve.add_argument("--host", help="listen address (overrides server.listen)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.listen)")
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser("check-config", help="validate a config file and print every error")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    token = commands.add_parser("token", help="personal access tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="create a token; it is printed once, alone on the last line")
    create.add_argument("--config")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scope", default="job", help="job (run preheats), pull (pull from the /v2/ mirror) or job,pull (default: job)"
    )
    create.add_argument("--expires", help="lifetime such as 90d or 12h (default: never)")
    create.set_defaults(func=cmd_token_create)
    listing = token_commands.add_parser("list", help="list tokens (never their values)")
    listing.add_argument("--config")
    listing.set_defaults(func=cmd_token_list)
    revoke = token_commands.add_parser("revoke", help="revoke a token by name")
    revoke.add_argument("name")
    revoke.add_argument("--config")
    revoke.set_defaults(func=cmd_token_revoke)
    preheat_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
