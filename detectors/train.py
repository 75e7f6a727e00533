"""Train a shipped detector on freshly generated phantoms, calibrate it, and write weights + card.

``triage train bleed`` (or ``python -m detectors.train bleed-ct`` where only
numpy and torch are installed) runs, for each task of the kind:

1. Examples: ``phantoms`` training phantoms (seeded, generated in parallel
   worker processes), each turned into network items by the detector's own
   preprocessing; every slice with a lesion plus as many lesion-free slices
   (at least three), cropped to the task's training size around the lesion
   or at random. Stored as uint8 to keep a few thousand items in memory.
2. Training: AdamW with a cosine schedule, random flips and contrast jitter,
   loss = heatmap BCE (lesion cells weighted up) + BCE of each item's strongest
   cell against "has a lesion" (the study score is the strongest evidence).
3. Calibration: the full detector on ``validation`` held-out phantoms; Platt
   scaling of the study logit, and the operating point (the largest calibrated
   probability keeping sensitivity >= ``target_sensitivity`` on that set).
4. Output: ``<name>.pt`` (fp16 state dict), ``<name>.toml`` (card with the
   SHA-256, calibration, operating point, validation metrics, the exact
   command) and ``<name>.md`` (the model card for people).

Same seed, arguments, device and torch version -> the same weights.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from detectors.base import Family
from detectors.calibration import fit_platt, operating_point_in_gap
from detectors.heatmap import build_module
from detectors.metrics import auc, sensitivity_specificity
from detectors.model_card import render_card
from detectors.postprocess import platt, study_logit, valid_cells
from detectors.preprocess import map_mask, prepare
from detectors.spec import DetectorSpec, sha256_of
from detectors.tasks import SEED_BASES, TASKS, Task

if TYPE_CHECKING:
    from multiprocessing.pool import Pool

logger = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).parent / "models"
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    seed: int = 0
    device: str = "cpu"
    phantoms: int = 300  # training phantoms
    validation: int = 200  # validation phantoms
    batch_size: int = 16
    lr: float = 2e-3
    workers: int = 0  # phantom generation processes; 0 = one per core
    target_sensitivity: float = 0.97  # on validation; the card promises >= 0.95
    max_positive_slices: int = 12  # per phantom
    strongest_weight: float = 0.5  # weight of the strongest-cell loss term (the task's, via train())


@dataclass
class Examples:
    items: np.ndarray  # (n, channels, h, w) uint8 (see _to_u8)
    targets: np.ndarray  # (n, h / stride, w / stride) float16 lesion fraction per cell
    family: Family

    def batch(self, index: np.ndarray, rng: np.random.Generator, augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        x = _from_u8(self.items[index], self.family)
        y = self.targets[index].astype(np.float32)
        if augment:
            flip_lr = rng.random(len(index)) < 0.5
            x[flip_lr], y[flip_lr] = x[flip_lr][..., ::-1], y[flip_lr][..., ::-1]
            if self.family is Family.RADIOGRAPH:  # a long bone or chest may be shot either way up
                flip_ud = rng.random(len(index)) < 0.5
                x[flip_ud], y[flip_ud] = x[flip_ud][..., ::-1, :], y[flip_ud][..., ::-1, :]
            gain = rng.uniform(0.9, 1.1, (len(index), 1, 1, 1)).astype(np.float32)
            bias = rng.uniform(-0.04, 0.04, (len(index), 1, 1, 1)).astype(np.float32)
            x = x * gain + bias
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


def _to_u8(x: np.ndarray, family: Family) -> np.ndarray:
    # CT windows are in [0, 1]; normalised radiographs in [-0.5, 1.5].
    lo, span = (0.0, 1.0) if family is Family.CT else (-0.5, 2.0)
    return np.rint(np.clip((x - lo) / span, 0, 1) * 255).astype(np.uint8)


def _from_u8(x: np.ndarray, family: Family) -> np.ndarray:
    lo, span = (0.0, 1.0) if family is Family.CT else (-0.5, 2.0)
    return x.astype(np.float32) * np.float32(span / 255) + np.float32(lo)


def _crop_origin(target: np.ndarray, size: tuple[int, int], stride: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left (item pixels, multiples of the stride) of a training crop: around a lesion when there is one."""
    h, w = target.shape
    ch, cw = size[0] // stride, size[1] // stride
    if ch >= h and cw >= w:
        return 0, 0
    cells = np.argwhere(target > 0.25)
    if len(cells):
        r, c = cells[rng.integers(len(cells))]
        r0 = int(np.clip(r - rng.integers(ch // 6, ch - ch // 6), 0, h - ch))
        c0 = int(np.clip(c - rng.integers(cw // 6, cw - cw // 6), 0, w - cw))
    else:
        r0, c0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return r0 * stride, c0 * stride


def _examples_of(args: tuple[str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Worker: one training phantom -> (items u8, targets f16)."""
    name, seed, max_pos = args
    torch.set_num_threads(1)
    task = TASKS[name]
    spec = task.spec
    series, mask = task.sample(seed)
    prepared = prepare(series, spec)
    targets = map_mask(mask, series, prepared.context["geometry"], spec)  # (n, h/s, w/s)
    rng = np.random.default_rng([seed, 11])
    positive = np.flatnonzero(targets.reshape(len(targets), -1).max(axis=1) > 0.25)
    negative = np.flatnonzero(targets.reshape(len(targets), -1).max(axis=1) == 0)
    if len(positive) > max_pos:
        positive = rng.choice(positive, max_pos, replace=False)
    n_neg = min(len(negative), max(task.min_negatives, len(positive)))
    chosen = np.concatenate([positive, rng.choice(negative, n_neg, replace=False)]).astype(int)
    items, outs = [], []
    s = spec.stride
    for k in np.repeat(chosen, task.crops):
        r0, c0 = _crop_origin(targets[k], task.train_size, s, rng)
        h, w = task.train_size
        h, w = min(h, spec.input.height), min(w, spec.input.width)
        items.append(_to_u8(prepared.items[k, :, r0 : r0 + h, c0 : c0 + w], spec.family))
        outs.append(targets[k, r0 // s : (r0 + h) // s, c0 // s : (c0 + w) // s].astype(np.float16))
    return np.stack(items), np.stack(outs)


def _validation_case(args: tuple[str, int, DetectorSpec]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Worker: one validation phantom -> (all items u8, valid cells, has a lesion)."""
    name, seed, spec = args
    torch.set_num_threads(1)
    series, mask = TASKS[name].sample(seed)
    prepared = prepare(series, spec)
    h, w = spec.input.height // spec.stride, spec.input.width // spec.stride
    valid = valid_cells(prepared.context["geometry"], spec, (h, w))
    return _to_u8(prepared.items, spec.family), valid, bool(mask.any())


def _pool(workers: int) -> Pool:
    # spawn, not fork: the parent holds torch's thread pools, which fork does not copy safely.
    return multiprocessing.get_context("spawn").Pool(workers or len(os.sched_getaffinity(0)))


def make_examples(name: str, cfg: TrainConfig, progress: Progress | None = None) -> Examples:
    base = SEED_BASES["train"] + cfg.seed * 1_000_000
    jobs = [(name, base + i, cfg.max_positive_slices) for i in range(cfg.phantoms)]
    items, targets = [], []
    with _pool(cfg.workers) as pool:
        for i, (x, y) in enumerate(pool.imap(_examples_of, jobs, chunksize=2)):  # imap: in seed order
            items.append(x)
            targets.append(y)
            if progress:
                progress("phantoms", i + 1, len(jobs))
    return Examples(np.concatenate(items), np.concatenate(targets), TASKS[name].spec.family)


def loss_fn(logits: torch.Tensor, target: torch.Tensor, strongest_weight: float = 0.5) -> torch.Tensor:
    """Heatmap BCE (lesion cells x10) + BCE of each item's strongest cell against 'has a lesion'.

    The second term is item-level hard-negative mining: on a lesion-free item
    it pushes down exactly the cell that would become a false alarm.
    """
    logits = logits[:, 0]
    cells = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(10.0, device=logits.device))
    has = (target.flatten(1).amax(dim=1) > 0.25).float()
    strongest = F.binary_cross_entropy_with_logits(logits.flatten(1).amax(dim=1), has)
    return cells + strongest_weight * strongest


def train_steps(module: torch.nn.Module, examples: Examples, steps: int, cfg: TrainConfig, progress: Progress | None = None) -> list[float]:
    """Run ``steps`` optimiser steps; returns the loss of each. Deterministic for ``cfg.seed``."""
    device = torch.device(cfg.device)
    module.to(device).train()
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay to zero
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / max(steps, 1)))
    )
    rng = np.random.default_rng([cfg.seed, 99])
    n = len(examples.items)
    order = rng.permutation(n)
    cursor, losses = 0, []
    for step in range(steps):
        if cursor + cfg.batch_size > n:
            order, cursor = rng.permutation(n), 0
        index = np.sort(order[cursor : cursor + cfg.batch_size])
        cursor += cfg.batch_size
        x, y = examples.batch(index, rng)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = module(x)
        loss = loss_fn(out.float(), y, cfg.strongest_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress:
            progress("training", step + 1, steps)
    module.eval()
    return losses


def validate(
    name: str, module: torch.nn.Module, cfg: TrainConfig, progress: Progress | None = None, spec: DetectorSpec | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Raw study logits and labels of the validation phantoms, scored by the full pipeline.

    ``spec`` is the card the module was trained for (default: the task's current one).
    """
    spec = spec or TASKS[name].spec
    base = SEED_BASES["validation"] + cfg.seed * 1_000_000
    device = torch.device(cfg.device)
    raw, labels = [], []
    with _pool(cfg.workers) as pool:
        jobs = [(name, base + i, spec) for i in range(cfg.validation)]
        for i, (items, valid, label) in enumerate(pool.imap(_validation_case, jobs)):
            x = _from_u8(items, spec.family)
            outs = []
            with torch.inference_mode():
                for start in range(0, len(x), 16):
                    outs.append(module(torch.from_numpy(x[start : start + 16]).to(device)).float().cpu().numpy())
            maps = np.concatenate(outs)[:, 0]
            raw.append(study_logit(np.where(valid[None], maps, -60.0), valid))
            labels.append(label)
            if progress:
                progress("validation", i + 1, len(jobs))
    return np.array(raw), np.array(labels)


def calibrate(
    name: str,
    module: torch.nn.Module,
    cfg: TrainConfig,
    progress: Progress | None = None,
    scores_path: Path | None = None,
    spec: DetectorSpec | None = None,
) -> tuple[float, float, float, dict[str, float]]:
    """Platt (a, b), the operating point and validation metrics of ``module`` on the validation phantoms.

    ``scores_path`` keeps each validation phantom's raw study logit and label
    (JSON), so that the calibration can be checked or redone without rescoring.
    """
    raw, labels = validate(name, module, cfg, progress, spec)
    if scores_path is not None:
        scores_path.write_text(
            json.dumps(
                {
                    "detector": name,
                    "seed": cfg.seed,
                    "validation_phantoms": cfg.validation,
                    "first_phantom_seed": SEED_BASES["validation"] + cfg.seed * 1_000_000,
                    "raw_study_logits": [round(float(x), 5) for x in raw],
                    "labels": [bool(y) for y in labels],
                },
                indent=0,
            )
            + "\n"
        )
    return calibrate_scores(raw, labels, cfg.target_sensitivity)


def calibrate_scores(raw: np.ndarray, labels: np.ndarray, target_sensitivity: float) -> tuple[float, float, float, dict[str, float]]:
    """Platt (a, b), operating point and metrics from validation study logits and labels."""
    a, b = fit_platt(raw, labels)
    calibrated = np.asarray(platt(raw, a, b))
    op = operating_point_in_gap(labels, calibrated, target_sensitivity)
    sens, spec_ = sensitivity_specificity(labels, calibrated, op)
    metrics = {
        "validation_studies": int(len(labels)),
        "validation_positive": int(labels.sum()),
        "validation_auc": round(float(auc(labels, raw)), 4),  # raw logits: no ties from saturation
        "validation_sensitivity": round(float(sens), 4),
        "validation_specificity": round(float(spec_), 4),
    }
    return a, b, op, metrics


def recalibrate(card: Path, cfg: TrainConfig, progress: Progress | None = None, command: str = "") -> DetectorSpec:
    """Refit calibration and operating point of a trained shipped detector in place (weights unchanged)."""
    from detectors.heatmap import load_detector

    detector = load_detector(card, device=cfg.device)
    spec = detector.spec
    stored = card.with_name(f"{spec.name}.validation.json")
    saved = json.loads(stored.read_text()) if stored.is_file() else {}
    if saved.get("seed") == cfg.seed and saved.get("validation_phantoms") == cfg.validation:
        raw, labels = np.array(saved["raw_study_logits"]), np.array(saved["labels"], dtype=bool)
        a, b, op, metrics = calibrate_scores(raw, labels, cfg.target_sensitivity)
    else:
        a, b, op, metrics = calibrate(spec.name, detector.module, cfg, progress, scores_path=stored, spec=spec)
    validation = {**spec.extra.get("validation", {}), **metrics}
    training = {**spec.extra.get("training", {})}
    if command:
        training["calibration_command"] = command
    spec = replace(spec.with_calibration(a, b, op), extra={**spec.extra, "validation": validation, "training": training})
    card.write_text(spec.to_toml())
    card.with_suffix(".md").write_text(render_card(spec))
    return spec


@dataclass
class TrainResult:
    spec: DetectorSpec
    card_path: Path
    metrics: dict[str, float] = field(default_factory=dict)


def train(name: str, cfg: TrainConfig, out_dir: Path = MODELS_DIR, progress: Progress | None = None, command: str = "") -> TrainResult:
    """Train, calibrate and write one task's detector into ``out_dir``."""
    if name not in TASKS:
        raise ValueError(f'Argument "name" must be one of {", ".join(TASKS)}, got {name!r}')
    started = time.monotonic()
    task: Task = TASKS[name]
    cfg = replace(cfg, strongest_weight=task.strongest_weight)
    torch.manual_seed(cfg.seed)
    examples = make_examples(name, cfg, progress)
    module = build_module(task.spec)
    steps = max(1, cfg.epochs * len(examples.items) // cfg.batch_size)
    losses = train_steps(module, examples, steps, cfg, progress)
    # Weights first: a failure in validation must not lose the training. And
    # calibrate the fp16-rounded weights that ship, not the fp32 ones.
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.pt"
    half = {k: v.detach().cpu().half() for k, v in module.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(half, buffer)
    weights.write_bytes(buffer.getvalue())
    module.load_state_dict({k: v.float() for k, v in half.items()})
    a, b, op, metrics = calibrate(name, module, cfg, progress, scores_path=out_dir / f"{name}.validation.json")
    metrics |= {
        "training_examples": int(len(examples.items)),
        "training_steps": steps,
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    spec = replace(
        task.spec.with_calibration(a, b, op),
        sha256=sha256_of(weights),
        extra={
            "validation": metrics,
            "training": {
                "seed": cfg.seed,
                "epochs": cfg.epochs,
                "phantoms": cfg.phantoms,
                "validation_phantoms": cfg.validation,
                "batch_size": cfg.batch_size,
                "lr": cfg.lr,
                "device": cfg.device,
                "torch": torch.__version__,
                "target_sensitivity": cfg.target_sensitivity,
                "strongest_weight": cfg.strongest_weight,
                "min_negative_slices": task.min_negatives,
                "command": command,
            },
        },
    )
    card = out_dir / f"{name}.toml"
    card.write_text(spec.to_toml())
    (out_dir / f"{name}.md").write_text(render_card(spec))
    return TrainResult(spec, card, metrics)


def _progress_logger(name: str) -> Progress:
    """Logs ``name``'s progress: each new stage, its end, and about every tenth of it."""
    last = {"stage": ""}

    def progress(stage: str, done: int, total: int) -> None:
        if stage != last["stage"] or done == total or done % max(1, total // 10) == 0:
            logger.info("%s %s %d/%d", name, stage, done, total)
            last["stage"] = stage

    return progress


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detectors.train NAME...``: the same training without the triage CLI's dependencies."""
    p = argparse.ArgumentParser(prog="python -m detectors.train")
    p.add_argument("names", nargs="+", choices=sorted(TASKS))
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--phantoms", type=int, default=TrainConfig.phantoms)
    p.add_argument("--validation", type=int, default=TrainConfig.validation)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--out", type=Path, default=MODELS_DIR)
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="keep the weights in --out, refit calibration and operating point on the validation phantoms",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in args.names:
        cfg = TrainConfig(
            epochs=args.epochs, seed=args.seed, device=args.device, phantoms=args.phantoms, validation=args.validation, workers=args.workers
        )
        progress = _progress_logger(name)
        command = " ".join(["python -m detectors.train", *sys.argv[1:]])
        if args.recalibrate:
            spec = recalibrate(args.out / f"{name}.toml", cfg, progress, command=command)
            logger.info("%s recalibrated: %s", name, spec.extra["validation"])
            continue
        result = train(name, cfg, args.out, progress, command=command)
        logger.info("%s done: %s", name, result.metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
