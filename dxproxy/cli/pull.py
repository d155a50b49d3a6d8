"""`dx pull` and `dx rm`: GGUF models from the Hugging Face Hub into the config file.

The work is in dxproxy/models/hub.py (resolve, choose the quant, download, verify) and
dxproxy/models/pulled.py (the config entry); this module draws the progress and says what
happened. A running `dx serve` watches its config file and serves the new entry after its
reload, with no restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import click

from dxproxy.cli.options import config_option, user_config_path
from dxproxy.config import ConfigError, parse_size
from dxproxy.config.schema import DEFAULT_CONTEXT
from dxproxy.models.hub import Event, Pull, PullError, entry_for, parse_ref, read_budget, with_path
from dxproxy.models.memory import gib
from dxproxy.models.pulled import add_pulled, entry_lines, remove_pulled

LOG_EVERY = 5.0  # seconds between progress lines when the output is not a terminal


class Progress:
    """Events drawn as one redrawn bar per file on a terminal, as log lines otherwise."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.file = ""
        self.start = 0.0
        self.first = 0
        self.logged = 0.0

    def __call__(self, e: Event) -> None:
        if not e.digest:
            self.end()
            self.out.write(f"{e.status}\n")
            self.out.flush()
            return
        now = time.monotonic()
        if e.file != self.file:
            self.end()
            self.file, self.start, self.first, self.logged = e.file, now, e.completed, 0.0
            if e.completed and e.completed < e.total:
                self._line(f"resuming {e.file} at {gib(e.completed)}")
        done = e.completed >= e.total
        rate = (e.completed - self.first) / max(now - self.start, 1e-3)
        pct = 100 * e.completed / e.total if e.total else 100.0
        text = f"{e.file}  {pct:5.1f}%  {gib(e.completed)} / {gib(e.total)}"
        if rate > 0 and not done:
            text += f"  {rate / 2**20:.1f} MiB/s  {_eta((e.total - e.completed) / rate)} left"
        if self.tty:
            width = 24
            fill = int(width * pct / 100)
            self.out.write(f"\r{'#' * fill}{'.' * (width - fill)} {text}\x1b[K")
            if done:
                self.out.write("\n")
                self.file = ""
            self.out.flush()
        elif done or now - self.logged >= LOG_EVERY:
            self.logged = now
            self._line(f"pulling {text}")
            if done:
                self.file = ""

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def end(self) -> None:
        if self.tty and self.file:
            self.out.write("\n")
            self.file = ""


def _eta(seconds: float) -> str:
    s = int(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


@click.command()
@click.argument("ref", metavar="hf:ORG/REPO[:QUANT]")
@config_option(
    "The config to add the model to (env DX_CONFIG). Default: ~/.config/dx/dx.yaml "
    "($XDG_CONFIG_HOME/dx/dx.yaml), created if missing; dx serve uses it when given no --config."
)
@click.option(
    "--context",
    type=click.IntRange(256),
    default=DEFAULT_CONTEXT,
    show_default=True,
    help="The entry's context (tokens per request); the quant is chosen with its KV cache.",
)
@click.option(
    "--print",
    "print_only",
    is_flag=True,
    help="Print the config entry instead of writing it into the config file.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Download here instead of huggingface_hub's cache (HF_HUB_CACHE, or HF_HOME/hub, "
    "default ~/.cache/huggingface/hub). The user dx serve runs as must be able to read it.",
)
@click.option(
    "--memory",
    metavar="SIZE",
    help="Choose the quant for this much free memory (e.g. 16G) instead of this machine's "
    "(the free RAM, or the GPU with the most free memory).",
)
def pull(
    ref: str,
    config_path: str | None,
    context: int,
    print_only: bool,
    cache_dir: str | None,
    memory: str | None,
) -> None:
    """Download a GGUF model from Hugging Face and add it to the config.

    \b
      dx pull hf:bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M    that quant
      dx pull hf:bartowski/Llama-3.2-3B-Instruct-GGUF           the quant that fits here
      dx pull hf.co/ORG/REPO:QUANT                              Ollama's spelling works too

    Without a quant, DX estimates the memory each quant needs (weights, KV cache at
    --context, buffers; as `dx doctor` does) and takes the largest that fits the GPU with
    the most free memory, or the free RAM; it says why. F16/BF16/F32 are taken only when
    named. Split GGUFs come whole, and a vision model's projector (mmproj) with it.

    The download goes through huggingface_hub: into its cache (shared with other tools),
    resumed when interrupted (run the same command again), with HF_TOKEN for gated or
    private repos and HF_ENDPOINT for a mirror. Every file is checked against the Hub's
    sha256. The model is then added to the config as `hf.co/ORG/REPO:QUANT` (the name
    Ollama clients use): a running `dx serve` reloads its config file and serves it with
    no restart. Remove it, and its files, with `dx rm NAME`.
    """
    try:
        hub_ref = parse_ref(ref)
    except PullError as exc:
        raise click.UsageError(str(exc)) from None
    path = Path(config_path) if config_path else user_config_path()
    budget = read_budget()
    if memory:
        size = parse_size(memory)
        if size is None:
            raise click.BadParameter("expected a size such as 16G or 512MiB", param_hint="--memory")
        budget = replace(budget, where=f"{budget.where} (--memory {memory})", free=size, total=size)
    entry = entry_for(hub_ref, context, budget)
    out = sys.stderr
    progress = Progress(out, out.isatty())
    job = Pull(hub_ref, entry, budget, progress, cache_dir=cache_dir)
    started = time.monotonic()

    def interrupted(signum: int, frame: object) -> None:
        # At once: the download's thread would otherwise be waited for. What it wrote stays
        # in the cache's partial file, which the next pull resumes.
        progress.end()
        out.write("interrupted: run the same command again to resume the download\n")
        out.flush()
        os._exit(130)

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        pulled = asyncio.run(job.run())
    except PullError as exc:
        progress.end()
        raise click.ClickException(str(exc)) from None
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    entry = with_path(entry, pulled)
    lines = entry_lines(pulled, entry, job.endpoint)
    took = time.monotonic() - started
    click.echo(f"pulled {pulled.model_path} in {took:.1f} s", err=True)
    if print_only:
        click.echo(f"  {hub_ref.name!r}:".replace("'", '"'))
        for line in lines:
            click.echo(f"    {line}")
        return
    try:
        _, replaced = add_pulled(path, hub_ref.name, lines)
    except ConfigError as exc:
        raise click.ClickException(f"the config was not changed: {exc}") from None
    verb = "replaced" if replaced else "added"
    click.echo(f'{verb} "{hub_ref.name}" in {path}', err=True)
    click.echo(
        f"a running `dx serve --config {path}` serves it after its reload; otherwise start "
        f"one. Try: ollama run {hub_ref.name}   (OLLAMA_HOST=127.0.0.1:11434)",
        err=True,
    )


@click.command("rm")
@click.argument("name")
@config_option(
    "The config to remove the model from (env DX_CONFIG). Default: ~/.config/dx/dx.yaml."
)
def rm(name: str, config_path: str | None) -> None:
    """Remove the pulled model NAME from the config and delete its files from the Hugging
    Face cache (unless another model uses them). A running dx serve stops serving it after
    its reload. Models dx pull did not download are left to you (edit the config)."""
    path = Path(config_path) if config_path else user_config_path()
    if not path.exists():
        raise click.ClickException(f"{path} does not exist (name the config with --config)")
    try:
        _, deleted = remove_pulled(path, name)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f'removed "{name}" from {path}', err=True)
    for p in deleted:
        click.echo(f"  deleted {p}", err=True)
