"""The gateway as ``preheat-gateway serve`` runs it: its app, and the mirror's own listener if
configured, on the guarded server (``gateway.serving``)."""

from __future__ import annotations

from gateway.app import create_app
from gateway.config import Config
from gateway.serving import GuardedServer, Limits, guarded_server


def gateway_server(config: Config, *, tune_process: bool = False) -> GuardedServer:
    """The server for ``config`` (``server.listen``, TLS, limits, drain), ready to ``run()``.

    ``tune_process`` (the ``serve`` command) also tunes the process's collector; a gateway
    embedded in a process of someone else's leaves it alone.
    """
    tls = config.server.tls
    app = create_app(config, tune_process=tune_process)
    limits = Limits.from_config(config.server)
    served = app
    if config.server.mirror_address is not None:  # the mirror on an address of its own
        from gateway.mirrorlisten import MirrorListener, with_mirror_listener

        mirror_host, mirror_port = config.server.mirror_address
        served = with_mirror_listener(
            app,
            MirrorListener(
                app,
                mirror_host,
                mirror_port,
                limits,
                ssl_certfile=tls.cert if tls else None,
                ssl_keyfile=tls.key if tls else None,
            ),
        )
    return guarded_server(
        served,
        host=config.server.host,
        port=config.server.port,
        limits=limits,
        ssl_certfile=tls.cert if tls else None,
        ssl_keyfile=tls.key if tls else None,
        loop="uvloop",
        log_config=None,
        access_log=False,
        server_header=False,
        shutdown_delay=config.server.shutdown_delay_seconds,  # SIGTERM: readiness 503 first, still serving
        on_drain=app.state.gateway.drain,
        timeout_graceful_shutdown=10,  # then requests in flight drain, then the runner hands tasks back
        backlog=2048,
    )
