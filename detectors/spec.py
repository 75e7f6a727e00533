"""A detector's card: the TOML that says what a model reads, how its output is read, and who it is.

Shipped detectors and external TorchScript models use the same card, so a
site's own model plugs in by writing one file beside its weights::

    name = "my-bleed"            # shown with every finding
    version = "2.1.0"
    kind = "bleed"               # bleed | fracture | nodule
    family = "CT"                # CT | radiograph
    format = "torchscript"       # torchscript | state_dict (shipped detectors)
    weights = "my-bleed.pt"      # relative to the card
    sha256 = "..."               # optional for external models; checked when present

    [input]
    spacing_mm = 0.9             # in-plane pixel size the model expects
    height = 256                 # item size after resampling, cropped or padded
    width = 256
    context_slices = 1           # CT: neighbours on each side (2.5D)
    context_mm = 0.0             # CT: distance to the nearest neighbour (0: adjacent slices)
    windows = [[40, 80], [75, 215], [600, 2800]]   # CT: (centre, width) in HU, one channel each

    [output]
    stride = 2                   # one heatmap cell = stride x stride input pixels

    [thresholds]
    operating_point = 0.5        # calibrated probability at or above which a study is "urgent"
    region = 0.5                 # heatmap probability that outlines a region

    [calibration]                # Platt scaling of the study's strongest logit: sigmoid(a * x + b)
    a = 1.0
    b = 0.0

    [anatomy]                    # optional: where a region may be (detectors.anatomy)
    mask = "intracranial"        # intracranial | lungs | bone | none

    [filter]                     # optional: the learned false-positive filter (detectors.fp_filter)
    candidate_logit = -1.0       # heatmap components above this smoothed logit are candidates
    features = ["peak_logit", ...]   # detectors.candidates names; weights, bias, mean, scale as fitted

With a filter, the study logit is the strongest candidate's filter logit
(then Platt-scaled), and regions are candidates whose calibrated probability
reaches the region threshold; without one, it is the strongest heatmap logit
inside the anatomy.

Channels of an item are ordered slice-major: for each of the 2k+1 slices (the
item's own slice in the middle) every window in turn. Radiographs have one
channel: the image normalised to its 1st-99th percentile range.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from detectors.base import Family
from detectors.features import CT_FEATURES, DENSE_FEATURES, PROPOSALS, RADIOGRAPH_FEATURES, feature_names
from detectors.fp_filter import LogisticFilter
from detectors.routing import FindingKind

FORMATS = ("state_dict", "torchscript")
ANATOMY_MASKS = ("intracranial", "lungs", "bone", "none")


class CardError(ValueError):
    """A model card is missing a key or has a bad value; the message names the key and the file."""


@dataclass(frozen=True)
class Window:
    center: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f'Argument "width" must be a positive window width, got {self.width}')


@dataclass(frozen=True)
class InputSpec:
    spacing_mm: float
    height: int
    width: int
    context_slices: int = 0
    windows: tuple[Window, ...] = ()
    context_mm: float = 0.0  # neighbours this far apart (rounded to whole slices); 0: adjacent slices

    def channels(self, family: Family) -> int:
        if family is Family.RADIOGRAPH:
            return 1
        return len(self.windows) * (2 * self.context_slices + 1)


@dataclass(frozen=True)
class DetectorSpec:
    """Everything about a detector except its weights."""

    name: str
    version: str
    kind: FindingKind
    family: Family
    input: InputSpec
    stride: int
    operating_point: float = 0.5
    region_threshold: float = 0.5
    platt_a: float = 1.0
    platt_b: float = 0.0
    format: str = "state_dict"
    weights: str = ""
    sha256: str = ""
    network: dict[str, Any] = field(default_factory=dict)  # shipped: builder arguments
    extra: dict[str, Any] = field(default_factory=dict)  # the rest of the card (metrics, training, ...)
    anatomy: str = "none"  # the mask a region must lie in (detectors.anatomy)
    filter: LogisticFilter | None = None  # the second stage over candidates
    candidate_logit: float = -1.0  # with a filter: heatmap components above this are candidates
    proposals: tuple[str, ...] = ()  # with a filter: classical candidates too (detectors.proposals)

    @property
    def item_shape(self) -> tuple[int, int, int]:
        return (self.input.channels(self.family), self.input.height, self.input.width)

    def with_calibration(self, a: float, b: float, operating_point: float) -> DetectorSpec:
        return replace(self, platt_a=float(a), platt_b=float(b), operating_point=float(operating_point))

    def to_toml(self) -> str:
        """The card as TOML (round-trips through :func:`load_card`)."""
        lines = [
            f"name = {_q(self.name)}",
            f"version = {_q(self.version)}",
            f"kind = {_q(self.kind.value)}",
            f"family = {_q(self.family.value)}",
            f"format = {_q(self.format)}",
            f"weights = {_q(self.weights)}",
            f"sha256 = {_q(self.sha256)}",
        ]
        # Unknown top-level keys go before the first table, or TOML would file them under it.
        lines += [f"{_key(k)} = {_value(v)}" for k, v in self.extra.items() if not isinstance(v, dict)]
        lines += [
            "",
            "[input]",
            f"spacing_mm = {self.input.spacing_mm!r}",
            f"height = {self.input.height}",
            f"width = {self.input.width}",
            f"context_slices = {self.input.context_slices}",
            f"context_mm = {self.input.context_mm!r}",
            "windows = [" + ", ".join(f"[{w.center!r}, {w.width!r}]" for w in self.input.windows) + "]",
            "",
            "[output]",
            f"stride = {self.stride}",
            "",
            "[thresholds]",
            f"operating_point = {self.operating_point!r}",
            f"region = {self.region_threshold!r}",
            "",
            "[calibration]",
            f"a = {self.platt_a!r}",
            f"b = {self.platt_b!r}",
        ]
        if self.network:
            lines += ["", "[network]"] + [f"{_key(k)} = {_value(v)}" for k, v in self.network.items()]
        if self.anatomy != "none":
            lines += ["", "[anatomy]", f"mask = {_q(self.anatomy)}"]
        if self.filter is not None:
            lines += ["", "[filter]", f"candidate_logit = {self.candidate_logit!r}"]
            if self.proposals:
                lines += [f"proposals = {_value(list(self.proposals))}"]
            lines += [f"{_key(k)} = {_value(v)}" for k, v in self.filter.as_table().items()]
        for section, values in self.extra.items():
            if isinstance(values, dict):
                lines += ["", f"[{_key(section)}]"] + [f"{_key(k)} = {_value(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    # A TOML basic string: backslash, quote and control characters (but tab) escaped.
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped) + '"'


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _q(key)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _q(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    return repr(v)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_card(path: str | Path) -> DetectorSpec:
    """Read and validate a card; :class:`CardError` names the bad key and the file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise CardError(f"{path}: cannot read the model card ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CardError(f"{path}: not valid TOML ({exc})") from None
    return parse_card(raw, str(path))


def parse_card(raw: dict[str, Any], where: str = "card") -> DetectorSpec:
    def get(section: str | None, key: str, kind: type, default: Any = ...) -> Any:
        table = raw if section is None else raw.get(section, {})
        name = key if section is None else f"{section}.{key}"
        if not isinstance(table, dict):
            raise CardError(f"{where}: [{section}] must be a table")
        if key not in table:
            if default is ...:
                raise CardError(f"{where}: {name} is missing")
            return default
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CardError(f"{where}: {name} must be a {kind.__name__}, got {value!r}")
        return value

    # Read outside the try: CardError is a ValueError, and "kind is missing" says more than "must be one of".
    kind_value, family_value = get(None, "kind", str), get(None, "family", str)
    try:
        kind = FindingKind(kind_value)
    except ValueError:
        raise CardError(f"{where}: kind must be one of {', '.join(k.value for k in FindingKind)}") from None
    try:
        family = Family(family_value)
    except ValueError:
        raise CardError(f"{where}: family must be one of {', '.join(f.value for f in Family)}") from None
    fmt = get(None, "format", str, "state_dict")
    if fmt not in FORMATS:
        raise CardError(f"{where}: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    windows = []
    for i, w in enumerate(get("input", "windows", list, [])):
        if not (isinstance(w, list) and len(w) == 2 and all(isinstance(x, (int, float)) for x in w) and w[1] > 0):
            raise CardError(f"{where}: input.windows[{i}] must be [centre, width] with width > 0, got {w!r}")
        windows.append(Window(float(w[0]), float(w[1])))
    if family is Family.CT and not windows:
        raise CardError(f"{where}: input.windows must list at least one [centre, width] for a CT model")
    inp = InputSpec(
        spacing_mm=_positive(get("input", "spacing_mm", float), f"{where}: input.spacing_mm"),
        height=int(_positive(get("input", "height", int), f"{where}: input.height")),
        width=int(_positive(get("input", "width", int), f"{where}: input.width")),
        context_slices=get("input", "context_slices", int, 0),
        context_mm=get("input", "context_mm", float, 0.0),
        windows=tuple(windows),
    )
    if inp.context_mm < 0:
        raise CardError(f"{where}: input.context_mm must be >= 0, got {inp.context_mm}")
    if inp.context_slices < 0:
        raise CardError(f"{where}: input.context_slices must be >= 0, got {inp.context_slices}")
    stride = int(_positive(get("output", "stride", int, 1), f"{where}: output.stride"))
    if inp.height % stride or inp.width % stride:
        raise CardError(f"{where}: output.stride must divide input.height and input.width")
    op = get("thresholds", "operating_point", float, 0.5)
    region = get("thresholds", "region", float, 0.5)
    for key, value in (("thresholds.operating_point", op), ("thresholds.region", region)):
        if not 0.0 <= value <= 1.0:
            raise CardError(f"{where}: {key} must be a probability in [0, 1], got {value}")
    network = raw.get("network", {})
    if not isinstance(network, dict):
        raise CardError(f"{where}: [network] must be a table")
    anatomy = get("anatomy", "mask", str, "none")
    if anatomy not in ANATOMY_MASKS:
        raise CardError(f"{where}: anatomy.mask must be one of {', '.join(ANATOMY_MASKS)}, got {anatomy!r}")
    filter_, candidate_logit, proposals = _parse_filter(raw.get("filter"), where)
    if filter_ is not None:
        if "hyperdense" in proposals and not all(
            any(w.center - w.width / 2 <= lo and w.center + w.width / 2 >= hi for w in inp.windows) for lo, hi in ((0, 100), (300, 1000))
        ):
            raise CardError(f"{where}: filter.proposals hyperdense needs input.windows showing 0-100 HU (blood) and 300-1000 HU (bone)")
        unmeasured = [f for f in filter_.features if f not in feature_names(family, proposals)]
        if unmeasured:
            raise CardError(f"{where}: filter.features {unmeasured} are not measured for {family.value} with proposals {list(proposals)}")
    known = {
        "name",
        "version",
        "kind",
        "family",
        "format",
        "weights",
        "sha256",
        "input",
        "output",
        "thresholds",
        "calibration",
        "network",
        "anatomy",
        "filter",
    }
    return DetectorSpec(
        name=get(None, "name", str),
        version=get(None, "version", str, "0"),
        kind=kind,
        family=family,
        input=inp,
        stride=stride,
        operating_point=op,
        region_threshold=region,
        platt_a=get("calibration", "a", float, 1.0),
        platt_b=get("calibration", "b", float, 0.0),
        format=fmt,
        weights=get(None, "weights", str),
        sha256=get(None, "sha256", str, ""),
        network=dict(network),
        extra={k: v for k, v in raw.items() if k not in known},
        anatomy=anatomy,
        filter=filter_,
        candidate_logit=candidate_logit,
        proposals=proposals,
    )


def _parse_filter(table: Any, where: str) -> tuple[LogisticFilter | None, float, tuple[str, ...]]:
    if table is None:
        return None, -1.0, ()
    if not isinstance(table, dict):
        raise CardError(f"{where}: [filter] must be a table")
    for key in ("features", "weights", "bias", "mean", "scale"):
        if key not in table:
            raise CardError(f"{where}: filter.{key} is missing")
    unknown = [f for f in table["features"] if f not in CT_FEATURES + RADIOGRAPH_FEATURES + DENSE_FEATURES]
    if unknown:
        raise CardError(f"{where}: filter.features has unknown names {unknown}")
    candidate_logit = table.get("candidate_logit", -1.0)
    if not isinstance(candidate_logit, (int, float)) or isinstance(candidate_logit, bool):
        raise CardError(f"{where}: filter.candidate_logit must be a float, got {candidate_logit!r}")
    proposals = table.get("proposals", [])
    if not isinstance(proposals, list) or any(p not in PROPOSALS for p in proposals):
        raise CardError(f"{where}: filter.proposals must be a list of {', '.join(PROPOSALS)}, got {proposals!r}")
    try:
        return LogisticFilter.from_table(table), float(candidate_logit), tuple(proposals)
    except (TypeError, ValueError) as exc:
        raise CardError(f"{where}: [filter] is not valid: {exc}") from None


def _positive(value: float, name: str) -> float:
    if not value > 0:
        raise CardError(f"{name} must be positive, got {value}")
    return value
