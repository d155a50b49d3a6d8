"""The leader of a Ray group (`group.launcher: ray`): one engine process for DX to run.

    python ray_head.py --ray RAY --port P --size N [--node-ip-address IP] -- ENGINE ARGV...

Starts `ray start --head --block`, waits until N nodes are alive in the cluster (the workers
run `ray start --address LEADER:P --block` under their own DX), then runs the engine (vLLM with
`--distributed-executor-backend ray`) and waits. When either the head or the engine ends, the
other is stopped and this exits with its code, so DX sees one engine die and restarts the
group. Everything stays in DX's process group for the engine: DX's kill reaches all of it.
Run with DX's interpreter; Ray itself is asked through the engine's (`ENGINE ARGV[0]`).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from types import FrameType

POLL = 2.0  # seconds between looks at the cluster's nodes
# Alive nodes in the cluster, asked through the engine's own Ray (the same version as the head).
COUNT = (
    "import ray; ray.init(address='auto', logging_level='ERROR'); "
    "print(sum(1 for n in ray.nodes() if n['Alive']))"
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ray", required=True)
    parser.add_argument("--port", required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--node-ip-address")
    parser.add_argument("engine", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    engine = args.engine[1:] if args.engine[:1] == ["--"] else args.engine
    head_argv = [args.ray, "start", "--head", "--block", "--port", args.port,
                 "--disable-usage-stats", "--include-dashboard=false"]  # fmt: skip
    if args.node_ip_address:
        head_argv += ["--node-ip-address", args.node_ip_address]
    children: list[subprocess.Popen[bytes]] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    print(f"dx ray head: {' '.join(head_argv)}", flush=True)
    head = subprocess.Popen(head_argv)
    children.append(head)
    while True:
        if head.poll() is not None:
            print(f"dx ray head: ray start --head exited with code {head.returncode}", flush=True)
            return head.returncode or 1
        probe = subprocess.run([engine[0], "-c", COUNT], capture_output=True, text=True)
        lines = probe.stdout.split()
        alive = int(lines[-1]) if probe.returncode == 0 and lines and lines[-1].isdigit() else 0
        print(f"dx ray head: {alive} of {args.size} node(s) in the cluster", flush=True)
        if alive >= args.size:
            break
        time.sleep(POLL)
    print(f"dx ray head: starting the engine: {' '.join(engine)}", flush=True)
    proc = subprocess.Popen(engine)
    children.append(proc)
    while head.poll() is None and proc.poll() is None:
        time.sleep(0.5)
    ended, other = (head, proc) if head.returncode is not None else (proc, head)
    name = "ray head" if ended is head else "engine"
    print(f"dx ray head: the {name} exited with code {ended.returncode}", flush=True)
    other.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        other.wait(10)
    return ended.returncode or 1


if __name__ == "__main__":
    sys.exit(main())
