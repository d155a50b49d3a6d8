"""What several `dx` commands share: the `--config` option and reading the config it names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from dxproxy.config import Config, ConfigError, load_config_file, load_default_config

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_HELP = "The config dx serves (env DX_CONFIG). Default: the embedded one."


def config_option(help: str = DEFAULT_HELP) -> Callable[[F], F]:
    """`--config FILE` (or env DX_CONFIG), passed as `config_path` (None: the default)."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        envvar="DX_CONFIG",
        help=help,
    )


def load(config_path: str | None) -> Config:
    """The config at `config_path` (the embedded default for None); its problems end the
    command with exit code 1, every one listed with its key path."""
    try:
        return load_config_file(config_path) if config_path else load_default_config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
