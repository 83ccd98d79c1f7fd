"""Suite-wide test ordering."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the long (``slow``) tests first, so that with several workers (scripts/test.sh) none of them starts
    last while the other workers sit idle; the order within each group is kept."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
