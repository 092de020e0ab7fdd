"""Fixtures of the batch tests (``map``, ``amap``, helper processes); the shared ones are in ``tests/conftest.py``."""

from __future__ import annotations

import pytest

import ipyllm
from ipyllm.testing import StubServer


@pytest.fixture
def fast(live: StubServer, clean_config: ipyllm.LLMConfig) -> StubServer:
    """Short retry waits (the async path really sleeps them)."""
    clean_config.update(retry_min_wait=0.05, retry_max_wait=3)
    return live
