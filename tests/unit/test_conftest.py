"""The test process's own guard (tests/conftest.py) against CPython < 3.11.8's shared AST depth
counter: without it, this test raises SystemError on the machine's Python 3.11.7 (16 of 20
parses, measured), as pytest's report of a failing test once did in CI."""

from __future__ import annotations

import ast
import gc
import traceback
from pathlib import Path


class ParsesWhenCollected:
    def __del__(self) -> None:
        ast.parse("x = f(a)[b] + 1")  # what formatting a traceback does on Python 3.11


def test_a_parse_in_a_finalizer_leaves_the_parse_it_interrupted_whole() -> None:
    source = Path(traceback.__file__).read_text()
    assert gc.isenabled()
    for _ in range(20):
        cycles = [ParsesWhenCollected() for _ in range(300)]
        for c in cycles:
            c.self = c  # type: ignore[attr-defined]  # only the collector frees them
        del cycles
        assert isinstance(ast.parse(source), ast.Module)
    assert gc.isenabled()  # the guard turns collection back on
