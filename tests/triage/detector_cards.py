"""Throw-away detector cards and weights for plumbing tests: real files, untrained tiny networks.

The shipped cards' settings, shrunk (width 4, coarser pixels) so a CPU scores
a study in well under a second. The head's bias is raised so every image
cell is above the region threshold: each scored series then has regions,
and where they land says whether boxes map back into the image.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import torch

from detectors.heatmap import build_module
from detectors.spec import sha256_of
from detectors.tasks import TASKS

_SMALL = {  # name: (spacing_mm, height, width)
    "bleed-ct": (2.0, 128, 128),
    "nodule-ct": (2.0, 192, 192),
    "nodule-xr": (2.0, 256, 256),
    "fracture-xr": (2.0, 256, 160),
}


def write_card(name: str, out_dir: Path, *, version: str = "0.0.1", bias: float = 3.0, seed: int = 0) -> Path:
    """Write ``<name>.pt`` and ``<name>.toml`` into ``out_dir``; returns the card's path."""
    spacing, height, width = _SMALL[name]
    base = TASKS[name].spec
    spec = replace(
        base,
        version=version,
        input=replace(base.input, spacing_mm=spacing, height=height, width=width),
        network={"arch": "heatmap-unet", "width": 4},
    )
    torch.manual_seed(seed)
    module = build_module(spec)
    with torch.no_grad():
        module.head.bias.fill_(bias)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / spec.weights
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    weights.write_bytes(buffer.getvalue())
    spec = replace(spec, sha256=sha256_of(weights), extra={"training": {"command": "tests", "seed": seed}})
    card = out_dir / f"{name}.toml"
    card.write_text(spec.to_toml())
    return card
