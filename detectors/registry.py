"""Which detector scores which series: the shipped ones, and a site's own by config.

The shipped cards live in ``detectors/models/``. An external card (TorchScript
plus TOML, see :mod:`detectors.spec`) for the same finding kind and image
family replaces the shipped detector: a site that plugs in its own bleed
model wants it used, not averaged with ours. Each replacement is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from detectors.base import Detector, Family
from detectors.heatmap import load_detector
from detectors.routing import FindingKind

logger = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).parent / "models"


def shipped_cards() -> list[Path]:
    """The cards of the detectors that ship with the package, by name."""
    return sorted(MODELS_DIR.glob("*.toml"))


@dataclass
class DetectorSet:
    """Detectors keyed by (finding kind, image family)."""

    by_route: dict[tuple[FindingKind, Family], Detector] = field(default_factory=dict)

    def for_route(self, kind: FindingKind | str, family: Family | str) -> Detector | None:
        return self.by_route.get((FindingKind(kind), Family(family)))

    def __iter__(self) -> Iterator[Detector]:
        return iter(sorted(self.by_route.values(), key=lambda d: d.name))

    def __len__(self) -> int:
        return len(self.by_route)


def load_detectors(external: Iterable[str | Path] = (), device: str = "cpu", shipped: bool = True) -> DetectorSet:
    """Load the shipped detectors (unless ``shipped=False``), then the external cards over them.

    Raises :class:`detectors.spec.CardError` naming the card for anything wrong
    with a card or its weights.
    """
    out = DetectorSet()
    cards = [(p, False) for p in (shipped_cards() if shipped else [])] + [(Path(p), True) for p in external]
    for card, is_external in cards:
        detector = load_detector(card, device=device)
        key = (detector.kind, detector.family)
        if key in out.by_route:
            logger.info("detector %s (%s) replaces %s for %s %s", detector.name, card,
                        out.by_route[key].name, key[0].value, key[1].value)  # fmt: skip
        out.by_route[key] = detector
    return out
