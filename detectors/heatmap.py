"""The one Detector implementation: a card (spec) plus a heatmap network, shipped or external.

Shipped detectors are state dicts of :class:`detectors.nets.HeatmapNet` under
``detectors/models/``; external ones are TorchScript files. Both come with a
card (:mod:`detectors.spec`), and loading checks the weights' SHA-256 against
it, so a finding's model identity is exactly the file that produced it.
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from detectors.base import Detector, Finding, ModelIdentity, Prepared, SeriesArrays
from detectors.nets import build
from detectors.postprocess import postprocess
from detectors.preprocess import prepare
from detectors.spec import CardError, DetectorSpec, load_card, sha256_of

logger = logging.getLogger(__name__)


class HeatmapDetector(Detector):
    """Preprocessing, thresholds and postprocessing of a card around a logit-heatmap module."""

    def __init__(self, spec: DetectorSpec, module: torch.nn.Module, sha256: str) -> None:
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        self.family = spec.family
        self.module = module.eval()
        self.item_shape = spec.item_shape
        self.identity = ModelIdentity(name=spec.name, version=spec.version, sha256=sha256)

    def prepare(self, series: SeriesArrays) -> Prepared:
        return prepare(series, self.spec)

    def postprocess(self, prepared: Prepared, logits: np.ndarray) -> Finding:
        return postprocess(prepared, logits, self.spec, self.identity)

    def __repr__(self) -> str:
        return f"HeatmapDetector({self.identity})"


def build_module(spec: DetectorSpec) -> torch.nn.Module:
    """A fresh (untrained) network for a shipped-style card."""
    arch = spec.network.get("arch", "heatmap-unet")
    if arch != "heatmap-unet":
        raise CardError(f'{spec.name}: network.arch must be "heatmap-unet", got {arch!r}')
    return build(spec.item_shape[0], width=int(spec.network.get("width", 16)), stride=spec.stride)


def load_detector(card_path: str | Path, device: str | torch.device = "cpu") -> HeatmapDetector:
    """Load a card and its weights; :class:`CardError` says what is wrong, naming the file."""
    card_path = Path(card_path)
    spec = load_card(card_path)
    weights = (card_path.parent / spec.weights).resolve()
    if not weights.is_file():
        raise CardError(f"{card_path}: weights file {weights} does not exist")
    digest = sha256_of(weights)
    if spec.sha256 and spec.sha256 != digest:
        raise CardError(f"{card_path}: sha256 of {weights.name} is {digest}, the card says {spec.sha256}")
    data = weights.read_bytes()
    try:
        if spec.format == "torchscript":
            module = torch.jit.load(io.BytesIO(data), map_location=device)
        else:
            module = build_module(spec)
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError(f"the file holds a {type(state).__name__}, not a state dict")
            module.load_state_dict({k: v.float() for k, v in state.items()})
            module.to(device)
    # Not a torch file at all, or an empty one, fails in pickle's ways rather than torch's.
    except (RuntimeError, ValueError, KeyError, AttributeError, EOFError, pickle.UnpicklingError) as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CardError(f"{card_path}: cannot load {weights.name} as {spec.format}: {why}") from None
    _check_output(spec, module, card_path, device)
    logger.info("loaded detector %s from %s", spec.name, weights)
    return HeatmapDetector(spec, module, digest)


def _check_output(spec: DetectorSpec, module: torch.nn.Module, where: Path, device: str | torch.device) -> None:
    """One dry run on zeros: the heatmap must be (1, 1, H/stride, W/stride), as the card says."""
    c, h, w = spec.item_shape
    try:
        with torch.inference_mode():
            out = module.eval()(torch.zeros(1, c, h, w, device=device))
    except Exception as exc:  # a foreign model can fail in any way; report it as a card problem
        raise CardError(f"{where}: the model fails on a (1, {c}, {h}, {w}) input: {str(exc).splitlines()[0]}") from None
    expected = (1, 1, h // spec.stride, w // spec.stride)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CardError(f"{where}: the model returns {shape} for a (1, {c}, {h}, {w}) input; the card implies {expected}")
