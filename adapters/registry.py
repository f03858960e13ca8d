"""Find adapters by name: the built-ins, then any package's entry point.

A third-party package registers ``name = "module:Class"`` under the entry-point group
``harbor_preheat_gateway.adapters``; ``adapter: name`` in the config then uses it.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from adapters.base import Adapter

ENTRY_POINT_GROUP = "harbor_preheat_gateway.adapters"
BUILTIN = {
    "local": "adapters.local:LocalAdapter",
    "mirror": "adapters.mirror:MirrorAdapter",
    "proxy": "adapters.proxy:ProxyAdapter",
    "dragonfly": "adapters.dragonfly:DragonflyAdapter",
    "kraken": "adapters.kraken:KrakenAdapter",
}


class UnknownAdapter(LookupError):
    pass


def available() -> list[str]:
    """Every adapter name that can be used in a config."""
    return sorted(set(BUILTIN) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load(name: str) -> type[Adapter]:
    """The adapter class registered as ``name``; raises :class:`UnknownAdapter` with the choices."""
    if name in BUILTIN:
        module, _, attribute = BUILTIN[name].partition(":")
        adapter = getattr(importlib.import_module(module), attribute)
    else:
        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not matches:
            raise UnknownAdapter(
                f"unknown adapter {name!r}: choose one of {', '.join(available())}, or install a package that provides it"
            )
        adapter = matches[0].load()
    if not (isinstance(adapter, type) and issubclass(adapter, Adapter)):
        raise UnknownAdapter(f"adapter {name!r} does not subclass adapters.base.Adapter")
    return adapter
