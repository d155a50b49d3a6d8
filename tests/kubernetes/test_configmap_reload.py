"""A ConfigMap edit reaches a running DX the way the kubelet delivers it: the manifests mount the
config as a directory (never subPath) because only then does the kubelet update it, by its
atomic writer: the files in a new hidden timestamped folder, a `..data_tmp` link to it renamed
over `..data`, the visible `dx.yaml` a link through `..data` (k8s.io/kubernetes
pkg/volume/util/atomic_writer.go). A real `dx serve` (fake engine) started on such a folder
picks up the swap and serves the new model, the same process, no restart. About 10 s each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from tests.conftest import DxProcess, fake_model, free_port


class ConfigMapVolume:
    """A folder laid out and updated as the kubelet does a ConfigMap volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.generation = 0

    def write(self, files: dict[str, str]) -> None:
        self.generation += 1
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + f"{os.getpid()}{self.generation}"
        (self.root / stamp).mkdir()
        for name, text in files.items():
            (self.root / stamp / name).write_text(text)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(stamp)
        tmp.rename(self.root / "..data")  # the atomic switch
        for name in files:
            visible = self.root / name
            if not visible.is_symlink():
                visible.symlink_to(Path("..data") / name)
        if old is not None:
            for f in (self.root / old).iterdir():
                f.unlink()
            (self.root / old).rmdir()


def config(port: int, state: Path, models: dict[str, object]) -> str:
    return yaml.safe_dump(
        {
            "server": {"host": "127.0.0.1", "port": port, "state_dir": str(state)},
            "auth": {"enabled": False},
            "models": models,
        }
    )


def served(url: str) -> set[str]:
    """The models DX lists; none while it does not listen yet."""
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as r:
            return {m["id"] for m in json.load(r)["data"]}
    except OSError:
        return set()


def serve(tmp_path: Path, volume: ConfigMapVolume) -> DxProcess:
    """`dx serve --config VOLUME/dx.yaml`, as the pods run it; its output kept."""
    port = yaml.safe_load((volume.root / "dx.yaml").read_text())["server"]["port"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dxproxy", "serve", "--config", str(volume.root / "dx.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    dx = DxProcess(proc, f"http://127.0.0.1:{port}", "", tmp_path / "state")
    threading.Thread(target=dx.read_output, daemon=True).start()
    return dx


def wait_for_model(dx: DxProcess, name: str, within: float) -> None:
    deadline = time.monotonic() + within
    while name not in served(dx.url):
        assert dx.proc.poll() is None, "dx exited:\n" + "\n".join(dx.lines)
        assert time.monotonic() < deadline, f"{name} never served:\n" + "\n".join(
            line for line in dx.lines if "dx.access" not in line
        )
        time.sleep(0.2)


def test_dx_reloads_a_configmap_swap(tmp_path: Path) -> None:
    port = free_port()
    volume = ConfigMapVolume(tmp_path / "etc-dx")
    volume.write({"dx.yaml": config(port, tmp_path / "state", {"first": fake_model()})})
    dx = serve(tmp_path, volume)
    try:
        assert dx.ready.wait(60) and dx.proc.poll() is None, "\n".join(dx.lines)
        # A swap before the watch is armed is applied too (the test below); this one tests
        # the watch itself, so it comes once the watch surely runs.
        time.sleep(2)
        pid = dx.proc.pid
        models = {"first": fake_model(), "second": fake_model()}
        volume.write({"dx.yaml": config(port, tmp_path / "state", models)})
        wait_for_model(dx, "second", within=20)
        assert dx.proc.poll() is None and dx.proc.pid == pid  # reloaded live, not restarted
        # The visible name is still a link through ..data, as a pod sees it.
        assert os.readlink(volume.root / "dx.yaml") == "..data/dx.yaml"
        assert any("config" in line and "applied" in line for line in dx.lines)
    finally:
        dx.stop()


def test_a_swap_during_start_is_not_lost(tmp_path: Path) -> None:
    port = free_port()
    volume = ConfigMapVolume(tmp_path / "etc-dx")
    slow = fake_model(engine_args=["--startup-delay", "3"])
    volume.write({"dx.yaml": config(port, tmp_path / "state", {"first": slow})})
    dx = serve(tmp_path, volume)
    try:
        wait_for_model(dx, "first", within=60)  # listening; the engine still starting
        assert not dx.ready.is_set()
        models = {"first": slow, "second": fake_model()}
        volume.write({"dx.yaml": config(port, tmp_path / "state", models)})
        assert dx.ready.wait(60)
        wait_for_model(dx, "second", within=8)
    finally:
        dx.stop()
