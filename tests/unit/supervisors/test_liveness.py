"""An engine that stops answering (hung, or SIGSTOPped) is killed and restarted, like one that
crashed; the time from the hang to serving again is what an operator waits."""

from __future__ import annotations

import os
import signal
import time

import aiohttp
import psutil

from supervisors.adapters import ADAPTERS
from supervisors.process import LIVENESS_FAILURES, LIVENESS_INTERVAL, LIVENESS_TIMEOUT, Replica
from supervisors.states import EngineState
from tests.unit.supervisors.conftest import Recorder, fake

S = EngineState


async def test_a_sigstopped_engine_is_killed_and_restarted(
    session: aiohttp.ClientSession,
) -> None:
    rec = Recorder()
    replica = Replica(fake(), 0, ADAPTERS["llama-server"], session, rec, grace=2)
    replica.start()
    await rec.wait_for(S.READY)
    hung = replica.pid
    assert hung is not None
    os.kill(hung, signal.SIGSTOP)  # alive, but answers nothing
    t0 = time.monotonic()
    detect = LIVENESS_FAILURES * (LIVENESS_INTERVAL + LIVENESS_TIMEOUT) + 5
    await rec.wait_for(S.FAILED, within=detect)
    assert "stopped answering its health check" in replica.error
    await rec.wait_for(S.READY, count=2, within=20)
    print(f"SIGSTOP to serving again: {time.monotonic() - t0:.1f} s")
    assert replica.pid != hung
    assert not psutil.pid_exists(hung)  # killed and reaped, not left stopped
    async with session.get(replica.base_url + "/v1/models", headers=replica.headers) as resp:
        assert resp.status == 200
    assert replica.restarts == 1
    await replica.stop()


async def test_output_is_kept_across_restarts_and_logged_to_files(
    session: aiohttp.ClientSession, tmp_path: object
) -> None:
    from pathlib import Path

    from supervisors.logs import LogFiles

    folder = Path(str(tmp_path)) / "logs"
    logs = LogFiles(folder)
    rec = Recorder()
    replica = Replica(fake("--exit-at-start", "3"), 0, ADAPTERS["llama-server"], session, rec,
                      logs=logs)
    replica.start()
    await rec.wait_for(S.FAILED, count=2, within=20)
    await replica.stop()
    logs.close()
    text = (folder / "fake#0.log").read_text()
    assert text.count("cannot load model (as asked)") >= 2  # both starts, in one file
    assert text.count("--- dx: starting fake#0") >= 2
    assert any("cannot load model" in line for line in replica.output(10))
