"""`dx ps [--watch]` and `dx models`: what a running DX serves, from its admin API.

Both read `GET /admin/models` (an admin key: the state directory's api-key file, --key or
$DX_API_KEY) at the address of the config (--url to override). The memory column is the
engine process's resident set, read here with psutil: shown when the CLI runs on the
server's machine, "-" otherwise.
"""

from __future__ import annotations

import contextlib
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import click
import orjson
import psutil

from dxproxy.cli.options import config_option, load
from dxproxy.config import Config
from dxproxy.keys.keyfile import KEY_FILE_NAME
from dxproxy.models.catalog import display_name

_options = [
    config_option(
        "The config dx serves (its address and state directory). Default: the embedded one."
    ),
    click.option("--url", help="DX's address. Default: http://HOST:PORT of the config."),
    click.option(
        "--key",
        envvar="DX_API_KEY",
        help="An admin key (env DX_API_KEY). Default: the state directory's api-key file.",
    ),
]


def _common(f: Any) -> Any:
    for option in reversed(_options):
        f = option(f)
    return f


def _target(config: Config, url: str | None, key: str | None) -> tuple[str, str]:
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: reachable on loopback
        host = "127.0.0.1"
    url = (url or f"http://{host}:{config.server.port}").rstrip("/")
    if not key:
        try:
            key = (config.server.state_dir / KEY_FILE_NAME).read_text(encoding="utf-8").strip()
        except OSError:
            key = ""
    return url, key


def fetch(url: str, key: str) -> list[dict[str, Any]]:
    """GET /admin/models, with the standard library's client: a plain `pip install` has
    no other (and one request a second needs no pool)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(url + "/admin/models?lines=0", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise click.ClickException(
                f"dx at {url} refused the key (HTTP {exc.code}): pass an admin key with --key "
                "or $DX_API_KEY"
            ) from None
        text = exc.read().decode(errors="replace")[:200]
        raise click.ClickException(f"dx at {url} answered HTTP {exc.code}: {text}") from None
    except (OSError, ValueError) as exc:  # URLError, refused, timeout, a malformed --url
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(
            f"cannot reach dx at {url}: {reason}; is `dx serve` running?"
        ) from None
    models: list[dict[str, Any]] = orjson.loads(body)["models"]
    return models


def rss(pid: Any) -> str:
    if not isinstance(pid, int):
        return "-"
    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):  # vLLM's workers hold the weights
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
    except psutil.Error:
        return "-"
    return f"{total / 2**30:.2f} GiB" if total >= 2**30 else f"{total / 2**20:.0f} MiB"


def table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def expiry(at: float | None, loaded: bool) -> str:
    """When an idle model unloads: "in 4m32s", "never" (loaded at start), "-" (not loaded)."""
    if not loaded:
        return "-"
    if at is None:
        return "never"
    left = max(0, int(at - time.time()))
    return f"in {left // 60}m{left % 60:02d}s"


def device(replica: dict[str, Any], model: dict[str, Any]) -> str:
    """`gpu 0,1`, or a CPU replica's cores and threads from DX's CPU plan: `cpu 0-1 (2 thr)`."""
    name = str(replica.get("device", model.get("device", "-")))
    settings = replica.get("settings") or {}
    if "cpus" in settings:
        name += f" {settings['cpus']} ({settings.get('threads', '?')} thr)"
    return name


def ps_lines(models: list[dict[str, Any]]) -> list[str]:
    rows = [["MODEL", "REPLICA", "STATE", "ENGINE", "DEVICE", "MEMORY", "REQUESTS", "WAITING",
             "RESTARTS", "EXPIRES"]]  # fmt: skip
    for m in models:
        for r in m["replicas"] or [{}]:
            state = str(r.get("state", "none"))
            if r.get("gave_up"):
                state += " (gave up)"
            rows.append(
                [
                    m["name"],
                    str(r.get("id", "-")),
                    state,
                    m["engine"],
                    device(r, m),
                    rss(r.get("pid")),
                    f"{r.get('in_flight', 0)}/{r.get('capacity', 0)}",
                    str(m.get("waiting", 0)),
                    str(r.get("restarts", 0)),
                    expiry(m.get("expires_at"), bool(m["replicas"])),
                ]
            )
    return table(rows)


@click.command("ps")
@_common
@click.option("--watch", "-w", is_flag=True, help="Refresh every --interval seconds until Ctrl-C.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.2, 60))
def ps(config_path: str | None, url: str | None, key: str | None, watch: bool,
       interval: float) -> None:  # fmt: skip
    """Models and replicas a running dx serves: state, memory, requests in flight."""
    target, secret = _target(load(config_path), url, key)
    if not watch:
        click.echo("\n".join(ps_lines(fetch(target, secret))))
        return
    tty = sys.stdout.isatty()
    try:
        while True:
            lines = ps_lines(fetch(target, secret))
            stamp = time.strftime("%H:%M:%S")
            if tty:
                click.echo("\x1b[H\x1b[2J", nl=False)  # redraw in place
            click.echo(f"dx at {target}, {stamp} (Ctrl-C to stop)\n" + "\n".join(lines))
            if not tty:
                click.echo()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


@click.command("models")
@_common
def models(config_path: str | None, url: str | None, key: str | None) -> None:
    """The configured models: aliases, engine, device, context, and their state in a running
    dx ("not running" when none answers)."""
    config = load(config_path)
    target, secret = _target(config, url, key)
    states: dict[str, str] = {}
    try:
        for served in fetch(target, secret):
            reps = served["replicas"]
            ready = sum(1 for r in reps if r.get("state") == "ready")
            states[served["name"]] = (
                f"ready {ready}/{len(reps)}" if ready else (reps[0]["state"] if reps else "none")
            )
    except click.ClickException as exc:
        click.echo(f"note: {exc.message}", err=True)
    rows = [["NAME", "ALIASES", "ENGINE", "DEVICE", "CONTEXT", "STATE"]]
    for m in config.models:
        name = display_name(m.name)
        rows.append(
            [
                name,
                ", ".join(m.aliases) or "-",
                m.kind,
                m.device,
                str(m.context),
                states.get(name, "not running"),
            ]
        )
    click.echo("\n".join(table(rows)))
