"""Loading detectors from cards: an external TorchScript model built here, and a shipped-style state dict.

The external model is a fixed 1x1 convolution and a 2x2 average pool: its
logit is +10 where the middle slice's window is bright and -10 on soft tissue,
so the Finding it gives on a synthetic CT is known in advance.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detectors.base import Family, SeriesArrays
from detectors.heatmap import HeatmapDetector, build_module, load_detector
from detectors.registry import load_detectors
from detectors.routing import FindingKind
from detectors.spec import CardError, DetectorSpec, InputSpec

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


class Bright(nn.Module):
    """(batch, 3, H, W) -> (batch, 1, H / 2, W / 2): 20 x middle channel - 10, averaged over 2 x 2."""

    def __init__(self, pool: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 20.0, 0.0]).view(1, 3, 1, 1))
            self.conv.bias.fill_(-10.0)
        self.pool = nn.AvgPool2d(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


CARD = """\
name = "site-bleed"
version = "2.1.0"
kind = "bleed"
family = "CT"
format = "torchscript"
weights = "{weights}"
sha256 = "{sha256}"

[input]
spacing_mm = 1.0
height = 32
width = 32
context_slices = 1
windows = [[50, 100]]

[output]
stride = 2

[thresholds]
operating_point = 0.6
region = 0.5
"""


def write_external(
    tmp_path: Path, module: nn.Module | None = None, sha256: str | None = None, name: str = "site-bleed"
) -> tuple[Path, str]:
    """Script ``module`` (default: Bright), save it and its card; returns (card, file digest)."""
    weights = tmp_path / f"{name}.pt"
    torch.jit.save(torch.jit.script((module or Bright()).eval()), str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    card = tmp_path / f"{name}.toml"
    card.write_text(CARD.format(weights=weights.name, sha256=digest if sha256 is None else sha256).replace('"site-bleed"', f'"{name}"'))
    return card, digest


def ct_with_bleed() -> SeriesArrays:
    """48 x 48 at 1 mm: a 40 x 40 body at 0 HU, and a 6 x 6 bright patch on slices 1-2."""
    hu = np.full((4, 48, 48), -1024.0, np.float32)
    hu[:, 4:44, 4:44] = 0.0
    hu[1:3, 20:26, 24:30] = 100.0
    return SeriesArrays("2.25.7", Family.CT, hu, (2.5, 1.0, 1.0), tuple(f"2.25.7.{i}" for i in range(4)))


def test_external_torchscript_model_loads_and_scores_a_series(tmp_path: Path) -> None:
    card, digest = write_external(tmp_path)
    detector = load_detector(card)
    assert isinstance(detector, HeatmapDetector)
    assert (detector.name, detector.kind, detector.family) == ("site-bleed", FindingKind.BLEED, Family.CT)
    assert detector.item_shape == (3, 32, 32)

    series = ct_with_bleed()
    finding = detector.detect(series)
    assert finding.detector == "site-bleed"
    assert (finding.model.name, finding.model.version, finding.model.sha256) == ("site-bleed", "2.1.0", digest)
    assert finding.kind is FindingKind.BLEED
    assert finding.series_uid == "2.25.7"
    assert finding.probability == pytest.approx(1 / (1 + math.exp(-10.0)), rel=1e-5)  # uncalibrated card: a=1, b=0
    assert finding.urgent
    (region,) = finding.regions
    assert region.slices == (1, 2)
    assert region.slice_index in (1, 2)
    assert region.sop_instance_uid == f"2.25.7.{region.slice_index}"
    # The item is the 32 x 32 window at (8, 8) of the body-centred crop; the patch is cell-aligned.
    assert region.box == (20, 24, 26, 30)
    r0, c0, r1, c1 = region.box
    assert 0 <= r0 < r1 <= 48 and 0 <= c0 < c1 <= 48


def test_external_model_with_nothing_to_find(tmp_path: Path) -> None:
    card, _ = write_external(tmp_path)
    hu = np.full((2, 40, 40), 0.0, np.float32)
    series = SeriesArrays("2.25.8", Family.CT, hu, (2.5, 1.0, 1.0), ("2.25.8.1", "2.25.8.2"))
    finding = load_detector(card).detect(series)
    assert finding.regions == ()
    assert finding.probability == pytest.approx(1 / (1 + math.exp(10.0)), rel=1e-4)
    assert not finding.urgent


def test_wrong_sha256_is_a_card_error_naming_the_card(tmp_path: Path) -> None:
    card, digest = write_external(tmp_path, sha256="0" * 64)
    with pytest.raises(CardError) as caught:
        load_detector(card)
    assert str(card) in str(caught.value)
    assert digest in str(caught.value)


def test_card_without_sha256_loads_and_records_the_digest(tmp_path: Path) -> None:
    card, digest = write_external(tmp_path, sha256="")
    assert load_detector(card).identity.sha256 == digest


def test_wrong_output_shape_is_a_card_error(tmp_path: Path) -> None:
    card, _ = write_external(tmp_path, Bright(pool=1))  # stride 1, the card says 2
    with pytest.raises(CardError, match=r"returns \(1, 1, 32, 32\).*implies \(1, 1, 16, 16\)") as caught:
        load_detector(card)
    assert str(card) in str(caught.value)


def test_model_that_fails_on_the_card_input_is_a_card_error(tmp_path: Path) -> None:
    card, _ = write_external(tmp_path, nn.Conv2d(5, 1, 1))  # wants 5 channels, the card gives 3
    with pytest.raises(CardError, match=r"fails on a \(1, 3, 32, 32\) input"):
        load_detector(card)


@pytest.mark.parametrize("content", [b"", b"not a model"])
def test_unreadable_weights_are_a_card_error(tmp_path: Path, content: bytes) -> None:
    card, _ = write_external(tmp_path, sha256="")
    (tmp_path / "site-bleed.pt").write_bytes(content)
    with pytest.raises(CardError, match="cannot load site-bleed.pt as torchscript"):
        load_detector(card)


def test_missing_weights_file_is_a_card_error(tmp_path: Path) -> None:
    card, _ = write_external(tmp_path)
    (tmp_path / "site-bleed.pt").unlink()
    with pytest.raises(CardError, match="does not exist"):
        load_detector(card)


# --- shipped-style state dict cards ----------------------------------------


def state_dict_spec(width: int = 2) -> DetectorSpec:
    return DetectorSpec(
        name="tiny-xr",
        version="1.0.0",
        kind=FindingKind.FRACTURE,
        family=Family.RADIOGRAPH,
        input=InputSpec(1.0, 32, 32),
        stride=4,
        weights="tiny-xr.pt",
        network={"arch": "heatmap-unet", "width": width},
    )


def write_state_dict(tmp_path: Path, state: object, spec: DetectorSpec) -> Path:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (tmp_path / spec.weights).write_bytes(buffer.getvalue())
    card = tmp_path / "tiny-xr.toml"
    card.write_text(spec.to_toml())
    return card


def test_state_dict_card_loads_the_same_network(tmp_path: Path) -> None:
    spec = state_dict_spec()
    torch.manual_seed(0)
    module = build_module(spec).eval()
    card = write_state_dict(tmp_path, module.state_dict(), spec)
    detector = load_detector(card)
    assert detector.identity.sha256 == hashlib.sha256((tmp_path / "tiny-xr.pt").read_bytes()).hexdigest()
    x = torch.rand(2, 1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(detector.module(x), module(x))
    image = np.random.default_rng(0).random((1, 40, 36)).astype(np.float32)
    finding = detector.detect(SeriesArrays("2.25.5", Family.RADIOGRAPH, image, (0.0, 1.0, 1.0), ("2.25.5.1",)))
    assert finding.kind is FindingKind.FRACTURE
    assert 0.0 < finding.probability < 1.0


def test_state_dict_for_another_network_is_a_card_error(tmp_path: Path) -> None:
    card = write_state_dict(tmp_path, build_module(state_dict_spec(width=4)).state_dict(), state_dict_spec(width=2))
    with pytest.raises(CardError, match="cannot load tiny-xr.pt as state_dict"):
        load_detector(card)


@pytest.mark.parametrize("state", [[1, 2, 3], "weights"])
def test_a_file_that_is_not_a_state_dict_is_a_card_error(tmp_path: Path, state: object) -> None:
    card = write_state_dict(tmp_path, state, state_dict_spec())
    with pytest.raises(CardError, match="not a state dict"):
        load_detector(card)


@pytest.mark.parametrize("content", [b"", b"not a model"])
def test_unreadable_state_dict_is_a_card_error(tmp_path: Path, content: bytes) -> None:
    card = write_state_dict(tmp_path, {}, state_dict_spec())
    (tmp_path / "tiny-xr.pt").write_bytes(content)
    with pytest.raises(CardError, match="cannot load tiny-xr.pt as state_dict"):
        load_detector(card)


def test_unknown_network_arch_is_a_card_error() -> None:
    spec = state_dict_spec()
    with pytest.raises(CardError, match="network.arch"):
        build_module(replace(spec, network={"arch": "resnet"}))


# --- the registry -----------------------------------------------------------


def test_registry_routes_to_the_external_card(tmp_path: Path) -> None:
    card, digest = write_external(tmp_path)
    detectors = load_detectors(shipped=False, external=[card])
    assert len(detectors) == 1
    detector = detectors.for_route("bleed", "CT")
    assert detector is not None and detector.identity.sha256 == digest
    assert detectors.for_route(FindingKind.BLEED, Family.RADIOGRAPH) is None
    assert detectors.for_route(FindingKind.NODULE, Family.CT) is None


def test_a_later_external_card_replaces_an_earlier_one_for_its_route(tmp_path: Path) -> None:
    first, _ = write_external(tmp_path, name="bleed-a")
    second, _ = write_external(tmp_path, name="bleed-b")
    detectors = load_detectors(shipped=False, external=[first, second])
    assert len(detectors) == 1
    assert detectors.for_route("bleed", "CT").name == "bleed-b"
