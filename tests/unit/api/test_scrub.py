"""Server paths out of what clients see."""

from __future__ import annotations

from dxproxy.api.scrub import scrub_paths


def test_scrub_paths() -> None:
    trace = (
        'Traceback:\n  File "/usr/lib/python3/site-packages/llama_cpp/server/app.py", '
        "line 3\nValueError: cannot open /home/alice/models/qwen.gguf (see /v1/models, "
        "http://example.com/a/b, and/or C:\\Users\\bob\\m.gguf, ~/x/y.gguf)"
    )
    clean = scrub_paths(trace)
    for leak in ("/usr/lib", "/home/alice", "Users\\bob", "~/x"):
        assert leak not in clean
    for kept in (
        "…/app.py",
        "…/qwen.gguf",
        "/v1/models",
        "http://example.com/a/b",
        "and/or",
        "…/m.gguf",
        "…/y.gguf",
        "line 3",
    ):
        assert kept in clean
