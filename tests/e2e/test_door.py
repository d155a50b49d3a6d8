"""The door, attacked as an attacker would: bad bytes, key spellings, leaked paths, CORS,
DNS rebinding, slow clients, big bodies. Each test keeps a found attack fixed."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import DxProcess, fake_model, start_dx


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    extra = {
        "server": {
            "cors_origins": ["https://app.example.com"],
            "allowed_hosts": ["dx.internal"],
            "header_timeout": 1,
            "max_body_bytes": 2000,
        },
        # These tests fail keys on purpose, many times: the brute-force guard (test_keys.py)
        # would step in.
        "auth": {"enabled": True, "max_failures": 100_000},
    }
    proc = start_dx(tmp_path_factory.mktemp("door"), {"fake": fake_model()}, extra=extra)
    yield proc
    proc.stop()


def raw(dx: DxProcess, request: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Send bytes as they are (no client library would send these), return status and body."""
    host, port = dx.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def get(path: str, *headers: bytes, method: bytes = b"GET", body: bytes = b"") -> bytes:
    lines = [method + b" " + path.encode() + b" HTTP/1.1", b"Host: 127.0.0.1",
             b"Connection: close", *headers]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


ROUTES = ["/api/tags", "/api/version", "/api/chat", "/api/generate", "/v1/models",
          "/v1/chat/completions", "/api/show", "/api/ps", "/nothing", "/admin/models"]


# -- found attack: non-UTF-8 bytes in headers gave HTTP 500 on every route ------------------


@pytest.mark.parametrize("path", ROUTES)
def test_non_utf8_authorization_is_401_not_500(dx: DxProcess, path: str) -> None:
    for header in (b"Authorization: Bearer \xff\xfe\x80key", b"Authorization: \xc3\x28",
                   b"Authorization: Basic \xff\xff", b"x-api-key: \xe2\x82"):
        status, body = raw(dx, get(path, header))
        assert status == 401, (header, body)


def test_non_utf8_bytes_in_other_headers_are_never_5xx(dx: DxProcess) -> None:
    key = b"Authorization: Bearer " + dx.key.encode()
    body = b'{"model": "fake", "messages": [{"role": "user", "content": "hi"}]}'
    for header in (b"X-Anything: \xff\xfe", b"Content-Type: application/\xff",
                   b"Origin: http://\xff", b"User-Agent: \x80\x81", b"Accept: \xc3\x28"):
        status, _ = raw(dx, get("/api/chat", key, header, method=b"POST", body=body))
        assert status < 500, header
    status, _ = raw(dx, get("/api/tags", key).replace(b"Host: 127.0.0.1", b"Host: \xff\xfe"))
    assert status == 403  # not a name of this machine: the DNS-rebinding guard


# -- found attack: `curl -u KEY:` (key as the Basic user name) got 401 ---------------------


def test_every_way_of_sending_the_key(dx: DxProcess) -> None:
    def basic(text: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(text.encode()).decode()}

    for headers in (dx.auth, {"x-api-key": dx.key}, basic(f"{dx.key}:"), basic(f"user:{dx.key}"),
                    {"Authorization": f"bearer {dx.key}"}):
        assert httpx.get(dx.url + "/api/tags", headers=headers).status_code == 200, headers
    assert httpx.get(dx.url + "/api/tags", auth=(dx.key, "")).status_code == 200  # curl -u KEY:
    for headers in (basic("user:wrong"), basic("wrong:"), {"x-api-key": "wrong"}):
        assert httpx.get(dx.url + "/api/tags", headers=headers).status_code == 401


# -- found attack: a 401 told anyone where the key file is; engine errors carried paths -----


def test_401_says_where_the_key_is_without_paths(dx: DxProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-key"}):
        resp = httpx.get(dx.url + "/api/tags", headers=headers)
        assert resp.status_code == 401
        assert "dx state directory" in resp.text and "api-key" in resp.text
        assert str(dx.state_dir) not in resp.text and "/" + Path.home().name not in resp.text


# -- found attack: a browser's CORS preflight got 401 with no Access-Control-* headers ----


def test_cors_preflight_needs_no_key_for_local_and_configured_origins(dx: DxProcess) -> None:
    for origin in ("http://localhost:3000", "http://127.0.0.1", "https://localhost:8443",
                   "app://obsidian.md", "tauri://localhost", "vscode-webview://abc",
                   "chrome-extension://abcdef", "https://app.example.com"):
        pre = httpx.options(dx.url + "/api/chat", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert pre.status_code == 204, origin
        assert pre.headers["access-control-allow-origin"] == origin
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert "authorization" in pre.headers["access-control-allow-headers"]
    # The real request then carries the key, and its answer may be read by the page.
    ok = httpx.get(dx.url + "/api/tags", headers={**dx.auth, "Origin": "http://localhost:3000"})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "http://localhost:3000"
    # Streams too (their headers leave before the handler ends), and errors.
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", dx.url + "/api/chat", json=body,
                      headers={**dx.auth, "Origin": "app://obsidian.md"}) as stream:
        assert stream.status_code == 200
        assert stream.headers["access-control-allow-origin"] == "app://obsidian.md"
        assert b"".join(stream.iter_bytes()).count(b"\n") > 3
    bad = httpx.post(dx.url + "/v1/chat/completions", content=b"{",
                     headers={**dx.auth, "Origin": "http://localhost:3000"})
    assert bad.status_code == 400
    assert bad.headers["access-control-allow-origin"] == "http://localhost:3000"
    denied = httpx.get(dx.url + "/api/tags", headers={"Origin": "http://localhost:3000"})
    assert denied.status_code == 401  # still needs a key, and the page may read why
    assert denied.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_cors_refuses_other_origins(dx: DxProcess) -> None:
    for origin in ("https://evil.example", "http://localhost.evil.example", "null"):
        pre = httpx.options(dx.url + "/api/chat", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 403, origin
        assert "access-control-allow-origin" not in pre.headers
        # A "simple" cross-site POST (no preflight) is refused too, key or not.
        resp = httpx.post(dx.url + "/api/generate", headers={**dx.auth, "Origin": origin},
                          content=b'{"model": "fake", "prompt": "hi"}')
        assert resp.status_code == 403 and "cors_origins" in resp.json()["error"]


# -- DNS rebinding: on loopback only this machine's names are answered ----------------------


def test_host_guard(dx: DxProcess) -> None:
    port = dx.url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "10.0.0.1"):
        resp = httpx.get(dx.url + "/api/tags", headers={**dx.auth, "Host": host})
        assert resp.status_code == 403, host
        assert "allowed_hosts" in resp.json()["error"]
    for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.5:{port}", "[::1]",
                 f"[::1]:{port}", "app.localhost", "dx.internal", f"dx.internal:{port}"):
        assert httpx.get(dx.url + "/api/tags", headers={**dx.auth, "Host": host}).status_code \
            == 200, host


# -- client address -------------------------------------------------------------------------


# -- the door's own limits ----------------------------------------------------------------


def test_oversized_body_is_413(dx: DxProcess) -> None:
    big = b'{"model": "fake", "prompt": "' + b"x" * 5000 + b'"}'
    resp = httpx.post(dx.url + "/api/generate", headers=dx.auth, content=big)
    assert resp.status_code == 413 and "max_body_bytes" in resp.json()["error"]
    resp = httpx.post(dx.url + "/v1/completions", headers=dx.auth, content=big)
    assert resp.status_code == 413 and resp.json()["error"]["type"] == "invalid_request_error"


def test_oversized_chunked_body_is_413(dx: DxProcess) -> None:
    chunk = b"x" * 1000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)) + b"0\r\n\r\n"
    status, reply = raw(dx, get("/api/generate", b"Authorization: Bearer " + dx.key.encode(),
                                b"Transfer-Encoding: chunked", method=b"POST") + body)
    assert status == 413 and b"max_body_bytes" in reply


def test_json_body_that_is_not_utf8_is_400(dx: DxProcess) -> None:
    body = b'{"model": "fake", "prompt": "\xff\xfe"}'
    for path, shape in (("/api/generate", b'{"error":"the request body is not valid UTF-8'),
                        ("/v1/completions", b'{"error":{"message":"the request body is not')):
        status, reply = raw(dx, get(path, b"Authorization: Bearer " + dx.key.encode(),
                                    method=b"POST", body=body))
        assert status == 400 and reply.startswith(shape), reply


def test_slow_loris_is_cut_off_while_others_are_served(dx: DxProcess) -> None:
    host, port = dx.url.removeprefix("http://").split(":")
    slow = []
    for _ in range(100):  # half-sent heads, as the found attack did (3,000 of them)
        s = socket.create_connection((host, int(port)))
        s.sendall(b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nX-a: ")
        slow.append(s)
    try:
        t0 = time.monotonic()
        resp = httpx.get(dx.url + "/api/tags", headers=dx.auth, timeout=5)
        assert resp.status_code == 200 and time.monotonic() - t0 < 3.0
        time.sleep(1.5)  # header_timeout is 1 s here
        for s in slow:
            s.sendall(b"b")  # trickling does not help
        cut = 0
        deadline = time.monotonic() + 5
        for s in slow:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            data = s.recv(4096)
            if data.startswith(b"HTTP/1.1 408"):
                cut += 1
        assert cut == len(slow)
    finally:
        for s in slow:
            s.close()
    assert httpx.get(dx.url + "/api/tags", headers=dx.auth).status_code == 200


def test_later_heads_on_a_kept_alive_connection_have_their_own_timeout(dx: DxProcess) -> None:
    host, port = dx.url.removeprefix("http://").split(":")
    head = (b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
            + dx.key.encode() + b"\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(1.5)  # idle longer than header_timeout (1 s): only keep-alive applies
        s.sendall(head)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.sendall(head[:30])  # the third head never ends
        t0 = time.monotonic()
        reply = s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert 0.8 < time.monotonic() - t0 < 3


def test_slow_body_is_408(tmp_path: Path) -> None:
    proc = start_dx(tmp_path, {"fake": fake_model()}, extra={"server": {"body_timeout": 1}})
    try:
        host, port = proc.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
                      + proc.key.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"mod")
            t0 = time.monotonic()
            data = s.recv(4096)
            assert data.startswith(b"HTTP/1.1 408"), data
            assert 0.9 < time.monotonic() - t0 < 5
            assert b"body_timeout" in data
    finally:
        proc.stop()


def test_connection_limits_and_keepalive_timeout(tmp_path: Path) -> None:
    extra = {"server": {"max_connections": 20, "max_connections_per_client": 10,
                        "keepalive_timeout": 1}}
    proc = start_dx(tmp_path, {"fake": fake_model()}, extra=extra)
    host, port = proc.url.removeprefix("http://").split(":")
    held: list[socket.socket] = []
    try:
        for _ in range(10):
            held.append(socket.create_connection((host, int(port))))
        time.sleep(0.2)
        # The 11th connection from this address is refused with a clear 503.
        status, body = raw(proc, get("/api/tags", b"Authorization: Bearer " + proc.key.encode()))
        assert status == 503 and b"too many connections" in body
        # The operator learns why, once (a proxy not listed as trusted looks like this).
        time.sleep(0.2)
        said = [line for line in proc.lines if "refusing connections with 503" in line]
        assert len(said) == 1 and "server.trusted_proxies" in said[0], said
        for s in held:
            s.close()
        held.clear()
        time.sleep(0.2)
        # An idle kept-alive connection is closed after keepalive_timeout.
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(get("/api/tags", b"Authorization: Bearer " + proc.key.encode())
                      .replace(b"Connection: close", b"Connection: keep-alive"))
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            t0 = time.monotonic()
            assert s.recv(65536) == b""  # closed by dx
            assert 0.5 < time.monotonic() - t0 < 3
        assert httpx.get(proc.url + "/api/tags", headers=proc.auth).status_code == 200
    finally:
        for s in held:
            s.close()
        proc.stop()
