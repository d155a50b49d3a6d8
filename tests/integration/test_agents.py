"""The coding agents people point at DX, unchanged: Claude Code (`claude -p`, Anthropic
Messages) and Codex CLI (`codex exec`, OpenAI Responses), the pinned npm releases that
scripts/setup installs into tests/js, against `dx serve` with real llama-server. Also the
Python SDKs on what the agents rely on: stored responses, count_tokens.

The model is the embedded default's SmolLM2-135M-Instruct with its trained context (8192):
the agents' system prompts are about 4,100 tokens once the tools are dropped (its template
has no tool syntax). Gemma 3 270M, tried first, is the pretrained model without a chat
template: it never ends a turn. Greedy (`--temp 0`), because the agents send no temperature
and at 1.0 the tiny model rambles to the output limit, which Claude Code reports as an error.
Measured on 2 cores at load 6: claude 97 s, codex 117 s, the file 3 min 55 s; at load 14 (other
work beside it) the engine fell to 27 prompt and 1.3 generated tokens/s: hence the timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from tests.conftest import ROOT, DxProcess, smollm2_path, start_dx

pytestmark = pytest.mark.integration

BIN = ROOT / "tests" / "js" / "node_modules" / ".bin"
PROMPT = "Reply with the single word: hello"
AGENT_TIMEOUT = 900  # seconds a run may take (see above)


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    # -n: a cap for requests that set no length (Codex sends none): the tiny model may copy
    # its long prompt back; an answer ends within the context either way.
    model = {"engine": "llamacpp", "model": str(smollm2_path()), "context": 8192,
             "args": ["--temp", "0", "-n", "2048"]}  # fmt: skip
    proc = start_dx(tmp_path_factory.mktemp("agents"), {"smollm2": model}, wait=120)
    yield proc
    proc.stop()


def agent(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/setup (npm ci --prefix tests/js)")
    return str(path)


def access(dx: DxProcess, path: str) -> list[dict[str, object]]:
    """DX's access-log entries for `path` so far."""
    out = []
    for line in dx.lines:
        if line.startswith("{") and '"dx.access"' in line:
            entry = json.loads(line)
            if entry.get("path") == path:
                out.append(entry)
    return out


# The agents' prompts carry their working directory: one fixed, empty one (also HOME) keeps
# the greedy tiny model's answer the same from run to run. Under pytest's numbered temporary
# folders it copied back a different part of its prompt and did not end its turn within 560
# tokens; here it copies the user's message back (about 150 tokens) and ends.
HOME = Path("/tmp/dx-agents")


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    home = HOME
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TERM")}
    return subprocess.run(
        argv, cwd=home, capture_output=True, text=True, timeout=AGENT_TIMEOUT,
        env={**base, "HOME": str(home), "DISABLE_TELEMETRY": "1", **env},
    )  # fmt: skip


def test_claude_code(dx: DxProcess) -> None:
    done = run(
        [agent("claude"), "-p", PROMPT, "--model", "smollm2"],
        {
            "ANTHROPIC_BASE_URL": dx.url,
            "ANTHROPIC_API_KEY": dx.key,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            # Above what the model writes before it ends its turn (it may copy back a long
            # part of its prompt); a reply cut at the limit is an error to Claude Code.
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "2000",
        },
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip()  # the model's text
    calls = access(dx, "/v1/messages")
    assert calls and all(c["status"] == 200 for c in calls), calls
    # What it sent and DX dropped is in the log, once.
    assert any("defer_loading: dropped" in line for line in dx.lines)


def test_codex(dx: DxProcess) -> None:
    provider = (f'model_providers.dx={{name="dx", base_url="{dx.url}/v1", env_key="DX_KEY", '
                'wire_api="responses"}')  # fmt: skip
    done = run(
        [agent("codex"), "exec", "--skip-git-repo-check", "-c", "model_provider=dx",
         "-c", provider, "-m", "smollm2", PROMPT],
        {"DX_KEY": dx.key},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip()
    calls = access(dx, "/v1/responses")
    assert calls and all(c["status"] == 200 for c in calls), calls
    assert any("tool type 'web_search'" in line for line in dx.lines)


def test_stored_responses(dx: DxProcess) -> None:
    o = openai.OpenAI(base_url=dx.url + "/v1", api_key=dx.key, max_retries=0, timeout=120)
    first = o.responses.create(model="smollm2", input="My name is Ada.", max_output_tokens=16,
                               instructions="Be brief.")  # fmt: skip
    assert o.responses.retrieve(first.id).output_text == first.output_text
    follow = o.responses.create(model="smollm2", input="What is my name?",
                                previous_response_id=first.id, max_output_tokens=16)  # fmt: skip
    # The follow-up carried the first turn: its prompt is the longer by at least that turn.
    assert follow.usage and first.usage
    assert follow.usage.input_tokens > first.usage.input_tokens + 5
    items = o.responses.input_items.list(follow.id, order="asc")
    texts = [json.dumps(i.model_dump()) for i in items.data]
    assert "My name is Ada." in texts[0] and "What is my name?" in texts[-1]
    streamed = list(o.responses.create(model="smollm2", input="And again?", stream=True,
                                       previous_response_id=follow.id,
                                       max_output_tokens=8))  # fmt: skip
    last = streamed[-1].response  # type: ignore[union-attr]
    assert o.responses.retrieve(last.id).id == last.id
    o.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        o.responses.retrieve(first.id)
    unstored = o.responses.create(model="smollm2", input="hi", store=False, max_output_tokens=4)
    with pytest.raises(openai.BadRequestError):
        o.responses.create(model="smollm2", input="hi", previous_response_id=unstored.id)


def test_count_tokens(dx: DxProcess) -> None:
    claude = anthropic.Anthropic(base_url=dx.url, api_key=dx.key, max_retries=0, timeout=120)
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    counted = claude.messages.count_tokens(model="smollm2", messages=ask,  # type: ignore[arg-type]
                                           system="Be brief.")  # fmt: skip
    reply = claude.messages.create(model="smollm2", max_tokens=4, messages=ask,  # type: ignore[arg-type]
                                   system="Be brief.")  # fmt: skip
    # The engine's own template and tokenizer: the count is the prompt the engine evaluated.
    assert abs(counted.input_tokens - reply.usage.input_tokens) <= 1
