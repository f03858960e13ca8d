"""The web console at /console/: people sign in, follow and create preheats, and see clusters.

Routes live under ``/console`` (the auth middleware leaves them to the console's own
sign-in); static files are served by the gateway itself so the console works air-gapped.
"""

from __future__ import annotations

from functools import partial

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.console import views
from gateway.console.views import page


def routes() -> list[BaseRoute]:
    fragment = partial(page, fragment=True)
    return [
        Route("/console", views.home, methods=["GET"]),
        Route("/console/", views.home, methods=["GET"]),
        Route("/console/signin", views.signin_page, methods=["GET"]),
        Route("/console/signin", views.signin, methods=["POST"]),
        Route("/console/signout", views.signout, methods=["POST"]),
        Route("/console/preheats", page(views.preheats), methods=["GET"]),
        Route("/console/preheats/rows", fragment(views.preheat_rows), methods=["GET"]),
        Route("/console/preheats/new", page(views.new_preheat), methods=["GET"]),
        Route("/console/preheats/new", page(views.create_preheat), methods=["POST"]),
        Route("/console/preheats/{id:int}", page(views.preheat_detail), methods=["GET"]),
        Route("/console/preheats/{id:int}/status", fragment(views.preheat_status), methods=["GET"]),
        Route("/console/preheats/{id:int}/cancel", page(views.cancel_preheat), methods=["POST"]),
        Route("/console/clusters", page(views.clusters), methods=["GET"]),
        Mount("/console/static", StaticFiles(directory=views.STATIC), name="console-static"),
        Route("/console/{rest:path}", views.not_found, methods=["GET"]),
    ]
