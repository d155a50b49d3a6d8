"""The fleet on loopback: 3 DX nodes (fake engines tagging their replies n0, n1, n2) behind 2
DX gateways sharing a real redis-server for limits; routing itself never touches Redis.

What is proven, each against real `dx serve` processes:
- the gateways' catalog is the union of their config and the nodes' models, and /api/show of
  a fleet model is a node's own;
- every follow-up of a conversation lands on its home node, whichever gateway it goes
  through, and conversations spread over the nodes;
- a node SIGKILLed or SIGSTOPped mid-stream ends that stream with the dialect's error event
  within 2 s while the other streams finish whole and unchanged; its conversations move once
  (to the same node through both gateways) and come home when it returns;
- a request is retried on another node only before anything reached the client, and the
  engines' own counters show no generation ran twice;
- a draining node (SIGTERM) finishes its stream and takes no new work;
- 200 concurrent requests against rpm 10 through both gateways: exactly 10 pass; a revoked
  key is refused by both within 1 s; with Redis gone, routing is unchanged;
- the Via guard: a request that already passed a gateway is not sent on again (508);
- a client leaving mid-stream cancels the generation on the node's engine;
- any OpenAI endpoint as an upstream, fallbacks to the fleet, Caddy in front of both
  gateways, and a live reload that turns a plain DX into a gateway;
- the nodes' and gateways' metrics, the gateways' in-flight counts back to 0 at the end.

Processes are started once for the module (the tests run in file order and leave the fleet
as they found it). Measured on the 2-core build machine with other work on it (load 13-26):
16 passed in 73 s (load 13; 14 of them took 124 s at load 26); a SIGKILLed node's stream
ends with the error event 0.01-0.03 s after the kill, a SIGSTOPped node's 1.5-1.7 s after
(0.5 s of silence, then 1 s for /health);
a follow-up sent right after goes to another node in 0.1-0.3 s (1.6 s when the node stopped
before its headers); a returning node is back in both gateways' view 0.5-1.4 s after. Run
with -s to see these printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import ollama
import pytest
import yaml

from dxproxy.api.engine import conversation_key
from dxproxy.fleet.pick import conversation_key as fleet_key
from dxproxy.fleet.pick import rendezvous_rank
from dxproxy.keys.store import create_key
from tests.conftest import DX, FAKE_ENGINE, ROOT, DxProcess, fake_model, free_port, start_dx
from tests.e2e.test_caddy import caddy_binary
from tests.e2e.test_limits import burst
from tests.e2e.test_limits_redis import RedisServer

NODE_KEY = "fleet-node-key-0123456789"
NODES = 3


@dataclass
class Fleet:
    nodes: list[DxProcess]
    gateways: list[DxProcess]
    redis: RedisServer
    direct: int  # the port of a fake engine the gateways reach as a plain OpenAI endpoint
    tmp: Path
    headers: dict[str, str]  # a key both gateways know, without limits

    def node_of(self, url: str) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.url == url)

    def engine_stats(self, which: tuple[int, ...] = (0, 1, 2)) -> dict[int, dict[str, int]]:
        """The fake engines' own counters (requests started, completed...), per node."""
        out = {}
        for i in which:
            port = self.nodes[i].engine_port()
            out[i] = httpx.get(f"http://127.0.0.1:{port}/stats").json()
        return out

    def requests(self, which: tuple[int, ...]) -> int:
        return sum(s["requests"] for s in self.engine_stats(which).values())

    def restart(self, i: int) -> None:
        """Node i again, on its own port and config (what an operator's restart does)."""
        old = self.nodes[i]
        path = old.state_dir.parent / "dx.yaml"
        proc = subprocess.Popen([*DX, "serve", "--config", str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=path.parent)
        dx = DxProcess(proc, old.url, old.key, old.state_dir)
        threading.Thread(target=dx.read_output, daemon=True).start()
        assert dx.ready.wait(60) and proc.poll() is None, "\n".join(dx.lines)
        self.nodes[i] = dx

    def wait_serving(self, count: int, model: str = "fake", within: float = 15) -> None:
        """Until both gateways see `count` nodes serving `model` (their /api/ps)."""
        deadline = time.monotonic() + within
        for g in self.gateways:
            while True:
                ps = httpx.get(g.url + "/api/ps", headers=self.headers).json()["models"]
                nodes = next((m["nodes"] for m in ps if m["name"] == f"{model}:latest"), [])
                if len(nodes) == count:
                    break
                assert time.monotonic() < deadline, ps
                time.sleep(0.1)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    redis = RedisServer(tmp)
    redis.start()
    nodes: list[DxProcess] = []
    gateways: list[DxProcess] = []
    direct_port = free_port()
    direct = subprocess.Popen([sys.executable, FAKE_ENGINE, "--port", str(direct_port), "--tag",
                               "direct"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for i in range(NODES):
            (tmp / f"n{i}").mkdir()
            models = {"fake": fake_model(parallel=8, engine_args=["--tag", f"n{i}"])}
            if i == 2:
                models["solo"] = fake_model(engine_args=["--tag", "solo"])
            nodes.append(start_dx(tmp / f"n{i}", models, extra={
                "auth": {"keys": [NODE_KEY]},
                "server": {"max_connections_per_client": 1000, "shutdown_timeout": 8}}))
        fleet_cfg = {"nodes": [{"url": n.url} for n in nodes], "refresh": "0.5s",
                     "node_key": NODE_KEY, "eject_after": 2, "eject_backoff": "0.5s",
                     "eject_max": "1s"}
        for g in ("ga", "gb"):
            (tmp / g).mkdir()
            models = {
                "fake": {"upstream": "fleet"},
                # Any OpenAI endpoint: here a fake engine of its own (named "x" there).
                "direct": {"upstream": {"url": f"http://127.0.0.1:{direct_port}/v1",
                                       "api_key": "sk-direct", "model": "x"}},
                # An endpoint that is down, then the fleet.
                "gone": {"upstream": {"url": f"http://127.0.0.1:{free_port()}/v1"},
                         "fallbacks": ["fake"]},
                # A local engine that cannot start, then the fleet.
                "broken": fake_model(engine_args=["--exit-at-start", "3"], fallbacks=["fake"]),
            }
            gateways.append(start_dx(tmp / g, models, extra={
                "fleet": fleet_cfg,
                "server": {"max_connections_per_client": 1000},
                "limits": {"redis_url": redis.url, "redis_failure": "open"}}))
        key, _ = create_key(gateways[0].state_dir, "user")
        shutil.copy(gateways[0].state_dir / "keys.json", gateways[1].state_dir / "keys.json")
        time.sleep(1.0)  # both re-read their store within a second
        f = Fleet(nodes, gateways, redis, direct_port, tmp, {"Authorization": f"Bearer {key}"})
        f.wait_serving(NODES)
        yield f
    finally:
        for p in [*gateways, *nodes]:
            if p.proc.poll() is None:
                os.kill(p.proc.pid, signal.SIGCONT)
            p.stop()
        redis.stop()
        direct.terminate()
        direct.wait(10)


def chat(text: str, *, stream: bool = False, follow: bool = False) -> dict[str, object]:
    messages: list[dict[str, str]] = [{"role": "user", "content": text}]
    if follow:
        messages += [{"role": "assistant", "content": "Hello from the fake engine."},
                     {"role": "user", "content": "and then?"}]
    return {"model": "fake", "messages": messages, "stream": stream}


def served(resp: httpx.Response) -> str:
    """The node URL that served an answer (X-DX-Upstream: 'NODE REPLICA')."""
    return resp.headers["x-dx-upstream"].split(" ")[0]


async def stream_text(client: httpx.AsyncClient, url: str, headers: dict[str, str],
                      body: dict[str, object], log: list[tuple[float, str]]) -> tuple[str, str]:
    """(node, the SSE text) of one streamed chat; `log` gets (time, line) as lines arrive."""
    async with client.stream("POST", url + "/v1/chat/completions", headers=headers,
                             json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        lines = []
        async for line in resp.aiter_lines():
            log.append((time.monotonic(), line))
            lines.append(line)
        return served(resp), "\n".join(lines)


def content_of(sse: str) -> tuple[str, set[str]]:
    """The text an SSE chat stream carried, and the engine tags it came from."""
    text, tags = "", set()
    for line in sse.splitlines():
        if line.startswith("data: {"):
            event = json.loads(line[6:])
            if "system_fingerprint" in event:
                tags.add(event["system_fingerprint"])
            for c in event.get("choices") or ():
                text += (c.get("delta") or {}).get("content") or ""
    return text, tags


def test_catalog_is_the_union(fleet: Fleet) -> None:
    for g in fleet.gateways:
        models = {m["id"] for m in httpx.get(g.url + "/v1/models", headers=fleet.headers)
                  .json()["data"]}
        assert models == {"fake", "solo", "direct", "gone", "broken"}
        tags = {m["name"] for m in httpx.get(g.url + "/api/tags", headers=fleet.headers)
                .json()["models"]}
        assert {"fake:latest", "solo:latest"} <= tags
        # solo is in no gateway's config: only n2 serves it, and the gateway routes it there.
        r = httpx.post(g.url + "/v1/chat/completions", headers=fleet.headers,
                       json={**chat("hi"), "model": "solo"})
        assert r.status_code == 200 and r.json()["system_fingerprint"] == "solo"
        assert served(r) == fleet.nodes[2].url
    # /api/show of a fleet model is the node's own (it has the file); the official client.
    node_key = {"Authorization": f"Bearer {NODE_KEY}"}
    on_n2 = ollama.Client(host=fleet.nodes[2].url, headers=node_key).show("solo")
    for g in fleet.gateways:
        client = ollama.Client(host=g.url, headers=fleet.headers)
        shown = client.show("solo")
        assert shown.model_dump() == on_n2.model_dump() and shown.modelfile
        assert "FROM solo:latest" in str(shown.modelfile)
        assert client.show("fake").details == on_n2.details  # a configured upstream: fleet
        assert client.show("direct").modelfile  # an OpenAI endpoint: what the config says
        with pytest.raises(ollama.ResponseError) as missing:
            client.show("nowhere")
        assert missing.value.status_code == 404
    state = httpx.get(fleet.nodes[0].url + "/fleet/state",
                      headers={"Authorization": f"Bearer {NODE_KEY}"}).json()
    assert state["models"]["fake"]["state"] == "ready" and state["draining"] is False
    assert httpx.get(fleet.nodes[0].url + "/fleet/state").status_code == 401


def test_follow_ups_stay_home_across_both_gateways(fleet: Fleet) -> None:
    homes: dict[int, str] = {}
    ga, gb = fleet.gateways
    for c in range(30):
        first = httpx.post(ga.url + "/v1/chat/completions", headers=fleet.headers,
                           json=chat(f"conversation {c}"))
        assert first.status_code == 200
        homes[c] = served(first)
        assert first.json()["system_fingerprint"] == f"n{fleet.node_of(homes[c])}"
    hits = 0
    for c in range(30):
        for g in (gb, ga):
            r = httpx.post(g.url + "/v1/chat/completions", headers=fleet.headers,
                           json=chat(f"conversation {c}", follow=True))
            assert r.status_code == 200
            hits += served(r) == homes[c]
    assert hits == 60  # 100 % at low load
    assert len(set(homes.values())) == NODES  # and the conversations spread over the nodes


def test_a_busy_home_spills_in_rank_order(fleet: Fleet) -> None:
    """Six streams of one conversation at once through one gateway: its home takes them up to
    the load bound ((1 + slack) x mean + 1), the rest spill to the next node in its rank."""
    ga = fleet.gateways[0]
    text = "spill SLOW"
    home = served(httpx.post(ga.url + "/v1/chat/completions", headers=fleet.headers,
                             json={**chat(text), "max_tokens": 1}))

    async def run() -> list[str]:
        async with httpx.AsyncClient(timeout=30) as client:
            async def one() -> str:
                async with client.stream("POST", ga.url + "/v1/chat/completions",
                                         headers=fleet.headers,
                                         json=chat(text, stream=True)) as r:
                    node = served(r)
                    await r.aread()
                    return node

            tasks = []
            for _ in range(6):
                tasks.append(asyncio.create_task(one()))
                await asyncio.sleep(0.1)  # each sees the ones before it in flight
            return list(await asyncio.gather(*tasks))

    nodes = asyncio.run(run())
    assert nodes[0] == home and nodes.count(home) >= 2, nodes
    spilled = [n for n in nodes if n != home]
    assert spilled, nodes
    # The rank every gateway computes: DX's conversation key mixed with the key's name.
    conversation = conversation_key(chat(text, stream=True))
    assert conversation is not None
    rank = rendezvous_rank(fleet_key("user", conversation), [n.url for n in fleet.nodes])
    assert rank[0] == home and spilled[0] == rank[1], (rank, nodes)
    metrics = httpx.get(ga.url + "/metrics", headers=ga.auth).text
    assert 'dx_fleet_affinity_total{kind="spill",model="fake"}' in metrics


def _home_on(fleet: Fleet, node: int, prefix: str) -> str:
    """A conversation's first message whose home is `node`."""
    for c in range(200):
        text = f"{prefix} {c} SLOW"
        r = httpx.post(fleet.gateways[0].url + "/v1/chat/completions", headers=fleet.headers,
                       json={**chat(text), "max_tokens": 1})
        if served(r) == fleet.nodes[node].url:
            return text
    raise AssertionError(f"no conversation found for node {node}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_a_node_dying_mid_stream(fleet: Fleet, sig: signal.Signals) -> None:
    victim = 1
    doomed = _home_on(fleet, victim, f"doomed {sig.name}")
    others = [_home_on(fleet, n, f"other {sig.name}") for n in (0, 2)]
    ga, gb = fleet.gateways
    before = fleet.engine_stats((0, 2))

    async def run() -> tuple[list[object], list[tuple[float, str]], float]:
        log: list[tuple[float, str]] = []
        async with httpx.AsyncClient(timeout=30) as client:
            tasks = [asyncio.create_task(stream_text(client, g.url, fleet.headers,
                                                     chat(t, stream=True), log))
                     for t in others for g in (ga, gb)]
            doomed_task = asyncio.create_task(stream_text(client, ga.url, fleet.headers,
                                                          chat(doomed, stream=True), log))
            await asyncio.sleep(1.0)  # mid-stream: 200 chunks, 20 ms apart
            os.kill(fleet.nodes[victim].proc.pid, sig)
            killed = time.monotonic()
            results = await asyncio.gather(*tasks, doomed_task, return_exceptions=True)
            return list(results), log, killed

    results, log, killed = asyncio.run(run())
    *whole, cut = results
    assert not isinstance(cut, BaseException), cut
    node, sse = cut  # type: ignore[misc]
    assert node == fleet.nodes[victim].url
    error_line = next(line for t, line in log if '"error"' in line and t >= killed)
    error_at = next(t for t, line in log if line == error_line)
    assert error_at - killed < 2.0, error_at - killed
    print(f"\nfailover {sig.name}: the stream's error event {error_at - killed:.2f} s after")
    assert "fleet node" in error_line and fleet.nodes[victim].url in error_line
    for result in whole:  # the other streams: whole, from their own nodes, unchanged
        assert not isinstance(result, BaseException), result
        node, sse = result  # type: ignore[misc]
        text, tags = content_of(sse)
        assert text == "Hello from the fake engine." * 34 and sse.rstrip().endswith("data: [DONE]")
        assert tags == {f"n{fleet.node_of(node)}"}

    # The victim's conversation moves, once, to the same node through both gateways; the
    # first follow-up, sent at once, is answered by another node (timed).
    t0 = time.monotonic()
    first = httpx.post(gb.url + "/v1/chat/completions", headers=fleet.headers,
                       json={**chat(doomed, follow=True), "max_tokens": 2})
    print(f"failover {sig.name}: a follow-up right after, answered by "
          f"{served(first)} in {time.monotonic() - t0:.2f} s")
    assert first.status_code == 200 and served(first) != fleet.nodes[victim].url
    if sig == signal.SIGSTOP:
        fleet.wait_serving(NODES - 1)
    moved = {served(httpx.post(g.url + "/v1/chat/completions", headers=fleet.headers,
                               json={**chat(doomed, follow=True), "max_tokens": 2}))
             for g in (ga, gb, ga, gb)}
    assert len(moved) == 1 and fleet.nodes[victim].url not in moved

    # Back: SIGCONT (or a restart) and the conversation comes home.
    if sig == signal.SIGSTOP:
        os.kill(fleet.nodes[victim].proc.pid, signal.SIGCONT)
    else:
        fleet.nodes[victim].proc.wait(10)
        fleet.restart(victim)
    t0 = time.monotonic()
    fleet.wait_serving(NODES)
    print(f"failover {sig.name}: back in both gateways' view {time.monotonic() - t0:.2f} s "
          "after its return")
    home = {served(httpx.post(g.url + "/v1/chat/completions", headers=fleet.headers,
                              json={**chat(doomed, follow=True), "max_tokens": 2}))
            for g in (ga, gb)}
    assert home == {fleet.nodes[victim].url}
    # No generation ran twice: the surviving engines served exactly what was asked of them.
    after = fleet.engine_stats((0, 2))
    for n in (0, 2):
        expected = 2 + (5 if fleet.nodes[n].url in moved else 0)  # 2 streams, 5 moved turns
        assert after[n]["requests"] - before[n]["requests"] == expected, (n, before, after)


def test_a_node_dying_mid_stream_in_the_ollama_dialect(fleet: Fleet) -> None:
    """The same death told to an Ollama client: the NDJSON stream's last line is an error."""
    victim = 0
    text = _home_on(fleet, victim, "ollama")
    lines: list[tuple[float, dict[str, object]]] = []
    killed = 0.0
    with httpx.stream("POST", fleet.gateways[1].url + "/api/chat", headers=fleet.headers,
                      json={"model": "fake", "messages": [{"role": "user", "content": text}]},
                      timeout=30) as r:
        assert served(r) == fleet.nodes[victim].url
        for line in r.iter_lines():
            lines.append((time.monotonic(), json.loads(line)))
            if len(lines) == 10:
                fleet.nodes[victim].proc.kill()
                killed = time.monotonic()
    at, last = lines[-1]
    assert "fleet node" in str(last["error"]) and at - killed < 2.0
    assert all("error" not in x for _, x in lines[:-1])
    fleet.nodes[victim].proc.wait(10)
    fleet.restart(victim)
    fleet.wait_serving(NODES)


def test_retry_only_before_the_first_byte(fleet: Fleet) -> None:
    """A node gone before the request: the request goes to the next node (nothing had
    reached the client). An engine dying after the first byte: the client gets the error,
    and the request is never sent again. The engines' counters show each generation once."""
    ga, gb = fleet.gateways
    victim = 0
    text = _home_on(fleet, victim, "retry")
    fleet.nodes[victim].stop(signal.SIGKILL)
    before = fleet.requests((1, 2))
    # At once, before the gateways' next poll: their first try meets a closed port.
    for g in (ga, gb):
        r = httpx.post(g.url + "/v1/chat/completions", headers=fleet.headers,
                       json=chat(text, follow=True))
        assert r.status_code == 200 and served(r) != fleet.nodes[victim].url
    assert fleet.requests((1, 2)) - before == 2  # one generation per request
    fleet.restart(victim)
    fleet.wait_serving(NODES)

    # A node that stops (SIGSTOP) before answering: its /health is asked after 0.5 s of
    # silence, and without an answer within 1 s the request goes to the next node.
    text = _home_on(fleet, 1, "stalled")
    os.kill(fleet.nodes[1].proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = httpx.post(gb.url + "/v1/chat/completions", headers=fleet.headers,
                       json=chat(text, follow=True), timeout=30)
        took = time.monotonic() - t0
        assert r.status_code == 200 and served(r) != fleet.nodes[1].url
        assert took < 2.5, took
        print(f"\nfailover SIGSTOP before the headers: answered by another node in {took:.2f} s")
    finally:
        os.kill(fleet.nodes[1].proc.pid, signal.SIGCONT)
    fleet.wait_serving(NODES)

    # After the first byte: the engine under the stream dies (DIE: 3 chunks, then exits).
    before = fleet.engine_stats()
    r = httpx.post(ga.url + "/v1/chat/completions", headers=fleet.headers,
                   json=chat("retry DIE", stream=True))
    assert r.status_code == 200
    assert content_of(r.text)[0] == "Hello from the" and '"error"' in r.text, r.text
    node = fleet.node_of(served(r))
    # Never sent again: the other engines did not see it (the dead one's DX restarts it).
    others = tuple(i for i in range(NODES) if i != node)
    after = fleet.engine_stats(others)
    assert all(after[i]["requests"] == before[i]["requests"] for i in others), (before, after)
    fleet.wait_serving(NODES)


def test_drain_finishes_streams_and_takes_no_new_work(fleet: Fleet) -> None:
    ga, gb = fleet.gateways
    victim = 2
    long_one = _home_on(fleet, victim, "drain")
    newcomer = _home_on(fleet, victim, "newcomer")

    async def run() -> tuple[tuple[str, str], list[int], int]:
        log: list[tuple[float, str]] = []
        async with httpx.AsyncClient(timeout=30) as client:
            streaming = asyncio.create_task(stream_text(
                client, gb.url, fleet.headers, chat(long_one, stream=True), log))
            await asyncio.sleep(0.8)
            fleet.nodes[victim].proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            ready = await client.get(fleet.nodes[victim].url + "/ready")
            refused = await client.post(  # asked directly, the draining node says why
                fleet.nodes[victim].url + "/v1/chat/completions", json=chat("direct"),
                headers={"Authorization": f"Bearer {NODE_KEY}"})
            assert refused.status_code == 503 and "draining" in refused.text
            state = (await client.get(fleet.nodes[victim].url + "/fleet/state",
                                      headers={"Authorization": f"Bearer {NODE_KEY}"})).json()
            assert state["draining"] is True and state["models"]["fake"]["state"] == "draining"
            statuses = []
            for g in (ga, gb):
                r = await client.post(g.url + "/v1/chat/completions", headers=fleet.headers,
                                      json={**chat(newcomer, follow=True), "max_tokens": 2})
                statuses.append(r.status_code)
                assert served(r) != fleet.nodes[victim].url
            return await streaming, statuses, ready.status_code

    (node, sse), statuses, ready = asyncio.run(run())
    assert ready == 503 and statuses == [200, 200]
    assert node == fleet.nodes[victim].url
    assert content_of(sse) == ("Hello from the fake engine." * 34, {f"n{victim}"})
    assert fleet.nodes[victim].proc.wait(15) == 0
    fleet.restart(victim)
    fleet.wait_serving(NODES)


def test_client_leaving_cancels_on_the_node(fleet: Fleet) -> None:
    """A client that leaves mid-stream closes the gateway's request to the node, and the
    node's to its engine: the engine counts the generation cancelled."""
    text = _home_on(fleet, 0, "leaving")
    before = fleet.engine_stats((0,))[0]["cancelled"]
    with httpx.stream("POST", fleet.gateways[1].url + "/v1/chat/completions",
                      headers=fleet.headers, json=chat(text, stream=True)) as r:
        assert served(r) == fleet.nodes[0].url
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
    deadline = time.monotonic() + 5
    while fleet.engine_stats((0,))[0]["cancelled"] == before:
        assert time.monotonic() < deadline, "the node's engine kept generating"
        time.sleep(0.05)


def test_via_guard_refuses_a_second_hop(fleet: Fleet) -> None:
    r = httpx.post(fleet.gateways[0].url + "/v1/chat/completions",
                   headers={**fleet.headers, "Via": "1.1 dx-gateway"}, json=chat("loop"))
    assert r.status_code == 508 and "loop refused" in r.json()["error"]["message"]
    # A local model whose fallback is the fleet: its own engine may serve a relayed request,
    # but the fallback is not taken (here the engine failed to start: a 503 saying both).
    r = httpx.post(fleet.gateways[0].url + "/v1/chat/completions",
                   headers={**fleet.headers, "Via": "1.1 dx-gateway"},
                   json={**chat("loop"), "model": "broken"})
    message = r.json()["error"]["message"]
    assert r.status_code == 503 and "not sent on (it came through a DX gateway)" in message


def test_limits_and_revocations_across_gateways(fleet: Fleet) -> None:
    ga, gb = fleet.gateways
    key, _ = create_key(ga.state_dir, "ten", rpm=10)  # type: ignore[arg-type]
    shutil.copy(ga.state_dir / "keys.json", gb.state_dir / "keys.json")
    time.sleep(1.0)
    headers = {"Authorization": f"Bearer {key}"}
    body = {**chat("limits"), "max_tokens": 1}
    before = fleet.requests((0, 1, 2))

    async def both() -> list[httpx.Response]:
        ra, rb = await asyncio.gather(
            burst(ga.url, headers, 100, "/v1/chat/completions", body),
            burst(gb.url, headers, 100, "/v1/chat/completions", body))
        return [*ra, *rb]

    results = asyncio.run(both())
    assert sorted({r.status_code for r in results}) == [200, 429]
    assert sum(r.status_code == 200 for r in results) == 10
    assert fleet.requests((0, 1, 2)) - before == 10  # only those reached an engine

    gone = subprocess.run([*DX, "keys", "revoke", "ten", "--config", str(ga.state_dir.parent
                           / "dx.yaml")], capture_output=True, text=True, timeout=60)
    assert "in Redis, for every instance" in gone.stdout, gone.stderr
    t0 = time.monotonic()
    for g in (gb, ga):
        while httpx.get(g.url + "/api/tags", headers=headers).status_code != 401:
            assert time.monotonic() - t0 < 1.0
            time.sleep(0.05)


def test_metrics_of_nodes_and_gateways(fleet: Fleet) -> None:
    """Nodes: per-model gauges under the names the Inference Extension's endpoint picker is
    pointed at; gateways: node health, ejections, outcomes, retries, affinity. Counts what
    the tests before it did (file order): the ejections, retries and failures they caused."""
    node = httpx.get(fleet.nodes[0].url + "/metrics",
                     headers={"Authorization": f"Bearer {NODE_KEY}"}).text
    assert 'dx_model_requests_waiting{model_name="fake"} 0.0' in node
    assert 'dx_model_requests_running{model_name="fake"} 0.0' in node
    gateway = httpx.get(fleet.gateways[0].url + "/metrics", headers=fleet.gateways[0].auth).text
    samples = {}
    for line in gateway.splitlines():
        if line.startswith("dx_fleet_"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    for n in fleet.nodes:
        assert samples[f'dx_fleet_upstream_state{{node="{n.url}",state="healthy"}}'] == 1
    assert samples[f'dx_fleet_upstream_ejections_total{{node="{fleet.nodes[1].url}"}}'] >= 1
    assert samples['dx_fleet_affinity_total{kind="home",model="fake"}'] >= 30
    assert samples['dx_fleet_retries_total{model="fake"}'] >= 1
    assert any(k.startswith("dx_fleet_requests_total") and 'outcome="failed"' in k
               for k in samples)
    # Every relay has ended: this gateway's count on each node is back to 0 (a leak would
    # read as load and push conversations off their home).
    in_flight = {k: v for k, v in samples.items() if k.startswith("dx_fleet_upstream_in_flight")}
    assert len(in_flight) == NODES + 1 and set(in_flight.values()) == {0.0}, in_flight


def test_any_openai_endpoint_and_fallbacks(fleet: Fleet) -> None:
    ga = fleet.gateways[0]
    # upstream: {url, api_key, model}: the endpoint gets its own model name, and the key.
    r = httpx.post(ga.url + "/v1/chat/completions", headers=fleet.headers,
                   json={**chat("hi"), "model": "direct"})
    assert r.status_code == 200 and r.json()["system_fingerprint"] == "direct"
    assert served(r) == f"http://127.0.0.1:{fleet.direct}/v1"
    last = httpx.get(f"http://127.0.0.1:{fleet.direct}/last").json()
    assert last["model"] == "x"
    # In the Ollama dialect, streamed, translated once at the gateway.
    r = httpx.post(ga.url + "/api/chat", headers=fleet.headers,
                   json={"model": "direct", "messages": [{"role": "user", "content": "hi"}]})
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert "".join(x["message"]["content"] for x in lines) == "Hello from the fake engine."
    # Anthropic's Messages API, translated at the gateway, served by a node.
    r = httpx.post(ga.url + "/v1/messages", headers=fleet.headers, json={
        "model": "fake", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and served(r) in {n.url for n in fleet.nodes}
    assert r.json()["content"][0]["text"] == "Hello from the fake engine."
    # A dead endpoint, then the fleet; a local engine that failed to start, then the fleet.
    for name in ("gone", "broken"):
        r = httpx.post(ga.url + "/v1/chat/completions", headers=fleet.headers,
                       json={**chat(f"fallback {name}"), "model": name})
        assert r.status_code == 200, r.text
        assert r.json()["system_fingerprint"] in {"n0", "n1", "n2"}
        assert served(r) in {n.url for n in fleet.nodes}


def test_caddy_in_front_of_both_gateways(fleet: Fleet) -> None:
    """One public address, Caddy balancing over the two gateways at random: a conversation's
    follow-ups still land on its home node, and streams arrive whole."""
    port = free_port()
    upstreams = " ".join(g.url.removeprefix("http://") for g in fleet.gateways)
    env = {**os.environ, "DX_SITE": f"http://127.0.0.1:{port}", "DX_CADDY_ADMIN": "off",
           "DX_UPSTREAM": upstreams, "HOME": str(fleet.tmp), "XDG_DATA_HOME": str(fleet.tmp),
           "XDG_CONFIG_HOME": str(fleet.tmp)}
    log = fleet.tmp / "caddy.log"
    with log.open("wb") as out:
        caddy = subprocess.Popen([caddy_binary(), "run", "--config",
                                  str(ROOT / "config" / "Caddyfile"), "--adapter", "caddyfile"],
                                 env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.TransportError:
                assert caddy.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        for c in range(10):
            first = httpx.post(url + "/v1/chat/completions", headers=fleet.headers,
                               json=chat(f"caddy {c}"))
            home = served(first)
            for _ in range(3):
                r = httpx.post(url + "/v1/chat/completions", headers=fleet.headers,
                               json=chat(f"caddy {c}", follow=True, stream=True))
                assert served(r) == home
                assert content_of(r.text)[0] == "Hello from the fake engine."
                assert r.text.rstrip().endswith("data: [DONE]")
    finally:
        caddy.terminate()
        caddy.wait(10)


def test_a_reload_makes_a_dx_a_gateway(fleet: Fleet) -> None:
    """A plain DX given a fleet: section and an upstream: model by a live reload (SIGHUP)
    serves the fleet's models; its own model keeps its engine."""
    tmp = fleet.tmp / "gc"
    tmp.mkdir()
    dx = start_dx(tmp, {"local": fake_model(engine_args=["--tag", "local"])})
    try:
        path = tmp / "dx.yaml"
        config = yaml.safe_load(path.read_text())
        config["fleet"] = {"nodes": [{"url": n.url} for n in fleet.nodes], "refresh": "0.5s",
                           "node_key": NODE_KEY}
        config["models"]["fake"] = {"upstream": "fleet"}
        path.write_text(yaml.safe_dump(config))
        dx.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while True:
            models = {m["id"] for m in httpx.get(dx.url + "/v1/models", headers=dx.auth)
                      .json()["data"]}
            if {"fake", "solo"} <= models:
                break
            assert time.monotonic() < deadline, models
            time.sleep(0.1)
        r = httpx.post(dx.url + "/v1/chat/completions", headers=dx.auth, json=chat("reloaded"))
        assert r.status_code == 200 and served(r) in {n.url for n in fleet.nodes}
        r = httpx.post(dx.url + "/v1/chat/completions", headers=dx.auth,
                       json={**chat("mine"), "model": "local"})
        assert r.json()["system_fingerprint"] == "local"
        assert r.headers["x-dx-upstream"].startswith("local")
    finally:
        dx.stop()


def test_routing_without_redis(fleet: Fleet) -> None:
    """Last: Redis goes away; limits fail open (limits.redis_failure), routes do not move."""
    ga, gb = fleet.gateways
    homes = {}
    for c in range(6):
        r = httpx.post(ga.url + "/v1/chat/completions", headers=fleet.headers,
                       json=chat(f"redis {c}"))
        homes[c] = served(r)
    fleet.redis.stop()
    for c in range(6):
        for g in (gb, ga):
            r = httpx.post(g.url + "/v1/chat/completions", headers=fleet.headers,
                           json=chat(f"redis {c}", follow=True))
            assert r.status_code == 200 and served(r) == homes[c]
