"""Property: random bytes in the request line, headers and body of a request to any route
never get a 5xx (the found attack: non-UTF-8 in Authorization gave 500 on every route)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dxproxy.api import ollama, openai
from dxproxy.api.health import routes as health_routes
from tests.conftest import DxProcess, fake_model, start_dx

ROUTES = sorted({(r.method, r.path) for table in (ollama.routes, openai.routes, health_routes)
                 for r in table if hasattr(r, "method")}
                | {("GET", "/admin/models"), ("GET", "/nothing"), ("OPTIONS", "/api/chat")})
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                min_size=1, max_size=20).map(str.encode)
# Any byte but CR and LF: one header line each (CR/LF are tried by the raw cases below).
VALUE = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
NAMES = st.sampled_from([b"Authorization", b"x-api-key", b"Content-Type", b"Origin", b"Host",
                         b"X-Forwarded-For", b"Accept-Encoding", b"Content-Encoding",
                         b"Transfer-Encoding", b"Access-Control-Request-Method", b"Cookie"])


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    extra = {"auth": {"enabled": True, "max_failures": 1_000_000},
             "server": {"trusted_proxies": ["127.0.0.1"], "header_timeout": 2, "body_timeout": 2}}
    proc = start_dx(tmp_path_factory.mktemp("fuzz"), {"fake": fake_model()}, extra=extra)
    yield proc
    proc.stop()


def send(dx: DxProcess, request: bytes) -> bytes:
    host, port = dx.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as s:
        s.sendall(request)
        data = b""
        while len(data) < 64 and (chunk := s.recv(4096)):
            data += chunk
    return data


def status_of(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1."), reply[:200]
    return int(reply.split(b" ", 2)[1])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), headers=st.lists(st.tuples(NAMES | TOKEN, VALUE),
                                                        max_size=6),
       key=st.sampled_from(["none", "valid", "bearer-junk"]),
       body=st.one_of(st.binary(max_size=300),
                      st.sampled_from([b'{"model": "fake", "messages": [{"role": "user", '
                                       b'"content": "\xff\xfe"}]}',
                                       b'{"model": "\xc3\x28", "prompt": "x"}',
                                       b'{"model": "fake", "prompt": 1e999}',
                                       b'{"model": "fake", "messages": [{"role": "user"}], '
                                       b'"options": {"num_ctx": -1}}'])),
       method=st.sampled_from([None, b"GET", b"POST", b"PUT", b"DELETE", b"\xff\xfe"]))
def test_random_bytes_never_get_a_5xx(dx: DxProcess, route: tuple[str, str],
                                      headers: list[tuple[bytes, bytes]], key: str, body: bytes,
                                      method: bytes | None) -> None:
    verb = method or route[0].encode()
    lines = [verb + b" " + route[1].encode() + b" HTTP/1.1", b"Host: localhost",
             b"Connection: close"]
    if key == "valid":
        lines.append(b"Authorization: Bearer " + dx.key.encode())
    elif key == "bearer-junk":
        lines.append(b"Authorization: Bearer \xff" + dx.key.encode()[1:])
    # Framing headers are the server's to police (a 400 for contradictions); keep the body's
    # length true unless the fuzzer sent its own.
    lines += [name + b": " + value for name, value in headers]
    if not any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in headers):
        lines.append(b"Content-Length: %d" % len(body))
    status = status_of(send(dx, b"\r\n".join(lines) + b"\r\n\r\n" + body))
    assert status < 500, (route, headers, key, body)


@pytest.mark.parametrize("request_bytes", [
    b"GET /api/tags\xff HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /%ff%fe HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    b"GET /api/%00 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    b"\xff\xfe\xfd\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\xff: x\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
])
def test_malformed_requests_get_a_4xx(dx: DxProcess, request_bytes: bytes) -> None:
    reply = send(dx, request_bytes)
    assert 400 <= status_of(reply) < 500, reply[:300]


NASTY_BODIES = [
    b'{"model": "fake", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    b'{"model": "fake", "prompt": "\xc3\x28", "input": "\xed\xa0\x80"}',
    b'{"model": "\xff", "prompt": "x", "messages": []}',
    b'{"model": "fake", "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'\xef\xbb\xbf{"model": "fake", "prompt": "bom"}',
    b'{"model": "fake", "prompt": "x", "options": {"\xff": 1}}',
]
POST_ROUTES = [path for method, path in ROUTES if method == "POST" and "{" not in path]


@pytest.mark.parametrize("path", POST_ROUTES)
def test_invalid_utf8_inside_json_is_a_4xx(dx: DxProcess, path: str) -> None:
    """Found by the 2,000-request attack run (docs/SECURITY.md): invalid UTF-8 inside JSON
    strings of an authenticated request reached the body decoder and gave a 500."""
    for body in NASTY_BODIES:
        request = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
                   b"Connection: close\r\nAuthorization: Bearer " + dx.key.encode()
                   + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        status = status_of(send(dx, request))
        assert status < 500, (path, body)
