"""Fixtures for the admission tests."""

from __future__ import annotations

import pytest

from tests.shared.admission.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
