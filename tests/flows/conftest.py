"""One Prefect test server for the whole session (starting one costs ~36 s on 2 cores)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lafs_core.env import configure_offline_env

configure_offline_env()


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A temporary Prefect API (sqlite in a temp dir); yields its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())
