"""``triage evaluate --labels CSV --set-operating-point``: the site's own operating point per detector.

Chosen on the site's labelled studies (:func:`choose_operating_points`) and
written into the site's settings file under ``[detectors.operating_points]``
(:func:`write_operating_points`), from where
:func:`detectors.registry.load_detectors` applies it. Never into the shipped
cards: the model and its identity stay as shipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detectors import registry
from detectors.calibration import operating_point_in_gap
from detectors.evaluation import StudyOutcome
from detectors.metrics import Confusion, confusion_at
from triage.errors import ConfigError
from triage.research.evaluate import write_atomic

logger = logging.getLogger(__name__)

MIN_POSITIVES = 5  # fewest positive studies from which an operating point is chosen


@dataclass(frozen=True)
class OperatingPointChoice:
    """A detector's operating point chosen on the local set, or why none was.

    ``previous`` is the operating point the studies were scored with (the
    card's, or the site's earlier one). ``at_new`` counts the local studies
    at ``value``; ``refused`` is set (and ``value`` is None) when there are too
    few positives to choose from.
    """

    detector: str
    previous: float | None
    value: float | None
    n_positive: int
    n_negative: int
    at_new: Confusion | None = None
    refused: str | None = None


def choose_operating_points(
    outcomes: Iterable[StudyOutcome], target_sensitivity: float = 0.95, min_positives: int = MIN_POSITIVES
) -> list[OperatingPointChoice]:
    """Per detector, the operating point that keeps ``target_sensitivity`` on these outcomes.

    The point is :func:`detectors.calibration.operating_point_in_gap`: the
    largest calibrated probability keeping the target, lowered to halfway
    (in logit space) to the highest negative below it, as the shipped cards'
    points are chosen on their validation sets.
    """
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f'Argument "target_sensitivity" must be in (0, 1], got {target_sensitivity!r}')
    groups: dict[str, list[StudyOutcome]] = {}
    for o in outcomes:
        groups.setdefault(o.kind, []).append(o)
    choices = []
    for name in sorted(groups):
        group = groups[name]
        labels = np.array([o.label for o in group], dtype=bool)
        scores = np.array([o.probability for o in group], dtype=np.float64)
        n_pos, n_neg = int(labels.sum()), int((~labels).sum())
        points = {o.operating_point for o in group}
        previous = points.pop() if len(points) == 1 else None
        if n_pos < min_positives:
            why = f"{n_pos} positive {'study' if n_pos == 1 else 'studies'}, at least {min_positives} needed"
            choices.append(OperatingPointChoice(name, previous, None, n_pos, n_neg, refused=why))
            continue
        # Rounded down for the file: rounding up could cost a positive its flag.
        value = math.floor(operating_point_in_gap(labels, scores, target_sensitivity) * 1e6) / 1e6
        choices.append(OperatingPointChoice(name, previous, value, n_pos, n_neg, confusion_at(labels, scores, value)))
    return choices


def site_config_path(explicit: str | Path | None, environ: Mapping[str, str]) -> Path:
    """The site's settings file: ``--config``, else ``$TRIAGE_CONFIG`` (either created if absent), else
    the file :func:`triage.config.resolve_config_path` finds, else ./triage.toml (created).

    The same file :func:`triage.config.load_settings` reads, so the point
    written is the point applied (a new ./triage.toml beside an existing
    ``/etc/triage/triage.toml`` would hide all of it: files are not merged).
    Never a shipped card: refused with :class:`ConfigError`.
    """
    from triage.config import DEFAULT_CONFIG_NAME, resolve_config_path

    named = explicit or environ.get("TRIAGE_CONFIG")
    path = Path(named) if named else resolve_config_path(None, environ) or Path(DEFAULT_CONFIG_NAME)
    if path.resolve().is_relative_to(registry.MODELS_DIR.resolve()):
        raise ConfigError(
            f"config: {path} is inside the shipped models ({registry.MODELS_DIR}); a site's operating points go into its own settings file"
        )
    return path


def write_operating_points(path: Path, points: Mapping[str, float]) -> dict[str, float | None]:
    """Set ``[detectors.operating_points]`` entries in the TOML file ``path``, keeping the rest of it.

    Comments, order and formatting of everything else survive (tomlkit
    round-trips the file). The file is created when absent and replaced
    atomically.

    Returns
    -------
    dict of str -> float or None
        Each detector's previous value in the file (None when it had none).
    """
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8")) if path.exists() else tomlkit.document()
    except (OSError, UnicodeDecodeError, TOMLKitError) as exc:
        raise ConfigError(f"config: {path} cannot be read as TOML: {exc}") from None
    section = doc.get("detectors")
    if section is None:
        section = doc["detectors"] = tomlkit.table()
    if not isinstance(section, dict):
        raise ConfigError(f"config: {path}: detectors is not a table")
    table = section.get("operating_points")
    if table is None:
        table = section["operating_points"] = tomlkit.table()
    if not isinstance(table, dict):
        raise ConfigError(f"config: {path}: detectors.operating_points is not a table")
    previous: dict[str, float | None] = {}
    for name, value in points.items():
        old = table.get(name)
        previous[name] = float(old) if isinstance(old, (int, float)) else None
        table[name] = float(value)
    write_atomic(path, tomlkit.dumps(doc))
    logger.info("wrote operating points %s to %s", dict(points), path)
    return previous


def format_choices(choices: Sequence[OperatingPointChoice], path: Path, previous: Mapping[str, float | None], target: float) -> list[str]:
    """What ``--set-operating-point`` wrote (old and new value, local figures at the new one) and refused."""
    lines = [f"operating points (target sensitivity {target:g}) in {path}:"]
    for c in choices:
        if c.value is None:
            lines.append(f"  {c.detector}: not set: {c.refused}")
            continue
        in_file = previous.get(c.detector)
        old = f"{in_file:.4g} (site)" if in_file is not None else (f"{c.previous:.4g} (card)" if c.previous is not None else "varied")
        at = c.at_new
        figures = ""
        if at is not None and at.sensitivity is not None:
            lo, hi = at.sensitivity_ci or (0.0, 0.0)
            figures = f"; local sensitivity {at.sensitivity:.3f} [{lo:.3f}, {hi:.3f}]"
            if at.specificity is not None and at.specificity_ci:
                figures += f", specificity {at.specificity:.3f} [{at.specificity_ci[0]:.3f}, {at.specificity_ci[1]:.3f}]"
        lines.append(f"  {c.detector}: {old} -> {c.value:.4g} ({c.n_positive} positive, {c.n_negative} negative){figures}")
    return lines
