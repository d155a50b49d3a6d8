"""dxproxy/api/ollama/pull.py's `Job`: every watcher reads a pull's lines from its first, a
late one included, and each stops when the pull ends."""

from __future__ import annotations

import asyncio
from typing import Any

from dxproxy.api.ollama.pull import Job


async def collect(job: Job) -> list[dict[str, Any]]:
    return [line async for line in job.watch()]


async def test_watchers_early_and_late_see_every_line() -> None:
    job = Job()
    early = asyncio.create_task(collect(job))
    await asyncio.sleep(0)
    job.add({"status": "pulling manifest"})
    for done in (0, 50, 100):
        job.add({"status": "pulling abc", "digest": "sha256:abc", "total": 100, "completed": done})
        await asyncio.sleep(0)
    late = asyncio.create_task(collect(job))
    await asyncio.sleep(0)
    job.add({"status": "success"})
    job.finish()
    lines = await asyncio.wait_for(early, 1)
    assert [x["status"] for x in lines] == ["pulling manifest", *["pulling abc"] * 3, "success"]
    assert await asyncio.wait_for(late, 1) == lines
    assert await asyncio.wait_for(collect(job), 1) == lines  # after the end: the whole story
