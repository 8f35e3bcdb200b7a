"""End-to-end fixtures for the server: real model packages, and the real server on a free port.

The helpers (``ServerProcess``, ``build_package``) live in tests/unit/conftest_serve.py, shared
with the unit tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.unit.conftest_serve import SLOW_SOURCE, ServerProcess, build_package


@pytest.fixture(scope="session")
def digits_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_package(tmp_path_factory.mktemp("pkg") / "digits")


@pytest.fixture(scope="session")
def slow_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Its forward pass sleeps 0.5 s: requests stay in flight long enough to signal the server."""
    return build_package(tmp_path_factory.mktemp("pkg") / "slow", name="slow", source=SLOW_SOURCE,
                         params={"features": 64, "classes": 10, "sleep": 0.5}, train_steps=0,
                         serve={"max_batch_size": 4, "max_wait_ms": 1.0})


@pytest.fixture(scope="module")
def digits_server(digits_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(digits_package, tmp_path_factory.mktemp("server")).ready()
    yield server
    server.stop()
