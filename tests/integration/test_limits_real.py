"""Tokens per minute against the real SmolLM2 engine: the budget is charged with the
engine's own prompt and completion counts, to the token, and stops the key once spent."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from dxproxy.keys.store import create_key
from tests.conftest import DxProcess

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_tokens_per_minute_with_real_usage(dx_real: DxProcess) -> None:
    budget = 150
    key, _ = create_key(dx_real.state_dir, "tpm-real", tpm=budget)
    time.sleep(1.0)  # the running server picks the new key up within a second
    client = openai.OpenAI(base_url=dx_real.url + "/v1", api_key=key, max_retries=0)
    used = 0
    for _ in range(20):
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="smollm2", messages=QUESTION, max_tokens=16, temperature=0)  # type: ignore[arg-type]
        except openai.RateLimitError as exc:
            assert used >= budget  # refused only once the budget is spent
            assert exc.response.headers["x-ratelimit-remaining-tokens"] == "0"
            assert exc.response.headers["x-ratelimit-limit-tokens"] == str(budget)
            assert int(exc.response.headers["Retry-After"]) >= 1
            assert "150 tokens per minute" in exc.message
            break
        # What the key had left before this request is the budget minus the engine's own
        # counts of every earlier request: real usage, to the token.
        assert raw.headers["x-ratelimit-remaining-tokens"] == str(max(0, budget - used))
        usage = raw.parse().usage
        assert usage is not None and usage.prompt_tokens > 10 and usage.completion_tokens > 0
        used += usage.prompt_tokens + usage.completion_tokens
    else:
        pytest.fail("the key was never stopped")
    # Ollama's dialect counts the same way: the key stays stopped there too.
    stopped = httpx.post(dx_real.url + "/api/chat", timeout=60,
                         headers={"Authorization": f"Bearer {key}"},
                         json={"model": "smollm2", "messages": QUESTION, "stream": False})
    assert stopped.status_code == 429 and "tokens per minute" in stopped.json()["error"]
