"""Which detector scores which series: the shipped ones, and a site's own by config.

The shipped cards live in ``detectors/models/``. An external card (TorchScript
plus TOML, see :mod:`detectors.spec`) for the same finding kind and image
family replaces the shipped detector: a site that plugs in its own bleed
model wants it used, not averaged with ours. Each replacement is logged.

A site may also set its own operating point per detector (chosen on its own
labelled studies with ``triage evaluate --set-operating-point``): it replaces
the card's threshold in memory only; the card and the weights, and so the
model identity, stay as shipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from detectors.base import Detector, Family
from detectors.heatmap import HeatmapDetector, load_detector
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


class OperatingPointError(ValueError):
    """A site operating point names no loaded detector, or is not a probability.

    ``name`` is the detector name as the site wrote it, so callers can name
    the configuration key.
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def load_detectors(
    external: Iterable[str | Path] = (), device: str = "cpu", shipped: bool = True, operating_points: Mapping[str, float] | None = None
) -> DetectorSet:
    """Load the shipped detectors (unless ``shipped=False``), then the external cards over them.

    Parameters
    ----------
    external : iterable of path
        External cards; each replaces the detector of its finding kind and
        image family.
    device : str
        Where the modules run.
    shipped : bool
        Whether to load the package's own cards first.
    operating_points : mapping of detector name -> probability, optional
        The site's operating points; each replaces the card's threshold of the
        loaded detector of that name (see :func:`apply_operating_points`).

    Raises
    ------
    detectors.spec.CardError
        Anything wrong with a card or its weights; the message names the card.
    OperatingPointError
        An operating point names no loaded detector or is not in [0, 1].
    """
    out = DetectorSet()
    cards = [(p, False) for p in (shipped_cards() if shipped else [])] + [(Path(p), True) for p in external]
    for card, _is_external in cards:
        detector = load_detector(card, device=device)
        key = (detector.kind, detector.family)
        if key in out.by_route:
            logger.info("detector %s (%s) replaces %s for %s %s", detector.name, card, out.by_route[key].name, key[0].value, key[1].value)
        out.by_route[key] = detector
    if operating_points:
        apply_operating_points(out, operating_points)
    return out


def apply_operating_points(detectors: DetectorSet, operating_points: Mapping[str, float]) -> None:
    """Replace loaded detectors' operating points with the site's, in place, logging each.

    Only the threshold changes (a new spec via :func:`dataclasses.replace`):
    the weights, calibration and model identity (its SHA-256) stay those of
    the card, so every Finding still names the model that produced it and
    carries the threshold it was judged by.

    Raises
    ------
    OperatingPointError
        A name matches no loaded detector (a typo would otherwise leave the
        shipped point in force silently), or a value is not in [0, 1].
    """
    by_name = {d.name: d for d in detectors}
    for name, value in operating_points.items():
        detector = by_name.get(name)
        if detector is None:
            loaded = ", ".join(sorted(by_name)) or "none"
            raise OperatingPointError(name, f"no loaded detector is named {name!r} (loaded: {loaded})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise OperatingPointError(name, f"must be a probability in [0, 1], got {value!r}")
        if not isinstance(detector, HeatmapDetector):  # no card (a test double): no threshold to replace
            raise OperatingPointError(name, f"detector {name!r} has no card whose operating point could be replaced")
        logger.info("detector %s: site operating point %.4g replaces the card's %.4g", name, value, detector.spec.operating_point)
        detector.spec = replace(detector.spec, operating_point=float(value))
