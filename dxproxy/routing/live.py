"""The config and catalog every request reads, held together and swapped together.

A reload builds the new config and its catalog first, then `swap`s both in one synchronous
step (no await between): no request sees the new config with the old catalog. The holder
itself stays the same object for the app's whole life, so nothing writes to the frozen
aiohttp app while it serves.
"""

from __future__ import annotations

from dxproxy.config import Config
from dxproxy.models.catalog import Catalog


class Live:
    __slots__ = ("catalog", "config")

    def __init__(self, config: Config, catalog: Catalog) -> None:
        self.config = config
        self.catalog = catalog

    def swap(self, config: Config, catalog: Catalog) -> None:
        self.config = config
        self.catalog = catalog
