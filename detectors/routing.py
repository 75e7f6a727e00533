"""Routing: which detectors apply to a series, decided from its header alone.

A pure function of header values (plus an optional content check passed in), so
the server can decide before reading any pixels and this module stays
importable without torch. Every decision carries a human-readable reason,
because a skipped series must be explainable on the worklist.

Decisions (see ``route``):

- Tags are read in order body part (0018,0015), series description, study
  description, protocol name; the first that names an anatomy wins, so a body
  part of CHEST with a series description of HEAD is chest. Body Part Examined
  is the one coded attribute (PS3.16 Annex L defined terms); the free texts are
  site conventions and the study/protocol texts describe the whole study.
- Within one text several anatomies may appear; the priority is head > chest >
  other (known anatomy without a detector) > skeletal. So "CT HEAD C-SPINE" is a
  head CT (the bleed is the time-critical finding), "CHEST ABDOMEN PELVIS" is
  chest, "ABDOMEN PELVIS" is not analysed, "DXA LUMBAR SPINE" is not analysed.
- CT of the skeleton (spine, pelvis, limbs) goes to the fracture detector, which
  takes CT bone windows; radiographs of the head go nowhere (no skull-film model).
- Head CT angiography/perfusion/venography is skipped: contrast in vessels
  mimics blood. The series description decides; a study or protocol text
  (e.g. "CODE STROKE CTA") skips only series that do not say they are
  non-contrast, so the plain head CT of a stroke protocol is still analysed.
- "LOW DOSE CHEST" is a screening chest CT, not a dose report: dose reports are
  SR objects, secondary captures mentioning DOSE, or a "DOSE REPORT" text.
- Image Type value 1 DERIVED alone does not skip a series: CR/DX systems send
  their processed "for presentation" radiographs as DERIVED\\PRIMARY, and CT
  vendors label their reconstructions DERIVED\\PRIMARY\\AXIAL. Skipped are what
  the detectors cannot read as an acquisition: value 2 SECONDARY, a value 3+
  naming a reformat, projection, rendering or perfusion/parametric map, the
  Secondary Capture SOP classes, and series descriptions naming MPR/MIP.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any


class FindingKind(str, Enum):
    """What a detector looks for."""

    BLEED = "bleed"
    FRACTURE = "fracture"
    NODULE = "nodule"


# Keyword tables, matched against whole words of upper-cased text. Kept as
# word tables (not regexes) so a site can read and extend them; the formatter
# leaves their layout alone.
# fmt: off
_HEAD = frozenset({
    "HEAD", "BRAIN", "CRANIUM", "CRANIAL", "INTRACRANIAL", "SKULL", "CEREBRAL",
    "CTH", "CTHEAD", "NCHCT", "NCCTH", "HEADNECK",
})
_CHEST = frozenset({
    "CHEST", "THORAX", "LUNG", "CXR", "PULMONARY",
    "CHESTABDOMEN", "CHESTABDPELVIS", "CHESTABDOMENPELVIS",
})
# Anatomy we recognise but no detector covers; its match stops the search so
# that "ABDOMEN PELVIS" is not read as a pelvis radiograph. DXA is bone density.
_OTHER = frozenset({
    "ABDOMEN", "ABD", "ABDO", "ABDOMINAL", "ABDOMENPELVIS", "ABDPELVIS", "KUB",
    "NECK", "BREAST", "KIDNEY", "RENAL", "LIVER", "PANCREAS", "SINUS", "ORBIT",
    "FACE", "FACIAL", "DENTAL", "CAROTID", "DXA", "DEXA", "DENSITOMETRY",
})
_SKELETAL = frozenset({
    "TIBIA", "FIBULA", "TIB", "FIB", "FEMUR", "FEMORAL", "HUMERAL", "KNEE", "ANKLE",
    "FOOT", "FEET", "HAND", "WRIST", "FOREARM", "RADIUS", "ULNA", "ELBOW", "HUMERUS",
    "SHOULDER", "HIP", "PELVIS", "FINGER", "THUMB", "TOE", "CLAVICLE", "SCAPULA",
    "SCAPHOID", "PATELLA", "CALCANEUS", "HEEL", "EXTREMITY", "EXTREMITIES", "LEG",
    "ARM", "LIMB", "SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "LUMBAR", "SACRUM",
    "COCCYX", "RIB", "STERNUM", "MSK", "SKELETAL", "SKELETON",
})
# "FEMORAL HEAD" / "HEAD OF FEMUR" are bones, not heads.
_NOT_HEAD_BEFORE = frozenset({"FEMORAL", "HUMERAL", "RADIAL", "FIBULAR", "METATARSAL"})
_LOCALIZER = frozenset({
    "SCOUT", "TOPOGRAM", "TOPO", "LOCALIZER", "LOCALISER", "SURVIEW", "SCANOGRAM",
})
_REFORMAT = frozenset({"MPR", "MIP", "MINIP", "VRT", "REFORMAT", "REFORMATS"})
# Image Type values 3 and later (PS3.3 C.7.6.1.1.2) that say the pixels were
# computed from other images: CT value 3 (C.8.2.1.1.1), Enhanced CT/MR image
# flavor and derived pixel contrast (C.8.16.1), plus the vendor terms seen in
# practice (GE REFORMATTED, Siemens MPR / PROJECTION IMAGE, perfusion maps
# RCBF/RCBV/MTT...). Each maps to the words the worklist shows.
_PROJECTION = "intensity projection (MIP/MinIP)"
_DERIVED_TERMS = {
    **dict.fromkeys(("REFORMATTED", "REFORMAT", "MPR", "CURVED", "CURVED_MPR"), "reformat"),
    **dict.fromkeys(("MIP", "MINIP", "PROJECTION IMAGE", "RAY_SUM"), _PROJECTION),
    **dict.fromkeys(("VOLUME_RENDER", "SURFACE_RENDER", "VRT"), "3D rendering"),
    **dict.fromkeys(
        ("PERFUSION", "PERFUSION_ASL", "RCBF", "RCBV", "CBF", "CBV", "MTT", "TTP", "TMAX",
         "PARAMETRIC_MAP"),
        "perfusion/parametric map",
    ),
    "SUBTRACTION": "subtraction image",
}
# Terms that are an acquisition when ORIGINAL (Enhanced CT's
# ORIGINAL\PRIMARY\VOLUME is a plain volume scan, C.8.16.1; a tilted gantry may
# give OBLIQUE) but a reformat or projection when DERIVED.
_DERIVED_ONLY_TERMS = {
    "VOLUME": "volume reformat or rendering",
    "OBLIQUE": "reformat",
    "SLAB": _PROJECTION,
    "3D": "3D rendering",
    "MAXIMUM": _PROJECTION,
    "MINIMUM": _PROJECTION,
}
_ANGIO = frozenset({
    "ANGIO", "ANGIOGRAM", "ANGIOGRAPHY", "CTA", "CTP", "CTV", "PERFUSION", "PERF", "VENOGRAM",
})
_NON_CONTRAST = (
    "NON CON", "NONCON", "NON CONTRAST", "NONCONTRAST", "W O", "WO", "WITHOUT",
    "NCCT", "NCHCT", "PLAIN",
)
_DOSE_REPORT = ("DOSE REPORT", "DOSE INFO", "PATIENT PROTOCOL")
# fmt: on

# Modalities (0008,0060) per detector family. DR is not a PS3.3 defined term
# (retired in favour of DX) but older equipment still sends it.
_CT = frozenset({"CT"})
_RADIOGRAPH = frozenset({"CR", "DX", "DR"})
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."  # every SR storage SOP class (PS3.4 B.5)
_DOSE_SR = frozenset({"1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.88.68", "1.2.840.10008.5.1.4.1.1.88.74"})
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # SC and multi-frame SC

_ROUTES = {
    ("CT", "HEAD"): (FindingKind.BLEED,),
    ("CT", "CHEST"): (FindingKind.NODULE,),
    ("CT", "SKELETAL"): (FindingKind.FRACTURE,),
    ("radiograph", "CHEST"): (FindingKind.NODULE,),
    ("radiograph", "SKELETAL"): (FindingKind.FRACTURE,),
}
_REGION_WORDS = {"HEAD": "head", "CHEST": "chest", "SKELETAL": "skeletal"}


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).replace("\x00", "").strip()


@dataclass(frozen=True)
class SeriesInfo:
    """The header values routing looks at, for one series."""

    modality: str = ""
    body_part: str = ""
    study_description: str = ""
    series_description: str = ""
    protocol_name: str = ""
    image_type: tuple[str, ...] = ()
    sop_class_uid: str = ""
    number_of_images: int | None = None
    rows: int | None = None
    columns: int | None = None

    @classmethod
    def from_dataset(cls, ds: Any, number_of_images: int | None = None) -> SeriesInfo:
        """Read one instance's dataset; missing or empty tags become ``""``/``None``.

        ``number_of_images`` is the series count known to the index, which a
        single instance cannot tell.
        """
        raw_type = ds.get("ImageType")
        if raw_type is None or raw_type == "":
            image_type: tuple[str, ...] = ()
        elif isinstance(raw_type, (str, bytes)):
            image_type = tuple(_str(raw_type).split("\\"))
        else:
            image_type = tuple(_str(v) for v in raw_type)

        def _int(keyword: str) -> int | None:
            try:
                return int(ds.get(keyword))
            except (TypeError, ValueError):
                return None

        return cls(
            modality=_str(ds.get("Modality")),
            body_part=_str(ds.get("BodyPartExamined")),
            study_description=_str(ds.get("StudyDescription")),
            series_description=_str(ds.get("SeriesDescription")),
            protocol_name=_str(ds.get("ProtocolName")),
            image_type=tuple(v.upper() for v in image_type),
            sop_class_uid=_str(ds.get("SOPClassUID")),
            number_of_images=number_of_images,
            rows=_int("Rows"),
            columns=_int("Columns"),
        )


@dataclass(frozen=True)
class Route:
    """The detectors that apply to a series, and why (or why none)."""

    detectors: tuple[FindingKind, ...]
    reason: str
    analysed: bool


def _tokens(text: str) -> list[str]:
    # Word-ish matching: "TIB/FIB", "L-SPINE", "Chest_PA" all split into words.
    return re.sub(r"[^A-Z0-9]+", " ", text.upper()).split()


def _has_phrase(text: str, phrases: Iterable[str]) -> bool:
    padded = f" {' '.join(_tokens(text))} "
    return any(f" {p} " in padded for p in phrases)


def _in(word: str, table: frozenset[str]) -> bool:
    # Plural spellings (LUNGS, RIBS, HANDS) without listing each.
    return word in table or (word.endswith("S") and word[:-1] in table)


def region_of(text: str) -> str | None:
    """The anatomy a text names: "HEAD", "CHEST", "OTHER", "SKELETAL" or None."""
    words = _tokens(text)
    found: set[str] = set()
    for i, word in enumerate(words):
        if word == "HEAD" and ((i > 0 and words[i - 1] in _NOT_HEAD_BEFORE) or words[i + 1 : i + 2] == ["OF"]):
            continue
        for name, table in (("HEAD", _HEAD), ("CHEST", _CHEST), ("OTHER", _OTHER), ("SKELETAL", _SKELETAL)):
            if _in(word, table):
                found.add(name)
    return next((r for r in ("HEAD", "CHEST", "OTHER", "SKELETAL") if r in found), None)


def _skip(reason: str) -> Route:
    return Route(detectors=(), reason=f"not analysed: {reason}", analysed=False)


def _skip_reason(info: SeriesInfo) -> str | None:
    """Why a series is no acquisition a detector can read, or None."""
    # Not the study description: it names the whole study ("LOW DOSE CHEST").
    texts = (info.series_description, info.protocol_name)
    if info.sop_class_uid in _DOSE_SR:
        return "radiation dose report (SR)"
    if info.sop_class_uid.startswith(_SR_PREFIX):
        return "structured report"
    sop = info.sop_class_uid
    # A prefix plus "." so that VL classes (...1.1.77.x) are not taken for SC.
    is_sc = sop == _SECONDARY_CAPTURE_PREFIX or sop.startswith(_SECONDARY_CAPTURE_PREFIX + ".")
    if is_sc and any("DOSE" in _tokens(t) for t in texts):
        return "radiation dose report (secondary capture)"
    if any(_has_phrase(t, _DOSE_REPORT) for t in texts):
        return "radiation dose report"
    # Before the modality test: an SC is often "OT", and "secondary capture" says more.
    if is_sc:
        return "secondary capture (a screen capture or scanned image, not an acquisition)"
    modality = info.modality.upper()
    if modality not in _CT | _RADIOGRAPH:
        return f"no detector for {modality or 'unknown modality'}"
    # ImageType value 3 LOCALIZER (PS3.3 C.8.2.1.1.1); descriptions for
    # vendors that leave it AXIAL. Only the series text: a study is not a scout.
    image_type = tuple(v.upper() for v in info.image_type)
    series_words = _tokens(info.series_description)
    if "LOCALIZER" in image_type or any(_in(w, _LOCALIZER) for w in series_words):
        return "localizer/scout"
    return _derived_reason(image_type, series_words, info.series_description)


def _derived_reason(image_type: tuple[str, ...], series_words: list[str], description: str) -> str | None:
    """Why a series is a reformat, projection or map rather than an image to read, or None.

    Value 1 DERIVED alone is not a reason (PS3.3 C.7.6.1.1.2 calls any image
    whose pixels were processed after acquisition derived, which is every CR/DX
    for presentation and many CT reconstructions); what was derived decides.
    """
    shown = "\\".join(image_type)
    # Value 2 SECONDARY: created after the examination (PS3.3 C.7.6.1.1.2).
    if image_type[1:2] == ("SECONDARY",):
        return f"derived/secondary image (Image Type {shown}: made after the examination, e.g. a reformat)"
    derived = image_type[:1] == ("DERIVED",)
    for term in image_type[2:]:
        what = _DERIVED_TERMS.get(term)
        if what is None and derived:
            what = _DERIVED_ONLY_TERMS.get(term)
        if what is not None:
            return f"derived image: {what} (Image Type {shown})"
    if any(w in _REFORMAT for w in series_words):
        return f"derived image: reformat or MIP (series description {description!r})"
    return None


def _angio_reason(info: SeriesInfo) -> str | None:
    if any(w in _ANGIO for w in _tokens(info.series_description)):
        return f"head CT angiography/perfusion (series description {info.series_description!r})"
    if _has_phrase(info.series_description, _NON_CONTRAST):
        return None
    for label, text in (("study description", info.study_description), ("protocol name", info.protocol_name)):
        if any(w in _ANGIO for w in _tokens(text)):
            return f"head CT angiography/perfusion ({label} {text!r})"
    return None


def route(info: SeriesInfo, content_check: Callable[[], str | None] | None = None) -> Route:
    """Decide which detectors apply to a series.

    Parameters
    ----------
    info
        The series' header values.
    content_check
        Called only when no tag names the anatomy and the series is not
        skipped otherwise (it may read pixels, e.g. a skull-ring test on axial
        CT); returns a body region text ("HEAD", "CHEST", "EXTREMITY") or None.

    Returns
    -------
    Route
        The detectors (possibly none), a reason for the worklist, and whether
        the series is analysed at all.
    """
    skip = _skip_reason(info)
    if skip is not None:
        return _skip(skip)
    family = "CT" if info.modality.upper() in _CT else "radiograph"
    fields = (
        ("body part", info.body_part),
        ("series description", info.series_description),
        ("study description", info.study_description),
        ("protocol name", info.protocol_name),
    )
    source = region = None
    for label, text in fields:
        region = region_of(text)
        if region is not None:
            source = f"{label} {text}" if label == "body part" else f"{label} {text!r}"
            break
    if region is None and content_check is not None:
        found = content_check()
        region = region_of(found) if found else None
        source = f"content check {found}" if region else None
    if region is None:
        described = ", ".join(f"{label} {text!r}" for label, text in fields if text)
        checked = "content check found nothing" if content_check is not None else "no content check"
        return _skip(f"anatomy unknown ({described or 'no body part or description'}; {checked})")
    detectors = _ROUTES.get((family, region))
    if detectors is None:
        what = "this anatomy" if region == "OTHER" else _REGION_WORDS[region]
        return _skip(f"no detector for {family} of {what} ({source})")
    if family == "CT" and region == "HEAD":
        angio = _angio_reason(info)
        if angio is not None:
            return _skip(angio)
    return Route(detectors=detectors, reason=f"{_REGION_WORDS[region]} {family} ({source})", analysed=True)
