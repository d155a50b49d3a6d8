"""Stored Responses shared by two DX instances through a real redis-server (limits.redis_url):
a follow-up (previous_response_id) and GET/DELETE work through either instance."""

from __future__ import annotations

from pathlib import Path

import openai

from tests.e2e.test_limits_redis import RedisServer, redis_server, share_key, two_instances
from tests.fakes.engine_requests import last_request

__all__ = ["redis_server"]  # the fixture, used by name
TEXT = "Hello from the fake engine."


def test_a_follow_up_through_the_other_instance(tmp_path: Path, redis_server: RedisServer) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a, b = two_instances(tmp_path, redis_server.url)
    try:
        headers = share_key(a, b, "shared")
        key = headers["Authorization"].removeprefix("Bearer ")
        oa = openai.OpenAI(base_url=a.url + "/v1", api_key=key, max_retries=0)
        ob = openai.OpenAI(base_url=b.url + "/v1", api_key=key, max_retries=0)
        first = oa.responses.create(model="fake", input="hi there")
        follow = ob.responses.create(model="fake", input="and?", previous_response_id=first.id)
        assert follow.output_text == TEXT
        assert [m["content"] for m in last_request(b, "fake")["messages"]] == [
            "hi there", TEXT, "and?"]  # fmt: skip
        assert oa.responses.retrieve(follow.id).id == follow.id
        ob.responses.delete(first.id)
        try:
            oa.responses.retrieve(first.id)
            raise AssertionError("deleted through b, still found through a")
        except openai.NotFoundError:
            pass
    finally:
        a.stop()
        b.stop()
