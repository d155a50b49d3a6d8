"""`dx keys create|list|revoke`: API keys with names, allowed models and limits.

The CLI writes `keys.json` in the state directory; a running server notices within a second.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from dxproxy.cli.options import config_option, load
from dxproxy.config import Config
from dxproxy.keys.keyfile import KEY_FILE_NAME
from dxproxy.keys.limits import revoke_everywhere
from dxproxy.keys.store import (
    KeyRecord,
    KeyStoreError,
    builtin_record,
    create_key,
    read_store,
    read_usage,
    revoke_key,
)

_RELATIVE = re.compile(r"^(\d+)([dhm])$")


def _state_dir(state_dir: str | None, config: Config) -> Path:
    return Path(state_dir).expanduser() if state_dir else config.server.state_dir


def parse_expiry(text: str, now: float | None = None) -> float:
    """Unix time from '2026-12-31', '2026-12-31T18:00', '2026-12-31T18:00+02:00' (dates and
    times without a zone are UTC), or a span from now: '30d', '12h', '90m'."""
    now = time.time() if now is None else now
    m = _RELATIVE.match(text.strip())
    if m:
        return now + int(m.group(1)) * {"d": 86400, "h": 3600, "m": 60}[m.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: expected a date like 2026-12-31, a time like 2026-12-31T18:00, or a "
            "span like 30d, 12h, 90m"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when.timestamp() <= now:
        raise click.BadParameter(f"{text!r} is in the past")
    return when.timestamp()


_state_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    envvar="DX_STATE_DIR",
    help="The server's state directory (default: server.state_dir of the config).",
)
_config_option = config_option(
    "The server's config (env DX_CONFIG), to find its state directory and Redis."
)


@click.group()
def keys() -> None:
    """API keys: each with a name, allowed models and limits.

    \b
      dx keys create alice --models qwen,llama3 --rpm 60 --tpm 100000
      dx keys list
      dx keys revoke alice        (a running dx stops accepting it within a second)
    """


@keys.command("create")
@click.argument("name")
@click.option("--models", help="Comma-separated models the key may use (default: all).")
@click.option("--rpm", type=click.IntRange(min=1), help="Requests per minute.")
@click.option("--tpm", type=click.IntRange(min=1), help="Tokens (prompt + completion) per minute.")
@click.option("--concurrency", type=click.IntRange(min=1), help="Requests in flight at once.")
@click.option("--admin", is_flag=True, help="May call the admin routes (/admin/...).")
@click.option("--expires", help="Expiry: 2026-12-31, 2026-12-31T18:00 (UTC), or 30d, 12h.")
@_state_option
@_config_option
def create(
    name: str,
    models: str | None,
    rpm: int | None,
    tpm: int | None,
    concurrency: int | None,
    admin: bool,
    expires: str | None,
    state_dir: str | None,
    config_path: str | None,
) -> None:
    """Create the key NAME and print it (alone, on stdout: capture it, it is shown once).

    Limits not given here come from limits.per_key of the server's config.
    """
    config = load(config_path)
    scope = tuple(m.strip() for m in models.split(",") if m.strip()) if models else None
    if scope is not None and config.models:
        unknown = [m for m in scope if config.model(m) is None]
        if unknown:
            click.echo(
                f"dx: note: the config {config.source} has no model {', '.join(unknown)}",
                err=True,
            )
    until = parse_expiry(expires) if expires else None
    try:
        key, record = create_key(
            _state_dir(state_dir, config),
            name,
            models=scope,
            rpm=rpm,
            tpm=tpm,
            concurrency=concurrency,
            admin=admin,
            expires=until,
        )
    except (KeyStoreError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(key)
    click.echo(
        f"dx: created key '{record.name}' ({_scope(record)}); it is shown only now", err=True
    )


@keys.command("list")
@_state_option
@_config_option
def list_keys(state_dir: str | None, config_path: str | None) -> None:
    """Show every key: name, scope, limits, created, last used. Never a secret."""
    config = load(config_path)
    directory = _state_dir(state_dir, config)
    try:
        records = read_store(directory)
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from None
    builtin: list[KeyRecord] = []
    if (directory / KEY_FILE_NAME).exists():
        builtin.append(KeyRecord(name="api-key", digest="", admin=True, source="state"))
    builtin += [
        builtin_record(f"config-{i + 1}", k, "config") for i, k in enumerate(config.auth.keys)
    ]
    usage = read_usage(directory)
    rows = [("NAME", "SCOPE", "RPM", "TPM", "CONC", "CREATED", "LAST USED", "EXPIRES")]
    for r in [*builtin, *records]:
        rows.append(
            (
                r.name,
                _scope(r),
                _num(r.rpm),
                _num(r.tpm),
                _num(r.concurrency),
                _when(r.created) if r.source == "store" else r.source,
                _when(usage.get(r.name)),
                _when(r.expires),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if config.limits.per_key != type(config.limits.per_key)():
        d = config.limits.per_key
        click.echo(
            f"(- : limits.per_key applies: rpm {_num(d.rpm)}, tpm {_num(d.tpm)}, "
            f"concurrency {_num(d.concurrency)})"
        )


@keys.command("revoke")
@click.argument("name")
@_state_option
@_config_option
def revoke(name: str, state_dir: str | None, config_path: str | None) -> None:
    """Revoke the key NAME. A running dx refuses it within a second; with limits.redis_url,
    every instance sharing that Redis does."""
    config = load(config_path)
    try:
        gone = revoke_key(_state_dir(state_dir, config), name)
    except (KeyStoreError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    shared = ""
    if config.limits.redis_url:
        try:
            asyncio.run(revoke_everywhere(config.limits.redis_url, gone.digest))
            shared = " and in Redis, for every instance"
        except Exception as exc:  # the local revocation stands; say what did not happen
            click.echo(f"dx: warning: could not record the revocation in Redis: {exc}", err=True)
    click.echo(f"revoked key '{gone.name}' in {_state_dir(state_dir, config)}{shared}")


def _scope(r: KeyRecord) -> str:
    models = ",".join(r.models) if r.models is not None else "all models"
    return models + (" +admin" if r.admin else "")


def _num(n: int | None) -> str:
    return str(n) if n is not None else "-"


def _when(t: float | None) -> str:
    if not t:
        return "never" if t is None else "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")
