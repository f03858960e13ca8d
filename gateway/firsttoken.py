"""A first start with token auth and no token yet creates one and prints it, once."""

from __future__ import annotations

from gateway.auth import hash_token, new_token
from gateway.config import ServerConfig
from gateway.store import SqlStore


async def announce_first_token(store: SqlStore, server: ServerConfig) -> None:
    """Create the personal access token ``default`` (scope ``job``) and print it, unless the
    store holds a token already: a new user has a credential to paste into Harbor at once."""
    if await store.list_tokens():
        return
    token = new_token()
    try:
        await store.create_token("default", hash_token(token), ["job"], None)
    except ValueError:  # another replica starting at the same moment made it first
        return
    print(
        f"Created personal access token 'default' (shown once, store it now):\n  {token}\n"
        f"Use it in Harbor as auth mode OAuth, or: curl -H 'Authorization: Bearer {token}' "
        f"http://{server.host}:{server.port}/healthy",
        flush=True,
    )
