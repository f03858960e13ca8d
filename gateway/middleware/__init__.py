"""The ASGI middleware the app is assembled from, one a module, outermost first in ``gateway.app``."""
