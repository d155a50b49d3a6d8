"""The real Open WebUI in a real browser against `dx serve` with the embedded default (no config:
SmolLM2 on a real llama-server): a chat (with Open WebUI's built-in tools, as it sends them by
default, then its title / follow-up / tags tasks), a chat with `num_ctx` set in its advanced
params, a long chat that outgrows the context, and RAG on an uploaded file (`/api/embed`). Each
step must show the model's reply in the page; screenshots go to docs/screenshots/openwebui-*.png.

Not a CI step (Open WebUI is a 7.4 GB install: it pulls CUDA torch). Install it once, in its own
virtualenv outside the repository, then run this with DX's virtualenv:

    python3.11 -m venv /work/openwebui-venv && /work/openwebui-venv/bin/pip install open-webui
    .venv/bin/python tests/suites/open_webui.py --venv /work/openwebui-venv

Open WebUI runs offline (OFFLINE_MODE, no OpenAI connection, no version check, Ollama as its RAG
embedding engine: nothing is downloaded), without login (WEBUI_AUTH=False), with DX's key as its
Ollama connection's key (OLLAMA_API_CONFIGS) and RAG key. The browser is Debian's headless
Chromium through Debian's chromedriver (scripts/setup installs both), driven by Selenium.

--record DIR puts tests/suites/recording_relay.py between Open WebUI and DX and writes what Open
WebUI sent, step by step, as the fixtures of tests/integration/test_openwebui_replay.py (no
keys, no cookies). It exits 0 when every step's reply appeared, 1 otherwise (it says which).
--fake-engine puts the fake engine behind DX instead (whole run about 1.5 min): for checking
this script, and how the fixtures were recorded on a busy machine.

Measured with Open WebUI 0.12.4 against the embedded default (2026-12-07, 2 cores at load 1.5 to
3): all four steps passed (chat 68 s, num-ctx 19 s, long-chat 378 s, rag 28 s); an earlier run,
before DX sent a chat without the tools when they leave no room for its latest message, failed
long-chat and rag with a 400: docs/COMPATIBILITY.md has the details. The screenshots are the
PNGs Chromium saved (28 to 145 KB).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.conftest import DxProcess, fake_model, free_port, start_dx  # noqa: E402
from tests.dx_default import start_dx_default  # noqa: E402

SCREENSHOTS = ROOT / "docs" / "screenshots"
MODEL = "smollm2:latest"


def owui_env(data: Path, ollama_url: str, key: str) -> dict[str, str]:
    """Open WebUI, offline and local: nothing it does may reach beyond loopback."""
    return {
        **os.environ,
        "DATA_DIR": str(data),
        "WEBUI_AUTH": "False",
        "WEBUI_SECRET_KEY": secrets.token_hex(16),
        "OFFLINE_MODE": "True",
        "HF_HUB_OFFLINE": "1",
        "ENABLE_VERSION_UPDATE_CHECK": "False",
        "ANONYMIZED_TELEMETRY": "False",
        "DO_NOT_TRACK": "True",
        "SCARF_NO_ANALYTICS": "True",
        "ENABLE_OPENAI_API": "False",
        "ENABLE_OLLAMA_API": "True",
        "OLLAMA_BASE_URL": ollama_url,
        "OLLAMA_API_CONFIGS": json.dumps({"0": {"key": key}}),
        "DEFAULT_MODELS": MODEL,
        "RAG_EMBEDDING_ENGINE": "ollama",
        "RAG_EMBEDDING_MODEL": MODEL,
        "RAG_OLLAMA_BASE_URL": ollama_url,
        "RAG_OLLAMA_API_KEY": key,
        "ENABLE_WEB_SEARCH": "False",
        "ENABLE_CODE_INTERPRETER": "False",
        "AUDIO_STT_ENGINE": "webapi",  # the browser's, not a Whisper model download
        "USER_AGENT": "open-webui-suite",
    }


@contextlib.contextmanager
def process(cmd: list[str], log: Path, **kw: Any) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{proc.args!r} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(1)
    sys.exit(f"{url} did not answer within {timeout} s; its log: {log}")


@contextlib.contextmanager
def stack(venv: Path, tmp: Path, fake: bool) -> Iterator[tuple[DxProcess, str, Path]]:
    """DX (embedded default), the recording relay in front of it, Open WebUI pointed at the
    relay; yields DX, Open WebUI's URL and the relay's JSON-lines file."""
    if fake:  # the same model name, its replies the fake engine's (instant)
        (tmp / "dx").mkdir()
        dx = start_dx(tmp / "dx", {"smollm2": fake_model(embeddings=True)})
    else:
        dx = start_dx_default(tmp / "dx")
    try:
        with contextlib.ExitStack() as stack:
            requests = tmp / "requests.jsonl"
            requests.touch()
            port = free_port()
            relay = stack.enter_context(process(
                [sys.executable, str(ROOT / "tests" / "suites" / "recording_relay.py"),
                 "--upstream", dx.url, "--port", str(port), "--out", str(requests)],
                tmp / "relay.log"))
            upstream = f"http://127.0.0.1:{port}"
            wait_http(upstream + "/", relay, tmp / "relay.log", 30)
            port = free_port()
            log = tmp / "open-webui.log"
            owui = stack.enter_context(process(
                [str(venv / "bin" / "open-webui"), "serve", "--host", "127.0.0.1",
                 "--port", str(port)],
                log, env=owui_env(tmp / "owui-data", upstream, dx.key), cwd=tmp))
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/health", owui, log, 300)
            yield dx, url, requests
    finally:
        dx.stop()


# -- the browser --------------------------------------------------------------------------

# Long enough that three turns of it outgrow what the context leaves beside Open WebUI's ~6k
# tokens of tools; short enough that one turn fits by itself (only then is a 400 right).
LONG_TEXT = (ROOT / "docs" / "PRODUCT.md") if (ROOT / "docs" / "PRODUCT.md").exists() else None
DOCUMENT = """DX field notes (a test document for Open WebUI's RAG)

The lighthouse keeper of Port Ellery is named Marguerite Osei. She has kept the light since 1998.
The lighthouse stands 31 metres tall and its lamp can be seen 22 nautical miles out at sea.
Every spring the keeper paints the lantern room green, a tradition started by her grandfather.
The nearest village, Halden Cove, holds a fish market every Thursday morning.
"""


class Page:
    """Open WebUI's chat page in headless Chromium, driven as a person would."""

    def __init__(self, url: str, shots: Path, width: int = 1280, height: int = 900) -> None:
        from tests.browser import browser

        self.url, self.shots = url, shots
        self.d = browser(width, height)

    def by(self, css: str) -> list[Any]:
        return list(self.d.find_elements("css selector", css))

    def new_chat(self) -> None:
        self.d.get(self.url + "/")
        self.wait(lambda: self.by("#chat-input"), 120, "the chat input")
        # The release notes shown on a first visit
        for b in self.d.find_elements("xpath", "//button[contains(., \"Okay, Let's Go!\")]"):
            b.click()

    def wait(self, cond: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if value := cond():
                    return value
            time.sleep(1)
        raise StepFailed(f"no {what} within {timeout:.0f} s")

    def type(self, text: str) -> None:
        box = self.by("#chat-input")[0]
        box.click()
        box.send_keys(text)

    def paste(self, text: str) -> None:
        """A paste into the editor, as from the clipboard (typing 20 KB key by key is slow)."""
        box = self.by("#chat-input")[0]
        box.click()
        self.d.execute_script(
            "const dt = new DataTransfer(); dt.setData('text/plain', arguments[1]);"
            "arguments[0].dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt,"
            " bubbles: true, cancelable: true}));",
            box,
            text,
        )

    def send(self) -> None:
        from selenium.webdriver.common.keys import Keys

        self.wait(lambda: self.by("#send-message-button"), 60, "send button")
        self.by("#chat-input")[0].send_keys(Keys.ENTER)

    def replies(self) -> list[str]:
        return [e.text for e in self.by(".chat-assistant #response-content-container")]

    def wait_reply(self, n: int, timeout: float, answered: Any) -> str:
        """The n-th reply, once it shows text and `answered()` says DX has ended every chat
        request (the Stop button stays while Open WebUI's tasks run after the reply)."""

        def done() -> str | None:
            replies = self.replies()
            if len(replies) >= n and answered():
                return replies[n - 1].strip() or None
            return None

        return str(self.wait(done, timeout, f"reply {n}"))

    def set_num_ctx(self, value: int) -> None:
        """Chat Controls > Advanced Params > num_ctx (Ollama): Default -> Custom -> value."""
        self.by("button[aria-label=Controls]")[0].click()
        label = self.wait(lambda: self.d.find_element(
            "xpath", "//span[@slot='label' and normalize-space()='num_ctx (Ollama)']"), 30,
            "num_ctx row in Chat Controls")
        label.find_element("xpath", "following::button[1]").click()  # Default -> Custom
        # The value's box appears after the row (a slider beside it)
        box = self.wait(lambda: label.find_element(
            "xpath", "following::input[@type='number' or @type='text'][1]"), 10, "num_ctx box")
        box.clear()
        box.send_keys(str(value))
        box.send_keys("\t")
        self.by("button[aria-label=Controls]")[0].click()

    def upload(self, path: Path) -> None:
        inputs = [i for i in self.by("input[type=file]") if i.get_attribute("id") != "camera-input"]
        inputs[0].send_keys(str(path))

    def shot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"openwebui-{name}.png"
        self.d.save_screenshot(str(path))
        return path

    def close(self) -> None:
        self.d.quit()


class StepFailed(Exception):
    pass


# -- what Open WebUI sent: the relay's lines ----------------------------------------------


class Recording:
    """The relay's JSON lines: one per request as it arrived, one more when DX's answer ended."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        by_seq: dict[int, dict[str, Any]] = {}
        for line in self.path.read_text().splitlines():
            r = json.loads(line)
            by_seq.setdefault(r["seq"], {}).update(r)
        return [by_seq[k] for k in sorted(by_seq)]

    def last_seq(self) -> int:
        return max((r["seq"] for r in self.records()), default=0)

    def chats_answered(self) -> bool:
        """DX has ended every chat request (not tasks) sent so far, and there is one."""
        chats = [r for r in self.records() if kind(r).startswith("chat")]
        return bool(chats) and all("status" in r for r in chats)

    def settled(self, quiet: float) -> bool:
        """Every request answered, and none new for `quiet` seconds (Open WebUI fires its
        title, tags and follow-up tasks after a reply has ended)."""
        records = self.records()
        return all("status" in r for r in records) and (
            not records or time.time() - max(r["time"] + r.get("seconds", 0) for r in records)
            > quiet)


def kind(r: dict[str, Any]) -> str:
    """A name for what a request is, from its shape."""
    body = r.get("body") if isinstance(r.get("body"), dict) else {}
    if r["path"] == "/api/chat":
        last = str((body.get("messages") or [{}])[-1].get("content", ""))
        # Tasks carry no tools; a chat does, even the RAG one, whose user message is a task
        if last.startswith("### Task:") and not body.get("tools"):
            for name, mark in (("title", '"title"'), ("followup", '"follow_ups"'),
                               ("tags", '"tags"'), ("query", '"queries"')):
                if mark in last:
                    return f"task-{name}"
            return "task"
        name = "chat-tools" if body.get("tools") else "chat"
        if any(m.get("role") == "tool" for m in body.get("messages", [])):
            name += "-tool-result"
        return name
    return r["path"].strip("/").replace("api/", "").replace("/", "-") or "root"


WHAT = {
    "chat-tools": "a browser chat: Open WebUI's built-in tools attached, as by default",
    "chat-tools-tool-result": "the chat again with a built-in tool's result",
    "chat": "a browser chat without tools",
    "task-title": "the title task Open WebUI fires after a reply (non-streamed, num_predict)",
    "task-followup": "the follow-up suggestions task fired after a reply",
    "task-tags": "the tags task fired after a reply",
    "task-query": "the retrieval-query task (RAG)",
    "embed": "a document's chunk or the question embedded for RAG (truncate: true)",
    "tags": "the model list, every page load",
    "ps": "the running models, after each model list",
    "version": "the server version",
    "root": "the connection check",
}
STEP_WHAT = {
    "chat": "step 'chat' (a short question)",
    "num-ctx": "step 'num-ctx' (num_ctx 4096 set in Chat Controls > Advanced Params)",
    "long-chat": "step 'long-chat' (three pasted parts of a long text, one per turn)",
    "rag": "step 'rag' (a text file uploaded, then a question on it)",
}


def write_fixtures(records: list[dict[str, Any]], out: Path) -> list[Path]:
    """One JSON file per request, named for its step and kind (`long-chat-chat-tools-2.json`)."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    counts: dict[str, int] = {}
    for r in records:
        k, step = kind(r), r["step"]
        # A GET once in all; of the rest at most 3 per step and kind (a document has many chunks)
        key = k if r["method"] == "GET" else f"{step}-{k}"
        counts[key] = n = counts.get(key, 0) + 1
        if n > (1 if r["method"] == "GET" else 3):
            continue
        name = key + (f"-{n}" if n > 1 else "")
        fixture = {
            "what": f"{STEP_WHAT.get(step, 'page load')}: {WHAT.get(k, k)}",
            "method": r["method"],
            "path": r["path"],
            "query": r["query"],
            "headers": r["headers"],
            "body": r["body"],
            "recorded_status": r.get("status"),
            "recorded_error": r.get("error"),
            "recorded_trimmed_tokens": r.get("trimmed_tokens"),
        }
        path = out / f"{name}.json"
        path.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
        written.append(path)
    return written


# -- the run --------------------------------------------------------------------------------


def run_steps(page: Page, rec: Recording, tmp: Path, timeout: float) -> dict[str, Any]:
    """Each step in a new chat; a failed step is reported and the next ones still run."""
    results: dict[str, Any] = {}
    long_text = (ROOT / "README.md").read_text()
    document = tmp / "lighthouse.txt"
    document.write_text(DOCUMENT)

    def chat() -> str:
        page.type("Hello! What is the capital of France?")
        page.send()
        return page.wait_reply(1, timeout, rec.chats_answered)

    def num_ctx() -> str:
        page.set_num_ctx(4096)
        page.type("Name three colours.")
        page.send()
        return page.wait_reply(1, timeout, rec.chats_answered)

    def long_chat() -> str:
        replies = []
        for turn in range(3):  # about 800 tokens of text each
            part = long_text[turn * 3200 : (turn + 1) * 3200]
            page.paste(part + "\n\nSummarize the text above in one sentence.")
            page.send()
            replies.append(page.wait_reply(turn + 1, timeout, rec.chats_answered))
        return replies[-1]

    def rag() -> str:
        page.upload(document)
        page.wait(lambda: any(r["path"] == "/api/embed" and r.get("status") == 200
                              for r in rec.records()[first:]), timeout, "document embedded")
        page.wait(lambda: rec.settled(5), timeout, "the document processed")
        page.type("Who is the lighthouse keeper of Port Ellery?")
        page.send()
        return page.wait_reply(1, timeout, rec.chats_answered)

    for name, fn in (("chat", chat), ("num-ctx", num_ctx), ("long-chat", long_chat),
                     ("rag", rag)):
        first = len(rec.records())
        started = time.monotonic()
        print(f"step {name} ...", flush=True)
        result: dict[str, Any] = {"first": first}
        try:
            page.new_chat()
            result["reply"] = fn()[:300]
            page.wait(lambda: rec.settled(8), timeout, "quiet after the step's requests")
        except Exception as e:
            result["why"] = f"{type(e).__name__}: {str(e)[:300]}"
        step_records = rec.records()[first:]
        result["requests"] = [
            f"{r['method']} {r['path']} {kind(r)} -> {r.get('status')} in {r.get('seconds')} s"
            + (f", {r['trimmed_tokens']} tokens trimmed" if "trimmed_tokens" in r else "")
            for r in step_records]
        result["errors"] = [r.get("error") for r in step_records if r.get("status") != 200]
        result["ok"] = bool(result.get("reply")) and not result["errors"] and "why" not in result
        result["seconds"] = round(time.monotonic() - started)
        result["screenshot"] = str(page.shot(name))
        results[name] = result
        print(json.dumps({name: result}, indent=1), flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=Path("/work/openwebui-venv"),
                        help="the virtualenv Open WebUI is installed in")
    parser.add_argument("--record", type=Path, metavar="DIR",
                        help="write Open WebUI's requests to DX as fixtures into DIR")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds a reply may take (an 8k prompt on 2 busy cores: minutes)")
    parser.add_argument("--fake-engine", action="store_true",
                        help="DX in front of tests/fakes/fake_engine.py, not the default's "
                        "llama-server: checks this script (and records shapes) in minutes")
    args = parser.parse_args()
    if not (args.venv / "bin" / "open-webui").exists():
        sys.exit(f"Open WebUI is not installed in {args.venv}. Install it in its own virtualenv "
                 f"(7.4 GB), outside the repository:\n  python3.11 -m venv {args.venv} && "
                 f"{args.venv}/bin/pip install open-webui\nthen run this again (--venv names it).")
    # SIGTERM unwinds like Ctrl-C, so that DX, the relay and Open WebUI are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="dx-openwebui-"))
    print(f"logs in {tmp}")
    with stack(args.venv, tmp, args.fake_engine) as (dx, url, requests):
        print(f"DX {dx.url}, Open WebUI {url}, Open WebUI's requests in {requests}", flush=True)
        time.sleep(float(os.environ.get("DX_SUITE_HOLD", "0")))
        rec = Recording(requests)
        # The fake engine's replies are no proof: its screenshots stay in the temp dir.
        page = Page(url, tmp / "screenshots" if args.fake_engine else SCREENSHOTS)
        try:
            results = run_steps(page, rec, tmp, args.timeout)
        finally:
            page.close()
            (tmp / "dx.log").write_text("\n".join(dx.lines) + "\n")
    records = rec.records()
    starts = sorted((r["first"], name) for name, r in results.items())
    for i, r in enumerate(records):
        r["step"] = next((name for first, name in reversed(starts) if i >= first), "start")
    if args.record:
        for path in write_fixtures(records, args.record):
            print(f"fixture {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    (tmp / "results.json").write_text(json.dumps(results, indent=1))
    version = subprocess.run([str(args.venv / "bin" / "pip"), "show", "open-webui"],
                             capture_output=True, text=True).stdout.split("\n")[1]
    engine = "the fake engine" if args.fake_engine else "the embedded default"
    print(f"\nOpen WebUI {version.split()[-1]} against DX ({engine}), "
          f"{time.strftime('%Y-%m-%d')}; logs and results.json in {tmp}")
    for name, r in results.items():
        print(f"  {name:10} {'passed' if r['ok'] else 'FAILED'} in {r['seconds']} s: "
              f"{r.get('why') or r['errors'] or repr(r.get('reply', ''))[:80]}")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
