"""The door's rules on their own: trusted proxies, Host names, CORS origins."""

from __future__ import annotations

from dxproxy.http.door import client_address, host_allowed, origin_allowed
from dxproxy.http.listener import parse_networks


def test_origin_patterns() -> None:
    local = ("http://localhost:*", "http://localhost", "app://*")
    assert origin_allowed("http://localhost:5173", local)
    assert origin_allowed("HTTP://LOCALHOST", local)
    assert not origin_allowed("http://localhost.evil.com", local)
    assert not origin_allowed("http://evil.com/http://localhost", local)
    assert origin_allowed("https://anything", ("*",))


def test_host_allowed_rules() -> None:
    assert host_allowed("LOCALHOST:11434", "127.0.0.1", ())
    assert host_allowed("", "127.0.0.1", ())
    assert host_allowed("[::1]:80", "127.0.0.1", ())
    assert host_allowed("my-box", "my-box", ())
    assert host_allowed("a.b.example", "127.0.0.1", ("*.b.example",))
    assert not host_allowed("attacker.example", "127.0.0.1", ("*.b.example",))
    assert not host_allowed("[::2]", "127.0.0.1", ())


def test_client_address_trusts_forwarded_for_only_from_trusted_proxies() -> None:
    trusted = parse_networks(["127.0.0.1", "10.0.0.0/8"])
    assert client_address("203.0.113.9", "1.2.3.4", trusted) == "203.0.113.9"
    assert client_address("127.0.0.1", "1.2.3.4", trusted) == "1.2.3.4"
    # The left-most entries are the client's own claims: the right-most untrusted one wins.
    assert client_address("127.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.7", trusted) == "1.2.3.4"
    assert client_address("127.0.0.1", "garbage, 1.2.3.4", trusted) == "1.2.3.4"
    assert client_address("127.0.0.1", "1.2.3.4, garbage", trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", None, trusted) == "127.0.0.1"
