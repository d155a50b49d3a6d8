"""The startup banner: what is running, where, and how to reach it. It tells the truth."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import psutil

from dxproxy import __version__
from dxproxy.config import Config
from dxproxy.keys.keyfile import KeyFile
from dxproxy.models.catalog import display_name
from dxproxy.server import logsetup
from supervisors import EngineState, Inventory, Replica, Supervisor

FAILED_TAIL = 5  # engine output lines shown under a model that failed to start
# While engines start: a live line redrawn this often on a terminal, else a log line this often.
PROGRESS_LIVE_S = 1.0
PROGRESS_LOG_S = 10.0

log = logging.getLogger("dx.server")


@dataclass(frozen=True, slots=True)
class Hardware:
    cpus: int
    ram_bytes: int
    gpus: tuple[str, ...]  # "NVIDIA H100 80GB HBM3 (79.6 GiB)", one per GPU
    gpu_note: str  # why there are none, when there are none

    def describe(self) -> str:
        gpus = (
            ", ".join(self.gpus)
            if self.gpus
            else f"no NVIDIA GPU ({self.gpu_note}): models run on the CPU"
        )
        return f"{self.cpus} CPU cores, {self.ram_bytes / 2**30:.1f} GiB RAM, {gpus}"


def detect_hardware(inventory: Inventory) -> Hardware:
    """The machine as the banner tells it: cores and RAM (psutil), and the GPUs NVML listed
    for the supervisor's placement."""
    gpus = tuple(f"GPU {g.index}: {g.name} ({g.total / 2**30:.1f} GiB)" for g in inventory.gpus)
    return Hardware(psutil.cpu_count() or 1, psutil.virtual_memory().total, gpus, inventory.note)


def header(config: Config, hw: Hardware, key: KeyFile | None) -> list[str]:
    s = config.server
    lines = [
        f"dx {__version__}: Ollama and OpenAI APIs on http://{s.host}:{s.port}",
        f"  config:   {config.source}",
        f"  hardware: {hw.describe()}",
    ]
    if not config.auth.enabled:
        lines.append("  auth:     OFF: anyone who can reach this port can use every model")
    elif key is not None and key.created:
        lines += [
            f"  auth:     on; a new API key was generated and saved to {key.path} "
            "(shown only this once):",
            f"            {key.key}",
            f"            try: curl -H 'Authorization: Bearer {key.key}' "
            f"http://{s.host}:{s.port}/api/tags",
        ]
    elif key is not None:
        lines.append(f"  auth:     on; the API key is in {key.path}")
    else:
        lines.append("  auth:     on; keys from the config (auth.keys)")
    return lines


def model_lines(
    config: Config, replicas: dict[str, list[Replica]], notes: dict[str, str] | None = None
) -> list[str]:
    lines = ["  models:"] if config.models else ["  models:   none configured"]
    for m in config.models:
        if notes and m.name in notes:
            lines.append(f"    {display_name(m.name)}: {notes[m.name]}")
        if m.upstream == "fleet":
            lines.append(f"    {display_name(m.name)}  served by the fleet's nodes (fleet:)")
        elif m.upstream is not None:
            lines.append(f"    {display_name(m.name)}  served by {m.upstream.url}")
        if m.fallbacks:
            lines.append(f"    {display_name(m.name)}  falls back to {', '.join(m.fallbacks)}")
        for r in replicas.get(m.name, []):
            why: list[str] = []
            if r.state is EngineState.READY:
                state = f"ready in {r.ready_in:.1f} s (pid {r.pid}, port {r.port})"
            elif r.state is EngineState.WORKER and r.spec.group is not None:
                # A multi-node group's member: its leader's DX serves the model.
                state = f"group worker, {r.spec.group.label} (pid {r.pid})"
            else:
                first, output = r.failure(FAILED_TAIL)
                state = f"{r.state.upper()}: {first}"
                # The engine's own last words usually say why (a missing module, a bad file).
                why = [f"      | {line}" for line in output]
            replica = f" #{r.index}" if m.replicas > 1 else ""
            # The engine's settings as it was started with them (slots, attention, cache).
            settings = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r.settings().items())
            lines.append(
                f"    {display_name(m.name)}{replica}  {r.spec.kind}  {r.device}  "
                f"context {m.context}  {settings}  {state}"
            )
            lines += why
    return lines


def progress_text(config: Config, supervisor: Supervisor, now: float) -> str:
    """Each replica's state during start-up: "starting: smollm2 ready, big starting 45 s"."""
    parts = []
    for m in config.models:
        for r in supervisor.replicas(m.name):
            name = display_name(m.name) + (f" #{r.index}" if m.replicas > 1 else "")
            if r.state is EngineState.STARTING and r.started_at:
                parts.append(f"{name} starting {now - r.started_at:.0f} s")
            else:
                parts.append(f"{name} {r.state}")
    return "starting: " + (", ".join(parts) or "no engines")


async def show_progress(config: Config, supervisor: Supervisor) -> None:
    """Until cancelled: the engines' start-up progress (vLLM takes minutes). A live line on a
    terminal, redrawn every second and removed at the end; a log line every 10 s otherwise.
    Quiet for the first interval, so a fast start shows only the banner."""
    console = logsetup.console
    live = console is not None and console.live
    try:
        while True:
            await asyncio.sleep(PROGRESS_LIVE_S if live else PROGRESS_LOG_S)
            text = progress_text(config, supervisor, time.time())
            if live and console is not None:
                console.status(text)
            else:
                log.info("%s", text)
    finally:
        if live and console is not None:
            console.status("")
