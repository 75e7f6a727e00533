"""Model cards: ``to_toml`` round-trips through the parser, and every bad key is named."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from detectors.base import Family
from detectors.routing import FindingKind
from detectors.spec import CardError, DetectorSpec, InputSpec, Window, load_card, parse_card


def full_spec() -> DetectorSpec:
    """A card with every field away from its default, including awkward values."""
    return DetectorSpec(
        name='site "bleed"',
        version="2.1.0",
        kind=FindingKind.BLEED,
        family=Family.CT,
        input=InputSpec(
            spacing_mm=0.9,
            height=96,
            width=64,
            context_slices=2,
            windows=(Window(40.0, 80.0), Window(-600.5, 1500.25), Window(1 / 3, 2 / 3)),
        ),
        stride=4,
        operating_point=0.123456789,
        region_threshold=0.7,
        platt_a=1.5,
        platt_b=-0.25,
        format="torchscript",
        weights="sub\\dir/model.pt",
        sha256="ab" * 32,
        network={"arch": "heatmap-unet", "width": 12},
        extra={
            "description": "a top-level note",  # unknown top-level keys are kept too
            "validation": {"auc": 0.91, "studies": 200, "passed": True, "by type": {"solid": 0.9, "ggo": 0.8}},
            "training": {"seed": 3, "command": 'train "bleed-ct"\tC:\\x\nnext', "sizes": [256, 256]},
        },
    )


def minimal_raw() -> dict[str, Any]:
    """The smallest valid CT card as parsed TOML."""
    return {
        "name": "m",
        "kind": "bleed",
        "family": "CT",
        "weights": "m.pt",
        "input": {"spacing_mm": 1.0, "height": 32, "width": 32, "windows": [[40, 80]]},
        "output": {"stride": 2},
    }


def with_value(path: str, value: Any) -> dict[str, Any]:
    """``minimal_raw()`` with ``section.key`` (or a top-level key) set; ``...`` deletes it."""
    raw = copy.deepcopy(minimal_raw())
    *sections, key = path.split(".")
    table = raw
    for section in sections:
        table = table.setdefault(section, {})
    if value is ...:
        table.pop(key, None)
    else:
        table[key] = value
    return raw


def test_to_toml_round_trips_every_field() -> None:
    spec = full_spec()
    assert parse_card(tomllib.loads(spec.to_toml())) == spec


def test_load_card_reads_what_to_toml_wrote(tmp_path: Path) -> None:
    spec = full_spec()
    card = tmp_path / "card.toml"
    card.write_text(spec.to_toml())
    assert load_card(card) == spec


def test_minimal_card_takes_the_defaults() -> None:
    spec = parse_card(minimal_raw())
    assert (spec.version, spec.format, spec.sha256, spec.stride) == ("0", "state_dict", "", 2)
    assert (spec.operating_point, spec.region_threshold, spec.platt_a, spec.platt_b) == (0.5, 0.5, 1.0, 0.0)
    assert spec.input.windows == (Window(40.0, 80.0),)
    assert spec.item_shape == (1, 32, 32)
    assert parse_card(tomllib.loads(spec.to_toml())) == spec


def test_item_shape_counts_windows_times_slices() -> None:
    spec = full_spec()
    assert spec.item_shape == (3 * 5, 96, 64)
    radiograph = parse_card(with_value("family", "radiograph") | {"kind": "fracture"})
    assert radiograph.item_shape == (1, 32, 32)


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("input.spacing_mm", ..., "input.spacing_mm"),
        ("input.spacing_mm", "1.0", "input.spacing_mm"),
        ("input.spacing_mm", 0.0, "input.spacing_mm"),
        ("input.spacing_mm", -0.5, "input.spacing_mm"),
        ("input.height", ..., "input.height"),
        ("input.height", 32.0, "input.height"),
        ("input.width", True, "input.width"),
        ("input.context_slices", -1, "input.context_slices"),
        ("input.windows", ..., "input.windows"),  # a CT card without windows
        ("input.windows", [], "input.windows"),
        ("input.windows", [[40, 0]], "input.windows[0]"),
        ("input.windows", [[40, 80], [40]], "input.windows[1]"),
        ("thresholds.operating_point", 1.5, "thresholds.operating_point"),
        ("thresholds.operating_point", -0.1, "thresholds.operating_point"),
        ("thresholds.operating_point", float("nan"), "thresholds.operating_point"),
        ("thresholds.region", 2, "thresholds.region"),
        ("output.stride", 3, "output.stride"),  # does not divide 32
        ("output.stride", 0, "output.stride"),
        ("calibration.a", "one", "calibration.a"),
        ("kind", "tumour", "kind"),
        ("kind", ..., "kind is missing"),
        ("kind", 3, "kind must be a str"),
        ("family", ..., "family is missing"),
        ("family", "MR", "family"),
        ("format", "onnx", "format"),
        ("name", ..., "name"),
        ("weights", ..., "weights"),
        ("sha256", 123, "sha256"),
    ],
)
def test_bad_key_raises_card_error_naming_it(path: str, value: Any, named: str) -> None:
    with pytest.raises(CardError) as caught:
        parse_card(with_value(path, value), "cards/x.toml")
    assert named in str(caught.value)
    assert "cards/x.toml" in str(caught.value)


@pytest.mark.parametrize("section", ["thresholds", "network"])
def test_a_section_that_is_not_a_table_is_named(section: str) -> None:
    raw = minimal_raw()
    raw[section] = 0.5
    with pytest.raises(CardError, match=rf"\[{section}\] must be a table"):
        parse_card(raw)


def test_radiograph_card_needs_no_windows() -> None:
    raw = with_value("input.windows", ...)
    raw.update(family="radiograph", kind="fracture")
    assert parse_card(raw).input.windows == ()


def test_load_card_names_the_file_for_unreadable_or_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="missing.toml"):
        load_card(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(CardError, match="bad.toml: not valid TOML"):
        load_card(bad)
