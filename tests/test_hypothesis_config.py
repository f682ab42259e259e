"""How the suite runs Hypothesis: a strategy that uses the ``random`` module fails the suite
(pyproject.toml's filterwarnings), and a background thread that draws from it is not blamed on
a strategy (conftest.py)."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisDeprecationWarning


def test_a_strategy_that_uses_the_random_module_fails_the_suite() -> None:
    @settings(max_examples=1, database=None)
    @given(st.integers().map(lambda n: n + random.random()))
    def draws_from_random(value: float) -> None:
        assert value == value

    with pytest.raises(HypothesisDeprecationWarning, match="Do not use the `random` module"):
        draws_from_random()


def _while_another_thread_draws(value: int) -> int:
    """What the Prefect harness's threads do now and then: draw from ``random`` meanwhile."""
    thread = threading.Thread(target=random.getrandbits, args=(32,))
    thread.start()
    thread.join()
    return value


@settings(max_examples=10, deadline=None)
@given(st.integers().map(_while_another_thread_draws))
def test_a_background_thread_drawing_from_random_is_not_blamed_on_the_strategy(value: int):
    assert isinstance(value, int)
