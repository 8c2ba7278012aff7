from collections.abc import Iterator
from typing import Any

import pytest

from tests import prefect_helpers


@pytest.fixture(scope="session")
def prefect_server():
    """A real temporary Prefect server (the test harness) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def prefect_stack(tmp_path) -> Iterator[dict[str, Any]]:
    """A real local Prefect server (server.sh, own PREFECT_HOME) and a worker (worker.sh)."""
    yield from prefect_helpers.prefect_stack(tmp_path)
