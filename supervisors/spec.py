"""What the engine layer is asked to run: `EngineSpec`, its own small description of one model's
engines. The front (`dxproxy`) translates its config into these; nothing here knows about
HTTP, API keys or YAML, so the engine layer can be reused as it is (a node agent, a gateway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

# llama-server: native llama.cpp server (parallel slots, continuous batching), the default.
# llama-cpp-python: llama.cpp through Python, one request at a time per process.
# vllm: vLLM's OpenAI server (continuous batching, tensor parallel over several GPUs).
EngineKind = Literal["llama-server", "llama-cpp-python", "vllm"]
ENGINE_KINDS: tuple[str, ...] = get_args(EngineKind)
# How a multi-node group forms: vLLM's own multiprocessing flags (--nnodes/--node-rank/
# --master-addr, --headless on the workers), or a Ray cluster (`ray start` on each node, then
# vLLM with --distributed-executor-backend ray on the leader).
GroupLauncher = Literal["vllm", "ray"]
GROUP_LAUNCHERS: tuple[str, ...] = get_args(GroupLauncher)
# The rendezvous port when the config names none: vLLM's own --master-port default, Ray's GCS.
DEFAULT_GROUP_PORTS: dict[str, int] = {"vllm": 29501, "ray": 6379}


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """This node's place in one model spread over `size` machines (one DX per machine, each
    with the same model and its own `rank`). Rank 0, the leader, serves HTTP once every rank
    has joined; the others run headless and get no requests."""

    size: int
    rank: int
    leader: str  # the leader's host name or address, as every member reaches it
    launcher: GroupLauncher = "vllm"
    interface: str | None = None  # the NIC the members talk over (gloo, NCCL, vLLM)
    port: int | None = None  # the rendezvous port; None: the launcher's default

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def master_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_GROUP_PORTS[self.launcher]

    @property
    def link_port(self) -> int:
        """DX's own group link (supervisors/group_link.py): the leader's DX listens on it."""
        return self.master_port + 1

    @property
    def label(self) -> str:
        return f"rank {self.rank} of {self.size}, leader {self.leader}:{self.master_port}"


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """One model's engines: `replicas` processes of `kind` serving `model` as `name`."""

    name: str  # the name the engine serves the model under (requests use it)
    kind: EngineKind
    model: str  # a GGUF file (llama.cpp), a Hugging Face folder or id (vLLM)
    context: int = 4096  # tokens one request may use
    # GPU indexes as nvidia-smi numbers them; () = CPU. `gpu_auto` > 0 instead asks the
    # placement for that many GPUs with the most free memory, when the replicas start.
    gpus: tuple[int, ...] = ()
    gpu_auto: int = 0
    replicas: int = 1
    parallel: int | None = None  # requests one replica takes at once; None = engine default
    program: str | None = None  # llama-server binary, or the Python of the engine's venv
    command: tuple[str, ...] | None = None  # a whole command line, with {port} etc.
    args: tuple[str, ...] = ()  # appended to the engine's command line (override defaults)
    env: tuple[tuple[str, str], ...] = ()
    startup_timeout: float = 600.0
    sleep_mode: bool = False  # vLLM: allow sleeping (weights to CPU) instead of stopping
    embeddings: bool = False  # serve /v1/embeddings (llama.cpp needs a flag for it)
    group: GroupSpec | None = None  # one model over several machines (supervisors/group.py)

    @property
    def device(self) -> str:
        return device_label(self.gpus, self.gpu_auto)


def device_label(gpus: tuple[int, ...], gpu_auto: int = 0) -> str:
    """Where an engine runs, as DX shows it everywhere: `cpu`, `gpu 0,1`, `gpu auto:2`."""
    if gpu_auto:
        return f"gpu auto:{gpu_auto}"
    return "gpu " + ",".join(map(str, gpus)) if gpus else "cpu"
