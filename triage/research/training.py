"""``triage train KIND``: train every shipped detector of a finding kind, with progress and a summary."""

from __future__ import annotations

from pathlib import Path

from detectors.routing import FindingKind
from detectors.tasks import TASKS_BY_KIND
from detectors.train import TrainConfig, TrainResult, train
from triage.errors import TriageError
from triage.progress import stage_progress


def train_kind(kind: FindingKind | str, cfg: TrainConfig, out_dir: Path, command: str, show_progress: bool = True) -> list[TrainResult]:
    """Train, calibrate and write each task of ``kind`` (e.g. nodule: CT and radiograph) into ``out_dir``.

    Each task gets its own set of progress bars on stderr, one per stage
    ("phantoms", "training", "validation"), prefixed with the task's name.

    Raises
    ------
    triage.errors.TriageError
        Training could not finish, e.g. the validation phantoms were all of
        one class (nothing to calibrate on).
    """
    kind = FindingKind(kind)
    results = []
    for name in TASKS_BY_KIND[kind]:
        with stage_progress(f"{name} ", enabled=show_progress) as update:
            try:
                results.append(train(name, cfg, out_dir, update, command=command))
            except ValueError as exc:
                # Few validation phantoms can all fall in one class: calibration then
                # has nothing to fit. The user can fix that; it is no crash.
                raise TriageError(f"training {name} failed: {exc} (more --validation phantoms?)") from None
    return results


def format_result(result: TrainResult) -> str:
    """Where the weights and cards went, the operating point and the validation metrics."""
    spec = result.spec
    card = result.card_path
    m = result.metrics
    return "\n".join(
        [
            f"{spec.name} {spec.version}: weights {card.parent / spec.weights} (sha256 {spec.sha256[:12]})",
            f"  card {card}, model card {card.with_suffix('.md')}",
            f"  validation: {m.get('validation_studies')} studies ({m.get('validation_positive')} positive), "
            f"AUC {m.get('validation_auc')}, sensitivity {m.get('validation_sensitivity')}, "
            f"specificity {m.get('validation_specificity')} at operating point {spec.operating_point:.4f}",
            f"  training: {m.get('training_examples')} examples, {m.get('training_steps')} steps, "
            f"final loss {m.get('final_loss')}, {m.get('minutes')} min",
        ]
    )
