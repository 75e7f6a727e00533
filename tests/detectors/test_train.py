"""The training harness: a few steps are deterministic for a seed; examples, batches and loss.

Tiny networks (width 2) on 32 x 32 items keep each run to a fraction of a
second on two shared CPU cores; phantom examples are made in-process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from detectors import train
from detectors.base import Family
from detectors.nets import build
from detectors.train import Examples, TrainConfig, loss_fn, make_examples, train_steps


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: reductions then add up in one order, so runs repeat bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_examples(n: int = 8) -> Examples:
    """Random radiograph items (n, 1, 32, 32) uint8 with lesion targets at stride 4 on every other item."""
    rng = np.random.default_rng(5)
    items = rng.integers(0, 256, (n, 1, 32, 32), dtype=np.uint8)
    targets = np.zeros((n, 8, 8), np.float16)
    targets[::2, 2:4, 3:6] = 1.0
    return Examples(items, targets, Family.RADIOGRAPH)


def run(seed: int, examples: Examples, steps: int = 3) -> tuple[list[float], dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    module = build(1, width=2, stride=4)
    losses = train_steps(module, examples, steps, TrainConfig(seed=seed, batch_size=4))
    return losses, {k: v.clone() for k, v in module.state_dict().items()}


def test_a_few_steps_are_deterministic_for_a_seed() -> None:
    examples = tiny_examples()
    losses_a, state_a = run(7, examples)
    losses_b, state_b = run(7, examples)
    assert len(losses_a) == 3 and all(math.isfinite(x) for x in losses_a)
    assert losses_a == losses_b
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    losses_c, _ = run(8, examples)
    assert losses_c != losses_a


def test_training_changes_the_weights_and_leaves_eval_mode() -> None:
    examples = tiny_examples()
    torch.manual_seed(0)
    module = build(1, width=2, stride=4)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    train_steps(module, examples, 2, TrainConfig(seed=0, batch_size=4))
    assert not module.training
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_fewer_examples_than_a_batch_still_train() -> None:
    losses, _ = run(0, tiny_examples(n=3), steps=2)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_loss_of_zero_logits_on_an_empty_target() -> None:
    logits = torch.zeros(2, 1, 4, 4)
    target = torch.zeros(2, 4, 4)
    # Every cell and every item's strongest cell: BCE(0 logit, 0 target) = log 2.
    assert float(loss_fn(logits, target)) == pytest.approx(1.5 * math.log(2.0))


def test_loss_weights_lesion_cells_up() -> None:
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.zeros(1, 2, 2)
    target[0, 0, 0] = 1.0
    # Cells: (10 * log 2 + 3 * log 2) / 4; strongest against "has a lesion": log 2.
    assert float(loss_fn(logits, target)) == pytest.approx((13 / 4 + 0.5) * math.log(2.0))


def test_batch_flips_items_and_targets_together() -> None:
    n = 16
    items = np.zeros((n, 1, 32, 32), np.uint8)
    items[:, :, 8:12, 20:24] = 255  # one bright 4 x 4 cell: row 2, column 5 at stride 4
    targets = np.zeros((n, 8, 8), np.float16)
    targets[:, 2, 5] = 1.0
    examples = Examples(items, targets, Family.RADIOGRAPH)
    x, y = examples.batch(np.arange(n), np.random.default_rng(0))
    assert x.shape == (n, 1, 32, 32) and y.shape == (n, 8, 8)
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    pooled = torch.nn.functional.avg_pool2d(x, 4)[:, 0]
    for k in range(n):
        assert pooled[k].argmax() == y[k].argmax(), k
    cells = {int(i) for i in y.flatten(1).argmax(dim=1)}
    assert len(cells) > 1  # some were flipped (a fixed seed: 16 coins)


def test_batch_without_augmentation_decodes_the_items() -> None:
    examples = tiny_examples()
    x, y = examples.batch(np.array([0, 1]), np.random.default_rng(0), augment=False)
    expected = examples.items[:2].astype(np.float32) * (2.0 / 255) - 0.5  # radiographs: [-0.5, 1.5]
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(y.numpy(), examples.targets[:2].astype(np.float32))


class InProcessPool:
    """Stands in for the spawn pool: the same jobs, in order, without starting processes."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def __enter__(self) -> InProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def imap(self, fn: Callable[[Any], Any], jobs: Iterable[Any], chunksize: int = 1) -> Iterator[Any]:
        return map(fn, jobs)


def test_make_examples_from_radiograph_phantoms_is_repeatable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "_pool", InProcessPool)
    cfg = TrainConfig(seed=0, phantoms=2, workers=1)
    seen: list[tuple[str, int, int]] = []
    first = make_examples("nodule-xr", cfg, lambda stage, done, total: seen.append((stage, done, total)))
    assert seen == [("phantoms", 1, 2), ("phantoms", 2, 2)]
    assert first.family is Family.RADIOGRAPH
    n = len(first.items)
    assert n >= 4  # each phantom: at least one slice, four crops of it
    assert first.items.shape == (n, 1, 256, 256) and first.items.dtype == np.uint8
    assert first.targets.shape == (n, 64, 64) and first.targets.dtype == np.float16  # stride 4
    again = make_examples("nodule-xr", cfg)
    np.testing.assert_array_equal(again.items, first.items)
    np.testing.assert_array_equal(again.targets, first.targets)
