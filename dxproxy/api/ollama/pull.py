"""Ollama's `/api/pull` and `/api/delete` for Hugging Face models (`hf.co/ORG/REPO[:QUANT]`),
admin keys only: the pull of `dx pull` (dxproxy/models/hub.py), run by the server, its
progress streamed as Ollama's NDJSON lines, then the config file written and reloaded so the
model is served when `success` is sent.

A pull is a task of its own, not of the request: a client that disconnects leaves it running,
and a second `/api/pull` of the same name (from anyone) watches the same pull, from its first
line, instead of downloading again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from dxproxy.api.ollama.reply import NDJSON
from dxproxy.api.schemas import ModelRequest
from dxproxy.config import ConfigError
from dxproxy.config.schema import DEFAULT_CONTEXT
from dxproxy.http.errors import ApiError, json_response
from dxproxy.http.state import API_KEY, LIVE, RELOADER
from dxproxy.models.hub import (
    Pull,
    PullError,
    entry_for,
    is_cached_file,
    parse_ref,
    read_budget,
    with_path,
)
from dxproxy.models.pulled import add_pulled, entry_lines, remove_pulled

log = logging.getLogger("dx.pull")


class Job:
    """One pull: its lines so far (every watcher reads them all), and whether it ended."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.done = False
        self._changed = asyncio.Event()  # set, then replaced, at each line
        self.task: asyncio.Task[None] | None = None

    def add(self, line: dict[str, Any]) -> None:
        self.lines.append(line)
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def watch(self) -> AsyncIterator[dict[str, Any]]:
        i = 0
        while True:
            changed = self._changed  # before reading: a line added meanwhile sets it
            while i < len(self.lines):
                yield self.lines[i]
                i += 1
            if self.done:
                return
            await changed.wait()


class Pulls:
    """The pulls in progress, by model name; the app's cleanup cancels what still runs."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}

    def start(self, app: web.Application, name: str, config_path: Path) -> Job:
        job = self.jobs.get(name)
        if job is not None and not job.done:
            return job  # a pull of the same name is running: watch it
        job = self.jobs[name] = Job()
        job.task = asyncio.create_task(_run(app, job, name, config_path))
        return job

    async def close(self) -> None:
        tasks = [j.task for j in self.jobs.values() if j.task and not j.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


PULLS = web.AppKey("dx.pulls", Pulls)


def install(app: web.Application) -> None:
    """The pulls' registry on `app`, its running pulls cancelled at shutdown."""
    pulls = app[PULLS] = Pulls()

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await pulls.close()

    app.cleanup_ctx.append(ctx)


async def _run(app: web.Application, job: Job, name: str, config_path: Path) -> None:
    try:
        ref = parse_ref(name)
        budget = await asyncio.to_thread(read_budget)
        entry = entry_for(ref, DEFAULT_CONTEXT, budget)
        pull = Pull(ref, entry, budget, lambda e: job.add(e.ollama()))
        pulled = await pull.run()
        job.add({"status": "writing manifest"})
        entry = with_path(entry, pulled)
        lines = entry_lines(pulled, entry, pull.endpoint)
        await asyncio.to_thread(add_pulled, config_path, ref.name, lines)
        job.add({"status": f"serving {ref.name}: reloading the config"})
        status = await app[RELOADER].reload("api pull")
        if status.last_error:
            raise PullError(f"the config was written but not applied: {status.last_error}")
        job.add({"status": "success"})
        log.info("pulled %s into %s", ref.name, config_path)
    except (PullError, ConfigError, OSError) as exc:
        log.warning("pull of %s failed: %s", name, exc)
        job.add({"error": str(exc)})
    except Exception as exc:  # a bug: said to the watchers, logged with its trace
        log.exception("pull of %s failed", name)
        job.add({"error": f"pull failed: {exc}"})
    finally:
        job.finish()


def _check_admin(request: web.Request, what: str) -> Path:
    """The config file to change, after checking the caller may change it."""
    config = request.app[LIVE].config
    record = request.get(API_KEY)
    if config.auth.enabled and (record is None or not record.admin):
        name = record.name if record else "none"
        raise ApiError(
            403,
            f"{what} changes DX's config: it needs an admin key (this key: '{name}'; "
            "dx keys create NAME --admin)",
            code="permission_denied",
        )
    if config.source.startswith("<"):
        raise ApiError(
            400,
            f"DX serves {config.source}, not a file, so there is no config to add to: start "
            "dx serve with --config FILE (dx pull on the server writes ~/.config/dx/dx.yaml, "
            "which dx serve then uses)",
        )
    return Path(config.source)


async def pull(request: web.Request, req: ModelRequest) -> web.StreamResponse:
    """`/api/pull` of `hf.co/ORG/REPO[:QUANT]`."""
    try:
        ref = parse_ref(req.which)
    except PullError as exc:
        raise ApiError(400, str(exc)) from None
    config_path = _check_admin(request, "pulling a model")
    job = request.app[PULLS].start(request.app, ref.name, config_path)
    if not req.stream:
        last: dict[str, Any] = {}
        async for line in job.watch():
            last = line
        if "error" in last:
            raise ApiError(500, last["error"])
        return json_response({"status": "success"})
    out = web.StreamResponse(headers={"Content-Type": NDJSON})
    await out.prepare(request)
    # A client that goes away stops watching; the pull goes on (job.task is not ours).
    with contextlib.suppress(ConnectionResetError):
        async for line in job.watch():
            await out.write(orjson.dumps(line) + b"\n")
    return out


async def delete(request: web.Request, name: str) -> web.Response:
    """`/api/delete` of a pulled model: out of the config (reloaded) and its files deleted."""
    config_path = _check_admin(request, "deleting a model")
    try:
        _, deleted = await asyncio.to_thread(remove_pulled, config_path, name)
    except ConfigError as exc:
        raise ApiError(400, "; ".join(exc.problems)) from None
    status = await request.app[RELOADER].reload("api delete")
    if status.last_error:
        raise ApiError(500, f"the model was removed from the config, but: {status.last_error}")
    log.info("deleted %s and %d file(s)", name, len(deleted))
    return web.Response(status=200)


def is_pulled(request: web.Request, name: str) -> bool:
    """Whether `name` is a model dx pull added (its file is in the Hugging Face cache)."""
    model = request.app[LIVE].config.model(name)
    return model is not None and is_cached_file(model.model)


__all__ = ["PULLS", "Pulls", "delete", "install", "is_pulled", "pull"]
