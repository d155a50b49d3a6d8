"""GGUF models from the Hugging Face Hub, for `dx pull` and Ollama's `/api/pull`.

A reference (`hf:ORG/REPO[:QUANT]`, or Ollama's `hf.co/ORG/REPO[:QUANT]`) is resolved against
the repo's file list (with the LFS sha256 of every file), a quant is chosen (the one asked
for, or the largest whose estimated memory fits the device the model would run on), and its
files are downloaded by `huggingface_hub` into its own cache (resume, locks shared with other
processes, HF_TOKEN, HF_ENDPOINT), then checked against the Hub's sha256.

The choice is pure (`list_quants`, `choose_quant`, `budget_from`): tests give it hardware and
sizes. `Pull.run` does the network and disk work and reports `Event`s in Ollama's progress
vocabulary; it never writes the config (the caller does, dxproxy/config/edit.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dxproxy.config import ModelConfig
from dxproxy.models.gguf import read_partial_metadata
from dxproxy.models.memory import estimate_gguf, gib
from supervisors import Gpu

# The spellings of a Hub reference: ours, Ollama's, and a pasted web address.
PREFIXES = ("hf:", "hf.co/", "huggingface.co/", "https://huggingface.co/", "http://huggingface.co/")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# A quant in a file name: Q4_K_M, IQ4_XS, Q8_0, UD-Q4_K_XL, F16, BF16, F32, TQ1_0, MXFP4_MOE.
_QUANT = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q[1-8](?:_[A-Z0-9]+)*|BF16|F16|F32|TQ[12]_0|MXFP4(?:_MOE)?))"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
# Unquantized files: twice Q8_0's size and half its speed for no quality anyone measures; a
# pull takes one only when it is named, or when the repo has nothing else.
FULL_PRECISION = frozenset({"F32", "F16", "BF16"})
# The projector precision preferred for a vision model (llama.cpp's own conversions are F16).
_PROJECTOR_ORDER = ("F16", "BF16", "Q8_0", "F32")
HEAD_BYTES = 4 * 2**20  # the GGUF head read before downloading: the keys the estimate needs
HUB_TIMEOUT = 20.0  # seconds for the Hub's API calls (downloads use huggingface_hub's own)
PROGRESS_EVERY = 0.25  # seconds between progress events of a download


class PullError(Exception):
    """A pull that cannot go on; the message is for the user and says what to do."""


# -- references ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HubRef:
    repo: str  # ORG/REPO
    quant: str | None  # as asked (any case); None: chosen for the hardware
    revision: str | None = None  # a branch, tag or commit (`@rev`); None: main

    @property
    def name(self) -> str:
        """The model's name in DX's config: Ollama's spelling, so that a client that pulled
        `hf.co/org/repo:Q4_K_M` chats with that same name."""
        base = f"hf.co/{self.repo}"
        return f"{base}:{self.quant.upper()}" if self.quant else base


def is_hub_ref(text: str) -> bool:
    return text.strip().lower().startswith(PREFIXES)


def parse_ref(text: str) -> HubRef:
    """`hf:ORG/REPO[:QUANT]`, `hf.co/ORG/REPO[:QUANT]` or `https://huggingface.co/ORG/REPO`,
    optionally with `@REVISION` after the repo."""
    raw = text.strip()
    low = raw.lower()
    prefix = next((p for p in PREFIXES if low.startswith(p)), None)
    if prefix is None:
        raise PullError(f"{raw!r} is not a Hugging Face reference: write hf:ORG/REPO[:QUANT]")
    rest = raw[len(prefix) :].strip("/")
    repo, _, quant = rest.partition(":")
    repo, _, revision = repo.partition("@")
    if quant.lower() in ("", "latest"):
        quant = ""
    if not _REPO.match(repo) or (quant and not re.match(r"^[A-Za-z0-9._-]+$", quant)):
        raise PullError(
            f"{raw!r}: expected hf:ORG/REPO or hf:ORG/REPO:QUANT "
            "(e.g. hf:bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M)"
        )
    return HubRef(repo, quant or None, revision or None)


# -- quants of a repo: pure ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HubFile:
    path: str  # in the repo
    size: int
    sha256: str | None  # the LFS object id: the file's sha256 (None: not an LFS file)


@dataclass(frozen=True, slots=True)
class Quant:
    name: str  # upper case, as llama.cpp writes it (Q4_K_M)
    files: tuple[HubFile, ...]  # the first is what llama-server loads; split parts follow

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def quant_of(path: str) -> str | None:
    """The quant a GGUF file name says (the last one in it), upper case; None if it says none."""
    base = _SPLIT.sub(".gguf", path.rsplit("/", 1)[-1])
    found = _QUANT.findall(base.removesuffix(".gguf").removesuffix(".GGUF"))
    return found[-1].upper() if found else None


def is_projector(path: str) -> bool:
    return "mmproj" in path.rsplit("/", 1)[-1].lower()


def list_quants(files: Iterable[HubFile]) -> tuple[list[Quant], list[HubFile]]:
    """The quants of a repo's GGUF files (smallest first) and its vision projectors. Split
    GGUFs (`-00001-of-00003.gguf`) are one quant; a file naming no quant is its own (by its
    name without .gguf)."""
    groups: dict[str, list[HubFile]] = {}
    projectors: list[HubFile] = []
    for f in files:
        if not f.path.lower().endswith(".gguf"):
            continue
        if is_projector(f.path):
            projectors.append(f)
            continue
        name = quant_of(f.path) or _SPLIT.sub("", f.path.rsplit("/", 1)[-1]).removesuffix(".gguf")
        groups.setdefault(name, []).append(f)
    quants = []
    for name, group in groups.items():
        # One model per quant: the first split set (or file) in name order; parts in order.
        group.sort(key=lambda f: f.path)
        first = group[0]
        m = _SPLIT.search(first.path)
        if m:
            stem = first.path[: m.start()]
            parts = tuple(f for f in group if f.path.startswith(stem) and _SPLIT.search(f.path))
        else:
            parts = (first,)
        quants.append(Quant(name, parts))
    quants.sort(key=lambda q: (q.size, q.name))
    return quants, projectors


def choose_projector(projectors: Sequence[HubFile]) -> HubFile | None:
    """The vision projector to pull with a model: F16 first (llama.cpp's own conversion)."""
    if not projectors:
        return None

    def rank(f: HubFile) -> tuple[int, str]:
        q = quant_of(f.path)
        return (_PROJECTOR_ORDER.index(q) if q in _PROJECTOR_ORDER else 99, f.path)

    return min(projectors, key=rank)


@dataclass(frozen=True, slots=True)
class Budget:
    """Memory on the device a pulled model would run on, as `dx doctor` reads it."""

    where: str  # "the CPU" or "GPU 0 (NVIDIA H100)"
    free: int  # available now: RAM psutil calls available, or the GPU's free memory
    total: int
    gpu: int | None = None  # the GPU's index; None: the CPU


def budget_from(ram_available: int, ram_total: int, gpus: Sequence[Gpu]) -> Budget:
    """The device a pulled model goes on: the GPU with the most free memory, else the CPU."""
    if gpus:
        g = max(gpus, key=lambda g: (g.free, -g.index))
        return Budget(f"GPU {g.index} ({g.name})", g.free, g.total, g.index)
    return Budget("the CPU", ram_available, ram_total)


@dataclass(frozen=True, slots=True)
class Choice:
    quant: Quant
    need: int  # estimated bytes on the budget's device
    why: str


def choose_quant(
    repo: str,
    quants: Sequence[Quant],
    wanted: str | None,
    need: Callable[[Quant], int],
    budget: Budget,
) -> Choice:
    """The quant asked for, or the largest (not full-precision) one whose estimated memory
    `need(quant)` fits in `budget.free`; PullError says what the repo has."""
    if not quants:
        raise PullError(f"{repo} has no GGUF file (DX pulls GGUF models)")
    if wanted:
        q = next((q for q in quants if q.name.upper() == wanted.upper()), None)
        if q is None:
            raise PullError(f"{repo} has no quant {wanted.upper()}; it has: {_listing(quants)}")
        n = need(q)
        fits = "fits" if n <= budget.free else "does NOT fit"
        why = (
            f"{q.name}: as asked; about {gib(n)} on {budget.where}, which {fits} "
            f"({gib(budget.free)} free of {gib(budget.total)})"
        )
        return Choice(q, n, why)
    quantized = [q for q in quants if q.name not in FULL_PRECISION]
    candidates = quantized or list(quants)
    needs = {q.name: need(q) for q in candidates}
    fitting = [q for q in candidates if needs[q.name] <= budget.free]
    if not fitting:
        sizes = ", ".join(f"{q.name} needs {gib(needs[q.name])}" for q in candidates)
        raise PullError(
            f"no quant of {repo} fits {budget.where} ({gib(budget.free)} free of "
            f"{gib(budget.total)}): {sizes}. Name one to pull it anyway "
            f"(hf:{repo}:{candidates[0].name}), or free memory"
        )
    best = max(fitting, key=lambda q: (q.size, q.name))
    why = (
        f"{best.name}: the largest quant that fits {budget.where} (about "
        f"{gib(needs[best.name])} with its KV cache, {gib(budget.free)} free of "
        f"{gib(budget.total)})"
    )
    bigger = [q for q in candidates if q.size > best.size]
    if bigger:
        nxt = min(bigger, key=lambda q: q.size)
        why += f"; {nxt.name} would need {gib(needs[nxt.name])}"
    skipped = [q.name for q in quants if q.name in FULL_PRECISION and quantized]
    if skipped:
        why += f"; {'/'.join(skipped)} only when named"
    return Choice(best, needs[best.name], why)


def _listing(quants: Sequence[Quant]) -> str:
    return ", ".join(f"{q.name} ({gib(q.size)})" for q in quants)


def model_need(
    quant: Quant, projector: HubFile | None, meta: dict[str, Any], entry: ModelConfig, on_gpu: bool
) -> int:
    """DX's memory estimate (dxproxy/models/memory.py) for `entry` serving `quant`."""
    weights = quant.size + (projector.size if projector else 0)
    return estimate_gguf(entry, weights, meta, on_gpu).total(1)


# -- the pull --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One progress line, in Ollama's vocabulary (`pulling manifest`, `pulling <digest>` with
    digest/total/completed, `verifying sha256 digest`, ..., `success`)."""

    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0
    file: str = ""  # the repo path of the file a `pulling` event is about

    def ollama(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.digest:
            out.update(digest=self.digest, total=self.total, completed=self.completed)
        return out


@dataclass(frozen=True, slots=True)
class Pulled:
    ref: HubRef
    choice: Choice
    revision: str  # the commit pulled
    model_path: Path  # the GGUF llama-server loads (a split set's first part)
    projector: Path | None
    files: tuple[Path, ...]  # every file pulled (snapshot paths in the cache)


@dataclass
class Pull:
    """One pull, run once (`run`), reporting to `emit`. `entry` is the config entry the model
    will get (context, GPUs): its memory estimate picks the quant."""

    ref: HubRef
    entry: ModelConfig
    budget: Budget
    emit: Callable[[Event], None]
    cache_dir: str | None = None  # None: huggingface_hub's (HF_HUB_CACHE / HF_HOME)
    token: str | None = None  # None: HF_TOKEN or the saved login
    endpoint: str = field(default_factory=lambda: _hub().constants.ENDPOINT)

    async def run(self) -> Pulled:
        ref = self.ref
        self.emit(Event("pulling manifest"))
        info = await asyncio.to_thread(self._info)
        revision = str(getattr(info, "sha", None) or ref.revision or "main")
        files = [
            HubFile(s.rfilename, int(s.size or (s.lfs.size if s.lfs else 0) or 0), _sha(s))
            for s in info.siblings or ()
        ]
        quants, projectors = list_quants(files)
        if not quants:
            names = ", ".join(f.path for f in files[:8]) or "no files"
            raise PullError(
                f"{ref.repo} has no GGUF model file ({names}); DX pulls GGUF repos, e.g. "
                "the ones named ...-GGUF"
            )
        projector = choose_projector(projectors)
        meta = await asyncio.to_thread(self._head, revision, quants[0].files[0].path)
        on_gpu = self.budget.gpu is not None

        def need(q: Quant) -> int:
            return model_need(q, projector, meta, self.entry, on_gpu)

        choice = choose_quant(ref.repo, quants, ref.quant, need, self.budget)
        if not meta:
            why = f"{choice.why} (the GGUF header was not readable: KV cache estimated for a "
            choice = replace(choice, why=why + "32-layer, 4096-wide model)")
        self.emit(Event(choice.why))
        todo = [*choice.quant.files, *([projector] if projector else [])]
        self._check_disk(todo)
        paths = []
        for f in todo:
            paths.append(await self._download(f, revision))
        self.emit(Event("verifying sha256 digest"))
        for f, path in zip(todo, paths, strict=True):
            await asyncio.to_thread(self._verify, f, path)
        return Pulled(
            ref, choice, revision, paths[0], paths[-1] if projector else None, tuple(paths)
        )

    # -- the Hub --

    def _info(self) -> Any:
        hub = _hub()
        api = hub.HfApi(endpoint=self.endpoint, token=self.token)
        try:
            return api.model_info(
                self.ref.repo, revision=self.ref.revision, files_metadata=True, timeout=HUB_TIMEOUT
            )
        except Exception as exc:
            raise self._explain(exc) from None

    def _head(self, revision: str, path: str) -> dict[str, Any]:
        """The GGUF header's key-values, from a ranged read of the file's head (one request):
        the layers and heads the KV cache estimate needs. {} if the Hub will not say."""
        hub = _hub()
        url = hub.hf_hub_url(self.ref.repo, path, revision=revision, endpoint=self.endpoint)
        headers = hub.utils.build_hf_headers(token=self.token)
        headers["Range"] = f"bytes=0-{HEAD_BYTES - 1}"
        try:
            r = hub.utils.get_session().get(
                url, headers=headers, follow_redirects=True, timeout=HUB_TIMEOUT
            )
            r.raise_for_status()
            return read_partial_metadata(r.content[:HEAD_BYTES])
        except Exception:  # GGUFError, HTTP, network: the estimate falls back (and says so)
            return {}

    def _explain(self, exc: Exception) -> PullError:
        """A huggingface_hub or network error as a PullError that says what to do."""
        repo, where = self.ref.repo, self.endpoint
        kind = type(exc).__name__
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if kind == "GatedRepoError":
            return PullError(
                f"{repo} is gated: accept its terms on {where}/{repo} and set HF_TOKEN to a "
                "token of that account"
            )
        if kind == "RemoteEntryNotFoundError":
            return PullError(f"{repo}: a file it lists is not on {where} ({exc})")
        if kind == "RepositoryNotFoundError" or status in (401, 404):
            return PullError(
                f"{repo}: no such model repo on {where} (or it is private: set HF_TOKEN)"
            )
        if kind == "RevisionNotFoundError":
            return PullError(f"{repo} has no revision {self.ref.revision!r}")
        if status is not None:
            return PullError(f"{where} answered {status} for {repo}: {exc}")
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return PullError(self._disk_full_message())
        if kind in ("OfflineModeIsEnabled",):
            return PullError(f"HF_HUB_OFFLINE is set: {repo} cannot be pulled")
        cause = exc.__cause__
        if kind == "LocalEntryNotFoundError" and isinstance(cause, Exception):
            exc, kind = cause, type(cause).__name__  # the network error behind "not cached"
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
        return PullError(
            f"cannot reach the Hugging Face Hub at {where} ({kind}: {text}); check the "
            "network, or set HF_ENDPOINT to a mirror you can reach"
        )

    # -- the disk --

    def _cache(self) -> Path:
        hub = _hub()
        root = Path(self.cache_dir or hub.constants.HF_HUB_CACHE)
        return root / hub.file_download.repo_folder_name(repo_id=self.ref.repo, repo_type="model")

    def _disk_full_message(self) -> str:
        return (
            f"the disk of {self._cache()} is full; the partial file stays in the cache and the "
            "next pull resumes it: free space, or set HF_HOME to a bigger disk"
        )

    def _check_disk(self, files: Sequence[HubFile]) -> None:
        blobs = self._cache() / "blobs"
        missing = 0
        for f in files:
            done = blobs / f.sha256 if f.sha256 else None
            if done is not None and done.exists():
                continue
            part = blobs / f"{f.sha256}.incomplete" if f.sha256 else None
            have = part.stat().st_size if part is not None and part.exists() else 0
            missing += max(0, f.size - have)
        probe = next((p for p in (blobs, *blobs.parents) if p.exists()), Path("/"))
        free = shutil.disk_usage(probe).free
        if missing > free:
            raise PullError(
                f"not enough disk for {self.ref.repo}: {gib(missing)} to download, "
                f"{gib(free)} free at {probe}; free space, or set HF_HOME to a bigger disk"
            )

    async def _download(self, f: HubFile, revision: str) -> Path:
        """One file through hf_hub_download (in a thread: it blocks), its progress read from
        the size of the cache's `.incomplete` blob (so it also shows a resumed download)."""
        digest = f"sha256:{f.sha256}" if f.sha256 else ""
        label = f"pulling {f.sha256[:12]}" if f.sha256 else f"pulling {f.path}"
        blobs = self._cache() / "blobs"
        task = asyncio.create_task(asyncio.to_thread(self._fetch, f, revision))
        last = -1
        while True:
            # Looked at before the first wait too: a resumed download says where it resumes
            # even when the rest arrives within one PROGRESS_EVERY.
            have = _size(blobs / f"{f.sha256}.incomplete") if f.sha256 else 0
            if not have and f.sha256 and (blobs / f.sha256).exists():
                have = f.size  # done, renamed into the blob; or there from an earlier pull
            if have != last and have >= last:
                last = have
                self.emit(Event(label, digest, f.size, min(have, f.size), f.path))
            done, _ = await asyncio.wait({task}, timeout=PROGRESS_EVERY)
            if done:
                break
        path = task.result()  # raises the download's PullError
        if last < f.size:
            self.emit(Event(label, digest, f.size, f.size, f.path))
        return path

    def _fetch(self, f: HubFile, revision: str) -> Path:
        """Download one file into the cache: its blob (`blobs/<etag>`) written by
        huggingface_hub's `http_get` into a partial file that outlives an interruption (a
        Ctrl-C, a lost connection, a full disk) and is resumed with a Range request next
        time; then `hf_hub_download` finds the blob and links it into the snapshot, as for
        any file it downloaded itself. A lock on the partial file makes a second pull of the
        same file (another process, or the server) wait for the first, then use its blob."""
        hub = _hub()
        from filelock import FileLock

        try:
            url = hub.hf_hub_url(self.ref.repo, f.path, revision=revision, endpoint=self.endpoint)
            meta = hub.get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint)
            etag = meta.etag or f.sha256
            if etag:
                blobs = self._cache() / "blobs"
                blobs.mkdir(parents=True, exist_ok=True)
                blob = blobs / etag
                part = blobs / f"{etag}.incomplete"
                with FileLock(f"{part}.lock"):
                    if not blob.exists():
                        with open(part, "ab") as out:
                            hub.file_download.http_get(
                                meta.location or url,
                                out,
                                resume_size=out.tell(),
                                headers=hub.utils.build_hf_headers(token=self.token),
                                expected_size=meta.size,
                            )
                        os.replace(part, blob)
            return Path(
                hub.hf_hub_download(
                    self.ref.repo,
                    f.path,
                    revision=revision,
                    cache_dir=self.cache_dir,
                    token=self.token,
                    endpoint=self.endpoint,
                )
            )
        except Exception as exc:
            raise self._explain(exc) from None

    def _verify(self, f: HubFile, path: Path) -> None:
        """The file's sha256 against the Hub's (LFS) one; a mismatch deletes the file (a
        resumed download could not mend it)."""
        if not f.sha256:
            return
        got = sha256_of(path)
        if got != f.sha256:
            remove_cached(path)
            raise PullError(
                f"checksum mismatch for {self.ref.repo}/{f.path}: the Hub says sha256 "
                f"{f.sha256}, the download has {got}; the file was deleted, pull again"
            )


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * 2**20):
            h.update(chunk)
    return h.hexdigest()


def remove_cached(path: Path) -> None:
    """A file of huggingface_hub's cache: the snapshot's link and the blob it points to, then
    the folders left empty (up to the repo's own folder)."""
    blob = path.resolve()
    for p in (path, blob):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    for folder in (path.parent, blob.parent):
        repo_root = next((q for q in folder.parents if q.name.startswith("models--")), None)
        stop = repo_root.parent if repo_root else folder
        while folder != stop and folder.exists():
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent


def is_cached_file(path: str) -> bool:
    """Whether `path` lies in a huggingface_hub cache (a repo's snapshot)."""
    parts = Path(path).parts
    return any(p.startswith("models--") for p in parts) and "snapshots" in parts


def split_parts(path: Path) -> list[Path]:
    """A split GGUF's parts, found beside its first part (llama.cpp loads them from there)."""
    m = _SPLIT.search(path.name)
    if not m:
        return [path]
    stem, count = path.name[: m.start()], int(m.group(2))
    return [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def _sha(sibling: Any) -> str | None:
    lfs = getattr(sibling, "lfs", None)
    return str(lfs.sha256) if lfs is not None and getattr(lfs, "sha256", None) else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _hub() -> Any:
    """huggingface_hub, imported when a pull starts (its import takes a while)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # MANIFEST.md: no telemetry
    import huggingface_hub
    import huggingface_hub.file_download
    import huggingface_hub.utils

    return huggingface_hub


def read_budget() -> Budget:
    """This machine's budget (psutil and NVML, read as `dx doctor` reads them)."""
    import psutil

    from supervisors import read_gpus

    mem = psutil.virtual_memory()
    return budget_from(mem.available, mem.total, read_gpus().gpus)


def entry_for(ref: HubRef, context: int, budget: Budget) -> ModelConfig:
    """The config entry a pulled model gets (its path filled in once downloaded)."""
    gpus = (budget.gpu,) if budget.gpu is not None else ()
    return ModelConfig(name=ref.name, engine="llamacpp", model="", context=context, gpus=gpus)


def with_path(entry: ModelConfig, pulled: Pulled) -> ModelConfig:
    args = ("--mmproj", str(pulled.projector)) if pulled.projector else ()
    return replace(entry, model=str(pulled.model_path), args=args)


__all__ = [
    "Budget",
    "Choice",
    "Event",
    "HubFile",
    "HubRef",
    "Pull",
    "PullError",
    "Pulled",
    "Quant",
    "budget_from",
    "choose_projector",
    "choose_quant",
    "entry_for",
    "is_cached_file",
    "is_hub_ref",
    "list_quants",
    "parse_ref",
    "quant_of",
    "read_budget",
    "remove_cached",
    "split_parts",
    "with_path",
]
