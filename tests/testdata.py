"""Shared test helpers (paths to the repo and to the real third-party inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_DUMP = REPO / "demo" / "wiki" / "demo-pages-articles.xml"


def shared_data(*parts: str) -> Path:
    """A path under the real test data folder, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not available: {path} is absent")
    return path
