"""The config's shape: one frozen tree of slotted dataclasses, with its defaults.

Built only by `dxproxy.config.load` (validated there); never mutated afterwards, so the rest of
DX can trust what it is handed and a reload swaps one whole object.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

from supervisors import EngineKind as SpecKind
from supervisors import EngineSpec, GroupSpec, device_label

# `llamacpp` is native llama-server (parallel slots); `llama-cpp-python` the Python flavour
# (one request at a time per process); `llama-server` is accepted as another name for llamacpp.
EngineKind = Literal["llamacpp", "llama-cpp-python", "vllm"]
ENGINE_KINDS: tuple[str, ...] = get_args(EngineKind)
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
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 60.0
DEFAULT_KEEPALIVE_TIMEOUT = 75.0
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 128
DEFAULT_MAX_AUTH_FAILURES = 10
DEFAULT_FLEET_REFRESH = 5.0
DEFAULT_FLEET_SLACK = 0.25  # bounded load: a home node takes up to (1 + slack) x mean + 1
DEFAULT_EJECT_AFTER = 3  # failures in a row before a node is ejected
DEFAULT_EJECT_BACKOFF = 1.0  # seconds of the first ejection; each next one doubles
DEFAULT_EJECT_MAX = 60.0


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
    # The door (dxproxy/http/door.py): browser origins added to the local ones, Host names accepted
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
    # The CPUs engines may compute on (None: all DX may use), divided among the CPU replicas
    # (supervisors/cpus.py).
    cpus: tuple[int, ...] | None = None

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
    # Shared counters across DX instances (dxproxy/keys/limits.py); None keeps them in memory.
    redis_url: str | None = None
    # While Redis is unreachable: "open" serves without rate limits, "closed" answers 503.
    redis_failure: Literal["open", "closed"] = "open"
    # Models loaded at once (Ollama's OLLAMA_MAX_LOADED_MODELS); 0 = no limit but memory.
    max_loaded_models: int = 0
    # Bytes the loaded models may take on the CPU and on each GPU; None = 80 % of the RAM,
    # 90 % of each GPU's memory.
    memory_budget: int | None = None


@dataclass(frozen=True, slots=True)
class FleetNode:
    """One `fleet.nodes` entry: a node's URL, or a DNS name whose every A/AAAA record is a
    node (re-resolved every `fleet.refresh`), reached on `port`."""

    url: str | None = None
    dns: str | None = None
    port: int = DEFAULT_PORT


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """A gateway's fleet (dxproxy/fleet): its nodes, how often they are re-read, the key sent to
    them, the bounded-load slack and the ejection policy."""

    nodes: tuple[FleetNode, ...] = ()
    refresh: float = DEFAULT_FLEET_REFRESH
    node_key: str | None = None  # sent as Bearer to nodes; nodes list it in auth.keys
    slack: float = DEFAULT_FLEET_SLACK
    eject_after: int = DEFAULT_EJECT_AFTER
    eject_backoff: float = DEFAULT_EJECT_BACKOFF
    eject_max: float = DEFAULT_EJECT_MAX


@dataclass(frozen=True, slots=True)
class RemoteUpstream:
    """`upstream: {url, api_key}`: any OpenAI-compatible endpoint (`url` ends before
    /chat/completions, e.g. https://api.example.com/v1). `model` is its name there (default:
    the model's own name)."""

    url: str
    api_key: str | None = None
    model: str | None = None


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
    # One model over several machines: this node's rank in the group (supervisors/group.py).
    group: GroupSpec | None = None
    # llama-server's --pooling, set by DX where embeddings are on and the model has no pooling
    # of its own (a chat model: llama.cpp's "none" serves no embeddings API); None: the model's
    pooling: str | None = None
    affinity: bool = True  # send a conversation's turns to the replica that has its cache
    load: Literal["start", "on_demand"] = "start"  # on_demand: at its first request
    keep_alive: float = DEFAULT_KEEP_ALIVE  # on_demand: idle seconds before unloading; <0 never
    # Bytes one replica needs; None = estimated (dxproxy/models/memory.py).
    memory: int | None = None
    # Served elsewhere: "fleet" (the nodes whose state lists it) or one OpenAI endpoint; None:
    # by engines DX runs itself (then engine and model are required).
    upstream: Literal["fleet"] | RemoteUpstream | None = None
    # Models tried, in order, when this one cannot serve a request (before any byte is sent).
    fallbacks: tuple[str, ...] = ()

    @property
    def remote(self) -> bool:
        """Served by no engine of this DX (the supervisor and loader leave it alone)."""
        return self.upstream is not None

    @property
    def device(self) -> str:
        return device_label(self.gpus, self.gpu_auto)

    @property
    def kind(self) -> SpecKind:
        """The engine that runs it: llama-server, llama-cpp-python or vllm (the config's
        `engine:` says `llamacpp` for llama-server)."""
        return _SPEC_KINDS[self.engine]

    def spec(self) -> EngineSpec:
        """What the engine layer runs for this model."""
        return EngineSpec(
            name=self.name,
            kind=self.kind,
            model=self.model,
            context=self.context,
            gpus=self.gpus,
            gpu_auto=self.gpu_auto,
            replicas=self.replicas,
            parallel=self.parallel,
            program=self.binary or self.python,
            command=self.command,
            args=self.args + (("--pooling", self.pooling) if self.pooling else ()),
            env=self.env,
            startup_timeout=self.startup_timeout,
            sleep_mode=self.sleep_mode,
            embeddings=self.embeddings,
            group=self.group,
        )


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    models: tuple[ModelConfig, ...] = ()
    fleet: FleetConfig | None = None  # set: this DX is a gateway (dxproxy/fleet)
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
        problems = exposure_problems(cfg)
        if problems:
            raise ConfigError(self.source, problems)
        return cfg


def exposure_problems(cfg: Config) -> list[str]:
    if cfg.auth.enabled or cfg.server.is_loopback or cfg.server.allow_public_without_auth:
        return []
    return [
        f"server.host: refusing to listen on {cfg.server.host} with auth disabled; "
        "turn auth on, bind 127.0.0.1, or set server.allow_public_without_auth: true"
    ]
