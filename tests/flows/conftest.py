import pytest


@pytest.fixture(scope="session")
def prefect_server():
    """A real temporary Prefect server (the test harness) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
