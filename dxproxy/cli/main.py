"""The `dx` command line."""

from __future__ import annotations

import sys

import click
import uvloop

from dxproxy import __version__
from dxproxy.cli import ps as cli_ps
from dxproxy.cli.doctor import doctor
from dxproxy.cli.import_ollama import import_ollama
from dxproxy.cli.keys import keys
from dxproxy.cli.logs import logs
from dxproxy.cli.options import config_option, load
from dxproxy.cli.pull import pull, rm
from dxproxy.config import (
    ConfigError,
)
from dxproxy.keys.keyfile import ensure_api_key
from dxproxy.server import logsetup
from dxproxy.server.server import Server

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dx")
def cli() -> None:
    """DX serves LLMs on your GPU servers: it runs vLLM and llama.cpp engines and is the one
    door in front of them, speaking the Ollama API (every Ollama client works unchanged) and
    the OpenAI API, with API keys on by default.

    \b
    Start here:
      dx serve                     serve the embedded default model on 127.0.0.1:11434
      dx serve --config dx.yaml    serve the models of your config
      dx config check dx.yaml      validate a config without starting anything
      dx pull hf:ORG/REPO          a GGUF from Hugging Face, added to the config
    """


@cli.command()
@config_option(
    "YAML config (env DX_CONFIG). Without it: the embedded default, SmolLM2-135M on the CPU."
)
@click.option("--host", help="Address to listen on (overrides server.host). Default 127.0.0.1.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="Port to listen on (overrides server.port). Default 11434.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="debug also shows every line the engines print.",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "text", "json"]),
    default="auto",
    envvar="DX_LOG_FORMAT",
    show_default=True,
    help="auto: readable lines on a terminal, JSON lines otherwise (journald). Env DX_LOG_FORMAT.",
)
def serve(
    config_path: str | None, host: str | None, port: int | None, log_level: str, log_format: str
) -> None:
    """Start the engines and serve the Ollama and OpenAI APIs.

    The first start creates an API key in the state directory (default ~/.local/share/dx,
    or $XDG_DATA_HOME/dx) and prints it once. Send it as 'Authorization: Bearer KEY'.
    SIGTERM or Ctrl-C stops DX and every engine it started.
    """
    logsetup.configure(log_level, log_format)  # type: ignore[arg-type]  # click checked it
    try:
        config = load(config_path).with_overrides(host=host, port=port)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    try:
        key = ensure_api_key(config.server.state_dir) if config.auth.enabled else None
    except OSError as exc:
        raise click.ClickException(
            f"cannot use the state directory {config.server.state_dir}: {exc.strerror}; "
            "set server.state_dir to a writable folder"
        ) from None
    server = Server(config, key, out=lambda s: click.echo(s), config_path=config_path)
    code = uvloop.run(server.serve())
    sys.exit(code)


@cli.group()
def config() -> None:
    """Work with config files."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def config_check(file: str) -> None:
    """Validate FILE: print every problem with its key path, exit 1 if there are any."""
    cfg = load(file)
    names = ", ".join(m.name for m in cfg.models) or "none"
    click.echo(f"{file}: OK ({len(cfg.models)} model(s): {names})")


cli.add_command(keys)  # dx keys create|list|revoke


cli.add_command(doctor)
cli.add_command(import_ollama)
cli.add_command(logs)  # dx logs MODEL [--follow]
cli.add_command(cli_ps.ps)  # dx ps [--watch]
cli.add_command(cli_ps.models)  # dx models
cli.add_command(pull)  # dx pull hf:ORG/REPO[:QUANT]
cli.add_command(rm)  # dx rm NAME (a pulled model)
