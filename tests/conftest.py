"""Shared test setup."""

import chex
import pytest


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
    """``chex.assert_max_traces`` counts per function code object across the whole session;
    start each test from zero so parametrised tests count their own traces only."""
    chex.clear_trace_counter()
    yield
