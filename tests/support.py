"""Helpers the tests import: the repository root and pydicom's bundled files."""

from __future__ import annotations

from pathlib import Path

from pydicom.data import get_testdata_file

REPO_ROOT = Path(__file__).resolve().parent.parent


def bundled_file(name: str) -> Path:
    """A file bundled with pydicom (no download)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom test file {name} is not bundled"
    return Path(path)
