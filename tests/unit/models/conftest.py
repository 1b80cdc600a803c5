from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.services import missing

_CANDIDATES = [
    Path(os.environ.get("URBAN_NAB_DIR", "/nonexistent")),
    Path(__file__).resolve().parents[4] / "shared" / "benchmarks" / "nab",  # ../shared beside the clone
    Path("/work/shared/benchmarks/nab"),
]
NAB_ROOT = next((p for p in _CANDIDATES if (p / "labels" / "combined_windows.json").is_file()), _CANDIDATES[1])


@pytest.fixture(scope="session")
def nab_root() -> Path:
    if not (NAB_ROOT / "labels" / "combined_windows.json").is_file():
        missing(f"NAB data (set URBAN_NAB_DIR; looked in {[str(p) for p in _CANDIDATES]})")
    return NAB_ROOT
