"""How the suite runs Hypothesis: a strategy that uses the ``random`` module fails the suite
(pyproject.toml), and a background thread that draws from it is not blamed on a strategy
(conftest.py)."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT

USES_RANDOM = """
import random
from hypothesis import given, strategies as st

@given(st.integers().map(lambda n: n + random.random()))
def test_draws_from_random(value):
    assert value == value
"""


def test_a_strategy_that_uses_the_random_module_fails_the_suite(tmp_path: Path) -> None:
    test = tmp_path / "test_uses_random.py"
    test.write_text(USES_RANDOM)
    config = ["-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *config, str(test)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout
    assert "HypothesisDeprecationWarning: Do not use the `random` module" in done.stdout


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
