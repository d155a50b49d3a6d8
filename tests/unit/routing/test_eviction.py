"""The loader's arithmetic on its own: what fits, and which models are unloaded to make room."""

from __future__ import annotations

from dxproxy.routing.eviction import Loaded, Shortfall, shortfall, victims

GiB = 2**30


def test_a_model_that_fits_needs_nothing() -> None:
    assert shortfall(need=2 * GiB, used=5 * GiB, budget=8 * GiB, loaded=3, max_loaded=0) is None
    assert shortfall(need=2 * GiB, used=6 * GiB, budget=8 * GiB, loaded=3, max_loaded=4) is None


def test_over_the_budget_says_by_how_much() -> None:
    short = shortfall(need=3 * GiB, used=6 * GiB, budget=8 * GiB, loaded=1, max_loaded=0)
    assert short == Shortfall(too_many=False, missing=1 * GiB)


def test_the_cap_on_loaded_models() -> None:
    short = shortfall(need=1, used=0, budget=8 * GiB, loaded=2, max_loaded=2)
    assert short == Shortfall(too_many=True, missing=0)


def test_an_unknown_gpu_budget_is_unlimited() -> None:
    assert shortfall(need=10**15, used=10**15, budget=float("inf"), loaded=9, max_loaded=0) is None


def test_least_recently_used_first_and_only_as_many_as_needed() -> None:
    pool = [
        Loaded("new", 2 * GiB, on_demand=True, last_used=30.0),
        Loaded("old", 1 * GiB, on_demand=True, last_used=10.0),
        Loaded("mid", 2 * GiB, on_demand=True, last_used=20.0),
    ]
    chosen = victims("target", pool, Shortfall(too_many=False, missing=2 * GiB))
    assert [m.name for m in chosen] == ["old", "mid"]  # 1 GiB was not enough, 3 GiB is
    one = victims("target", pool, Shortfall(too_many=False, missing=1 * GiB))
    assert [m.name for m in one] == ["old"]


def test_models_loaded_at_start_and_the_target_are_never_chosen() -> None:
    pool = [
        Loaded("pinned", 4 * GiB, on_demand=False, last_used=0.0),
        Loaded("target", 4 * GiB, on_demand=True, last_used=0.0),
        Loaded("idle", 1 * GiB, on_demand=True, last_used=5.0),
    ]
    chosen = victims("target", pool, Shortfall(too_many=False, missing=1 * GiB))
    assert [m.name for m in chosen] == ["idle"]


def test_nothing_is_unloaded_when_all_of_it_would_not_be_enough() -> None:
    pool = [Loaded("a", 1 * GiB, True, 1.0), Loaded("b", 1 * GiB, True, 2.0)]
    assert victims("target", pool, Shortfall(too_many=False, missing=3 * GiB)) == []


def test_too_many_loaded_unloads_exactly_one() -> None:
    pool = [Loaded("a", 1, True, 2.0), Loaded("b", 1, True, 1.0), Loaded("c", 1, False, 0.0)]
    chosen = victims("target", pool, Shortfall(too_many=True, missing=0))
    assert [m.name for m in chosen] == ["b"]
    only_pinned = [Loaded("c", 1, False, 0.0)]
    assert victims("target", only_pinned, Shortfall(too_many=True, missing=0)) == []
