"""What several `dx` commands share: the `--config` option and reading the config it names."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from dxproxy.config import Config, ConfigError, load_config_file, load_default_config

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_HELP = (
    "The config dx serves (env DX_CONFIG). Default: ~/.config/dx/dx.yaml if `dx pull` wrote it, "
    "else the embedded one."
)


def user_config_path() -> Path:
    """The config `dx pull` writes when given none: $XDG_CONFIG_HOME/dx/dx.yaml."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dx" / "dx.yaml"


def _default_to_user_config(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    # No --config: the file `dx pull` writes, once it exists; else the embedded default.
    if value is None and user_config_path().is_file():
        return str(user_config_path())
    return value


def config_option(help: str = DEFAULT_HELP) -> Callable[[F], F]:
    """`--config FILE` (or env DX_CONFIG), passed as `config_path` (None: the default).
    Without either, ~/.config/dx/dx.yaml if `dx pull` wrote it."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        envvar="DX_CONFIG",
        callback=_default_to_user_config,
        help=help,
    )


def load(config_path: str | None) -> Config:
    """The config at `config_path` (the embedded default for None); its problems end the
    command with exit code 1, every one listed with its key path."""
    try:
        return load_config_file(config_path) if config_path else load_default_config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
