"""Request ids as the access log and X-Request-ID carry them."""

from __future__ import annotations

from dxproxy.http.access import request_id


def test_request_id_cleaning() -> None:
    assert request_id("ok-1.2_3") == "ok-1.2_3"
    assert request_id("a b\nc") == "abc"
    assert len(request_id("x" * 500)) == 128
    assert len(request_id("") or "") == 16 and request_id(None) != request_id(None)
    assert len(request_id("\n\n")) == 16
