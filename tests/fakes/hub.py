"""A local Hugging Face Hub for tests: the part of the Hub's API that huggingface_hub uses to
pull a model, over real HTTP (aiohttp, in a thread of the test process), for `HF_ENDPOINT`.

- `GET /api/models/ORG/REPO[/revision/REV]`: the repo's info with `siblings` (size, blobId,
  LFS size and sha256), as `HfApi.model_info(files_metadata=True)` reads it; 404 with
  `X-Error-Code: RepoNotFound` for an unknown repo.
- `HEAD|GET /ORG/REPO/resolve/REV/PATH`: the file, with the headers `hf_hub_download` checks
  (`X-Repo-Commit`, `X-Linked-Etag` = the sha256, `X-Linked-Size`, `ETag`,
  `Content-Length`) and `Range: bytes=A-[B]` answered with 206 (resume).

Files are real ones on disk (the bundled GGUFs) or made-up bytes; a file can be served with
a wrong declared sha256 (`corrupt`), and downloads can be slowed (`rate`, bytes per second)
so that a test can interrupt one. Every request is recorded in `requests`.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 256 * 1024


@dataclass
class FakeFile:
    path: str  # in the repo
    source: Path | None = None  # the bytes on disk; None: `data`
    data: bytes = b""
    size_override: int | None = None  # declared size (never downloaded: a selection test)
    corrupt: bool = False  # declare a sha256 the bytes do not have
    sha256: str = ""

    def __post_init__(self) -> None:
        if self.sha256:  # given (already hashed)
            return
        if self.size_override is not None:
            self.sha256 = hashlib.sha256(self.path.encode()).hexdigest()
            return
        h = hashlib.sha256()
        if self.source is not None:
            with open(self.source, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
        else:
            h.update(self.data)
        digest = h.hexdigest()
        self.sha256 = digest[::-1] if self.corrupt else digest

    @property
    def size(self) -> int:
        if self.size_override is not None:
            return self.size_override
        return self.source.stat().st_size if self.source is not None else len(self.data)


@dataclass
class FakeHub:
    repos: dict[str, list[FakeFile]] = field(default_factory=dict)
    rate: float = 0.0  # bytes per second for downloads; 0: as fast as it goes
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, Range
    url: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/models/{org}/{repo}", self.info)
        app.router.add_get("/api/models/{org}/{repo}/revision/{rev}", self.info)
        app.router.add_route("*", "/{org}/{repo}/resolve/{rev}/{path:.+}", self.resolve)
        return app

    def _repo(self, request: web.Request) -> list[FakeFile]:
        repo = f"{request.match_info['org']}/{request.match_info['repo']}"
        files = self.repos.get(repo)
        if files is None:
            raise web.HTTPNotFound(
                headers={"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"},
                text='{"error": "Repository not found"}',
            )
        return files

    async def info(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path, ""))
        files = self._repo(request)
        siblings = [
            {
                "rfilename": f.path,
                "size": f.size,
                "blobId": hashlib.sha1(f.sha256.encode()).hexdigest(),
                "lfs": {"size": f.size, "sha256": f.sha256, "pointerSize": 134},
            }
            for f in files
        ]
        repo = f"{request.match_info['org']}/{request.match_info['repo']}"
        return web.json_response(
            {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings}
        )

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        rng = request.headers.get("Range", "")
        self.requests.append((request.method, request.path, rng))
        files = self._repo(request)
        f = next((f for f in files if f.path == request.match_info["path"]), None)
        if f is None or f.size_override is not None:
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound"})
        size = f.size
        start, end = 0, size - 1
        m = re.match(r"bytes=(\d+)-(\d*)$", rng)
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        headers = {
            "X-Repo-Commit": COMMIT,
            "X-Linked-Etag": f'"{f.sha256}"',
            "X-Linked-Size": str(size),
            "ETag": f'"{f.sha256}"',
            "Accept-Ranges": "bytes",
            "Content-Length": str(end - start + 1),
            "Content-Type": "application/octet-stream",
        }
        if m:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        out = web.StreamResponse(status=206 if m else 200, headers=headers)
        await out.prepare(request)
        if request.method == "HEAD":
            return out
        pos = start
        fh: BinaryIO = open(f.source, "rb") if f.source else io.BytesIO(f.data)  # noqa: SIM115, ASYNC230 (a test fake)
        with fh:
            fh.seek(start)
            while pos <= end:
                chunk = fh.read(min(CHUNK, end - pos + 1))
                if not chunk:
                    break
                await out.write(chunk)
                pos += len(chunk)
                if self.rate:
                    await asyncio.sleep(len(chunk) / self.rate)
        await out.write_eof()
        return out

    # -- running it in a thread ----------------------------------------------------------

    def start(self) -> str:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            self._runner = web.AppRunner(self.app(), access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.url

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def downloads(self, path_end: str) -> list[str]:
        """The Range headers of the GETs of files whose path ends with `path_end`."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith(path_end)]


SMOL = "dx-test/SmolLM2-135M-Instruct-GGUF"
GEMMA = "dx-test/gemma-3-270m-it-GGUF"
_HASHES: dict[tuple[Path, bool], str] = {}


def bundled_hub(smollm2: Path, gemma: Path) -> FakeHub:
    """The repos the pull tests use, with the bundled GGUFs:
    - SMOL: the real SmolLM2 as Q4_1, and a second quant name, Q8_0, declared at 4 TiB (never
      fits, never downloaded: for the choice and the disk check);
    - GEMMA: the real Gemma 3 270M as Q4_K_M;
    - dx-test/corrupt-GGUF: SmolLM2 with a sha256 it does not have;
    - dx-test/vision-GGUF: SmolLM2 and a (made-up) vision projector;
    - dx-test/no-gguf: safetensors only."""

    def real(path: str, source: Path, corrupt: bool = False) -> FakeFile:
        key = (source, corrupt)
        if key in _HASHES:  # hashing 350 MB once per test session is enough
            return FakeFile(path, source, corrupt=corrupt, sha256=_HASHES[key])
        made = FakeFile(path, source, corrupt=corrupt)
        _HASHES[key] = made.sha256
        return made

    return FakeHub(
        {
            SMOL: [
                real("SmolLM2-135M-Instruct-Q4_1.gguf", smollm2),
                FakeFile("SmolLM2-135M-Instruct-Q8_0.gguf", size_override=4 * 2**40),
                FakeFile("README.md", data=b"# SmolLM2 GGUF\n"),
            ],
            GEMMA: [real("gemma-3-270m-it-Q4_K_M.gguf", gemma)],
            "dx-test/corrupt-GGUF": [real("corrupt-Q4_1.gguf", smollm2, corrupt=True)],
            "dx-test/vision-GGUF": [
                real("vision-Q4_1.gguf", smollm2),
                FakeFile("mmproj-vision-F16.gguf", data=b"GGUF" + bytes(60)),
            ],
            "dx-test/no-gguf": [FakeFile("model.safetensors", data=b"{}")],
        }
    )
