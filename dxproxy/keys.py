"""Typed keys for shared state on the aiohttp application (no string keys)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from dxproxy.catalog import Catalog
from dxproxy.config import Config
from dxproxy.router import Router
from supervisors.supervisor import Supervisor

CONFIG = web.AppKey("dx.config", Config)
SESSION = web.AppKey("dx.session", aiohttp.ClientSession)
SUPERVISOR = web.AppKey("dx.supervisor", Supervisor)
ROUTER = web.AppKey("dx.router", Router)
CATALOG = web.AppKey("dx.catalog", Catalog)

# Per request, set when an engine replica is chosen (for the access log and metrics).
REPLICA = web.RequestKey("dx.replica", str)
QUEUE_WAIT = web.RequestKey("dx.queue_wait", float)  # seconds spent waiting for a replica
# The configured model a request resolved to (its name, not the caller's spelling).
MODEL = web.RequestKey("dx.model", str)
