"""The live config and catalog: one holder, both swapped in one step."""

from __future__ import annotations

from dxproxy.config import load_default_config
from dxproxy.models.catalog import Catalog
from dxproxy.routing.live import Live


def test_swap_replaces_config_and_catalog_together() -> None:
    first, second = load_default_config(), load_default_config()
    live = Live(first, Catalog(()))
    new_catalog = Catalog(())
    live.swap(second, new_catalog)
    assert live.config is second and live.catalog is new_catalog
