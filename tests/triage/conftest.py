"""Fixtures shared by the triage tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def no_shipped_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty models folder in place of the package's: tests then load only the cards they write."""
    import detectors.registry

    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setattr(detectors.registry, "MODELS_DIR", models)
    return models
