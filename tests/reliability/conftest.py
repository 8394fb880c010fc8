"""The reliability suite: every test here carries the ``reliability`` marker. Its helpers
(``assert_refused``, ``hub_cache``, ``canary_library``) are in ``tests/helpers``."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/reliability/" in str(item.fspath):
            item.add_marker(pytest.mark.reliability)
