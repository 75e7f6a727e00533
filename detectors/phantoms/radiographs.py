"""Projection radiograph phantoms: a PA chest with nodules, long bones with fractures.

Images are log-attenuation-like projections in [0, 1], bright = dense: each
structure adds its chord length times a density, and the sum is windowed with
a drawn exposure. Anatomy is drawn relative to the matrix; lesion sizes use the
drawn pixel spacing, so ``Lesion.size_mm`` matches what a reader measures with
the DICOM spacing. Lesions, mimics, exposure and noise come from separate random
streams, so the same ``seed`` with and without a lesion differs only at the lesion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from detectors.phantoms.truth import Lesion, XRPhantom, box_of

BONES = ("tibia_fibula", "radius_ulna", "femur")
FRACTURES = ("transverse", "oblique", "spiral", "comminuted")
# Body Part Examined defined terms (PS3.16 Annex L) and study descriptions.
STUDY = {
    "chest": ("CHEST", "XR CHEST PA", "PA"),
    "tibia_fibula": ("LEG", "XR TIBIA FIBULA 2V", "AP"),
    "radius_ulna": ("FOREARM", "XR FOREARM 2V", "AP"),
    "femur": ("FEMUR", "XR FEMUR 2V", "AP"),
}


def _streams(seed: int) -> list[np.random.Generator]:
    """Anatomy, lesion, mimic and noise streams: drawing a lesion shifts no other draw."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def _chord(q: np.ndarray) -> np.ndarray:
    """Normalised chord through an ellipsoid, given ``q`` = squared elliptic radius."""
    return np.sqrt(np.clip(1.0 - q, 0.0, None))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _exposure(rng: np.random.Generator) -> dict[str, float]:
    """Global contrast and brightness: a gamma and the output range."""
    return {"gamma": rng.uniform(0.8, 1.25), "out_lo": rng.uniform(0.0, 0.08), "out_hi": rng.uniform(0.88, 1.0)}


def _window(density: np.ndarray, ref: np.ndarray, exposure: dict[str, float]) -> np.ndarray:
    """Map ``density`` to [0, 1] by percentiles of ``ref``, the lesion-free anatomy, so a lesion moves no other pixel."""
    lo, hi = np.percentile(ref[::4, ::4], [0.5, 99.8])
    unit = np.clip((density - lo) / (hi - lo), 0.0, 1.0) ** exposure["gamma"]
    return (exposure["out_lo"] + (exposure["out_hi"] - exposure["out_lo"]) * unit).astype(np.float32)


def _add_noise(image: np.ndarray, ref: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Quantum-like noise, correlated over ~2 px by a [1, 2, 1] kernel.

    In a log image the noise grows where fewer photons arrive, i.e. in dense
    (bright) regions; its level follows ``ref`` so a lesion does not change it.
    """
    sigma = rng.uniform(0.004, 0.014)
    n = rng.standard_normal(image.shape, dtype=np.float32)
    n[1:-1] = 0.25 * n[:-2] + 0.5 * n[1:-1] + 0.25 * n[2:]
    n[:, 1:-1] = 0.25 * n[:, :-2] + 0.5 * n[:, 1:-1] + 0.25 * n[:, 2:]
    n *= (sigma / 0.375) * (0.4 + 0.8 * ref)  # 0.375: std of white noise after the kernel
    return np.clip(image + n, 0.0, 1.0).astype(np.float32), sigma


# --------------------------------------------------------------------------- chest


def _ribs(yy: np.ndarray, xx: np.ndarray, cx: float, s: float, rng: np.random.Generator) -> np.ndarray:
    """Posterior (sloping laterally down) and faint anterior ribs, each a band with cortical edges."""
    out = np.zeros(yy.shape, dtype=np.float32)
    x1, y1 = xx[0], yy[:, 0]
    rows = len(y1)
    w, e = rng.uniform(0.011, 0.015), 0.0035  # half-width, cortex (fractions of the height)
    top, step = rng.uniform(0.10, 0.13), rng.uniform(0.058, 0.066)
    for side in (-1.0, 1.0):
        t = side * (x1 - cx) / (0.86 * s)  # 0 at the spine, 1 at the lateral chest wall
        inside = (t > 0.06) & (t < 1.0)
        taper = _sigmoid((t - 0.1) / 0.02) * _sigmoid((0.97 - t) / 0.015)  # no hard ends at spine or wall
        for k in range(10):
            y0 = top + k * step + rng.normal(0.0, 0.004)
            for centre, amp, keep in (
                (y0 - 0.07 * t + 0.17 * t**2, 0.2, inside),  # posterior
                (y0 + 0.10 + 0.20 * np.clip(1.0 - t, 0.0, None) ** 1.4, 0.10, inside & (t > 0.35)),  # anterior
            ):
                r0 = max(int((centre[keep].min() - 2 * w) * rows), 0) if keep.any() else rows
                r1 = min(int((centre[keep].max() + 2 * w) * rows) + 1, rows)
                if r0 >= r1:
                    continue
                d = np.abs(y1[r0:r1, None] - centre[None, :])
                band = _sigmoid((w - d) / 0.002) * 0.55 + np.exp(-(((d - w + e) / e) ** 2))
                out[r0:r1] += amp * band * (keep * taper)[None, :]
    return out


def chest_radiograph(
    seed: int,
    *,
    nodule: bool | None = None,
    diameter_mm: float | None = None,
    rows: int | None = None,
    pixel_spacing_mm: float | None = None,
) -> XRPhantom:
    """A PA chest radiograph, optionally with one solid pulmonary nodule.

    Parameters
    ----------
    seed : int
        Seed; the same seed and arguments give the same phantom, and the same
        seed with ``nodule=True`` / ``False`` differ only around the nodule.
    nodule : bool or None
        Whether to place a nodule; drawn (p = 0.5) when None.
    diameter_mm : float or None
        Nodule diameter; drawn from 5-30 mm (capped to fit the lung) when None.
    rows : int or None
        Matrix height; drawn from 768-1024 when None. Columns are 0.85-1.0 x rows.
    pixel_spacing_mm : float or None
        Square pixel spacing; drawn from 0.36-0.44 mm when None, so that a
        768-1024 matrix covers a real chest (~300-450 mm): a detector panel
        of 0.14-0.2 mm pixels, downsampled.

    Returns
    -------
    XRPhantom
        ``image`` (rows, cols) float32 in [0, 1]; at most one Lesion of kind
        "nodule", subtype "solid", ``size_mm`` = diameter; ``mask`` the nodule's
        disc (all False without one); drawn parameters in ``notes``.
    """
    rng, rng_n, _, rng_noise = _streams(seed)
    rows = int(rows or rng.integers(768, 1025))
    cols = int(rows * rng.uniform(0.85, 1.0))
    spacing = float(pixel_spacing_mm or rng.uniform(0.36, 0.44))
    s, cx, dy = rng.uniform(0.8, 0.95), rng.uniform(-0.05, 0.05), rng.uniform(-0.03, 0.03)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    yy, xx = yy / rows - dy, xx / cols * 2.0 - 1.0  # y: 0 (top) to 1; x: -1 (patient right) to 1

    half_w = 0.3 * s + 0.62 * s * np.clip((yy - 0.02) / 0.16, 0.0, 1.0) ** 0.5  # neck to chest wall
    density = 1.0 * _chord(((xx - cx) / half_w) ** 2)
    heart_c = (cx + rng.uniform(0.08, 0.16) * s, rng.uniform(0.56, 0.62))
    heart_q = ((xx - heart_c[0]) / (rng.uniform(0.27, 0.34) * s)) ** 2 + ((yy - heart_c[1]) / rng.uniform(0.16, 0.2)) ** 2
    medi = _sigmoid((rng.uniform(0.1, 0.13) * s - np.abs(xx - cx - 0.02)) / 0.01) * _sigmoid((0.62 - yy) / 0.02)
    air = np.zeros_like(xx)
    lung_geo = []
    for side in (-1.0, 1.0):  # image left = patient right (PA)
        lx, lw = cx + side * 0.42 * s, rng.uniform(0.32, 0.37) * s
        ly, lh = 0.5, rng.uniform(0.38, 0.42)
        dome = rng.uniform(0.72, 0.78) + (0.02 if side > 0 else 0.0) + 0.12 * ((xx - lx) / lw) ** 2
        lung = _chord(((xx - lx) / lw) ** 2 + ((yy - ly) / lh) ** 2) ** 0.35 * _sigmoid((dome - yy) / 0.006)
        air += lung
        lung_geo.append((lx, lw))
    air *= (1.0 - _sigmoid((1.0 - heart_q) / 0.08)) * (1.0 - medi)
    density -= 0.75 * air
    density += 0.35 * _chord(heart_q) + 0.3 * medi
    spine = _chord(((xx - cx) / (0.07 * s)) ** 2)
    density += 0.45 * spine * (1.0 + 0.12 * np.cos(2 * np.pi * yy / rng.uniform(0.055, 0.065)))
    density += _ribs(yy, xx, cx, s, rng)
    for side in (-1.0, 1.0):  # clavicles: from the sternal notch up and out
        t = side * (xx[0] - cx) / (0.55 * s)
        centre = 0.14 - 0.06 * t + 0.02 * np.sin(np.pi * t)
        d = np.abs(yy - centre[None, :])
        density += 0.3 * (_sigmoid((0.013 - d) / 0.002) * 0.6 + np.exp(-(((d - 0.01) / 0.003) ** 2))) * ((t > 0.12) & (t < 1.0))
    breasts = bool(rng.random() < 0.4)
    if breasts:
        for side in (-1.0, 1.0):
            density += 0.15 * _chord(((xx - cx - side * 0.45 * s) / (0.3 * s)) ** 2 + ((yy - 0.74) / 0.14) ** 2)

    exposure = _exposure(rng)
    base = _window(density, density, exposure)
    image = base.copy()
    lesions: list[Lesion] = []
    # Nodule draws happen whether or not a nodule is placed, for the same-seed pairing.
    want = bool(rng_n.random() < 0.5) if nodule is None else nodule
    drawn_mm = rng_n.uniform(5.0, 30.0)
    amp = rng_n.uniform(0.025, 0.06) * (exposure["out_hi"] - exposure["out_lo"])
    lung_px = min(lw for _, lw in lung_geo) * cols  # a lung's full width in pixels, about
    diam = float(diameter_mm) if diameter_mm is not None else min(drawn_mm, 0.45 * lung_px * spacing)
    radius = diam / spacing / 2.0
    inside = air > 0.5
    cand = np.flatnonzero(inside.ravel())
    picks = cand[rng_n.integers(0, cand.size, 64)]
    ring = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    best, best_hits = picks[0], -1
    for p in picks:  # first centre whose disc lies in the lung; else the best one
        r, c = divmod(int(p), cols)
        rr = np.clip((r + 0.8 * radius * np.sin(ring)).astype(int), 0, rows - 1)
        cc = np.clip((c + 0.8 * radius * np.cos(ring)).astype(int), 0, cols - 1)
        hits = int(inside[rr, cc].sum())
        if hits > best_hits:
            best, best_hits = p, hits
        if hits == ring.size:
            break
    disc = np.zeros((1, rows, cols), dtype=bool)  # the nodule's pixels; empty without one
    if want:
        r, c = divmod(int(best), cols)
        pad = int(radius * 1.6) + 4
        r0, r1, c0, c1 = max(r - pad, 0), min(r + pad + 1, rows), max(c - pad, 0), min(c + pad + 1, cols)
        py, px = np.mgrid[r0:r1, c0:c1]
        dist = np.hypot(py - r, px - c)
        edge = 0.12 * radius + 0.5  # soft edge
        image[r0:r1, c0:c1] += amp * _sigmoid((radius - dist) / edge) * _chord((dist / (radius + 3 * edge)) ** 2) ** 0.5
        disc[0, r0:r1, c0:c1] = dist <= radius
        lesions.append(Lesion(kind="nodule", subtype="solid", slices=(0, 0), box=box_of(disc)[1], size_mm=diam))
    image, sigma = _add_noise(image, base, rng_noise)
    notes: dict[str, object] = {"patient_scale": s, "shift": (dy, cx), "breast_shadows": breasts, "noise_sigma": sigma, **exposure}
    if want:
        notes["nodule_contrast"] = amp
    return XRPhantom(image=image, pixel_spacing_mm=spacing, lesions=lesions, body_part="CHEST", notes=notes, mask=disc[0])


# --------------------------------------------------------------------------- long bones


@dataclass(frozen=True)
class _Bone:
    """A long bone in pixels: centre, axis tilt, half length, shaft radius, ends."""

    xc: float
    yc: float
    theta: float  # axis tilt from vertical, radians
    half_len: float
    radius: float  # outer shaft radius
    cortex: float  # cortical thickness at mid-shaft
    widen: float  # end radius / shaft radius
    medulla: float = 0.35  # medullary density relative to cortex

    def frame(self, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates along (u, down) and across (v) the axis."""
        dy, dx = yy - self.yc, xx - self.xc
        c, s = np.cos(self.theta), np.sin(self.theta)
        return dy * c + dx * s, dx * c - dy * s

    def radii(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Outer and inner radius and "endness" (0 mid-shaft, 1 at the ends) at ``u``."""
        to_end = self.half_len - np.abs(u)
        end = np.exp(-((np.clip(to_end, 0, None) / (0.14 * self.half_len)) ** 2))
        r_out = self.radius * (1.0 + (self.widen - 1.0) * end)
        cap = r_out * 0.6  # rounded articular ends
        r_out = r_out * np.sqrt(np.clip(1.0 - (np.clip(cap - to_end, 0, None) / cap) ** 2, 0.0, None))
        r_in = np.clip(r_out - self.cortex * (1.0 - 0.7 * end), 0.0, None)
        return r_out, r_in, end

    def density(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Projected density of a hollow cylinder: bright cortical rim, lighter medulla."""
        r_out, r_in, end = self.radii(u)
        outer = 2 * np.sqrt(np.clip(r_out**2 - v**2, 0.0, None))
        inner = 2 * np.sqrt(np.clip(r_in**2 - v**2, 0.0, None))
        return (outer - inner) + (self.medulla + 0.3 * end) * inner


_Line = tuple[Callable[[np.ndarray], np.ndarray], float, float]  # u = f(v) for v in [lo, hi]


def _line_px(f: Callable[[np.ndarray], np.ndarray], v_lo: float, v_hi: float) -> float:
    """Arc length, in pixels, of u = f(v) over [v_lo, v_hi]."""
    v = np.linspace(v_lo, v_hi, 64)
    return float(np.hypot(np.diff(f(v)), np.diff(v)).sum())


def _straight(u0: float, slope: float, v0: float = 0.0) -> Callable[[np.ndarray], np.ndarray]:
    """The line u = u0 + slope * (v - v0)."""
    return lambda v: u0 + slope * (v - v0)


def _fracture_lines(kind: str, uf: float, r: float, rng: np.random.Generator) -> list[_Line]:
    """Fracture lines as ``(f, v_lo, v_hi)``: u = f(v) in bone coordinates, first = main line."""
    sign = rng.choice([-1.0, 1.0])
    if kind == "transverse":
        a, w = np.tan(np.radians(rng.uniform(0, 8))) * sign, rng.uniform(0.02, 0.06) * r
        return [(lambda v: uf + a * v + w * np.sin(3 * v / r), -r, r)]
    if kind == "oblique":
        a = np.tan(np.radians(rng.uniform(30, 60))) * sign
        return [(_straight(uf, a), -r, r)]
    if kind == "spiral":
        a, b = np.tan(np.radians(rng.uniform(55, 68))) * sign, rng.uniform(0.3, 0.5) * r
        return [(lambda v: uf + a * v + b * np.sin(np.pi * v / r), -r, r)]
    a = np.tan(np.radians(rng.uniform(0, 15))) * sign
    lines: list[_Line] = [(_straight(uf, a), -r, r)]
    for _ in range(int(rng.integers(2, 4))):  # wedge and splinters off the main line
        v0 = rng.uniform(-0.6, 0.6) * r
        slope = np.tan(np.radians(rng.uniform(35, 65))) * rng.choice([-1.0, 1.0])
        side = 1.0 if slope * (r - v0) > 0 else -1.0
        lo, hi = sorted((v0, side * r))
        lines.append((_straight(uf + a * v0, slope, v0), lo, hi))
    return lines


def extremity_radiograph(
    seed: int,
    *,
    bone: str | None = None,
    fracture: str | None = None,
    displaced: bool | None = None,
    rows: int | None = None,
    pixel_spacing_mm: float | None = None,
) -> XRPhantom:
    """An AP long-bone radiograph, normal or with one fracture, with non-fracture mimics.

    Parameters
    ----------
    seed : int
        Seed; the same seed with and without ``fracture`` gives the same anatomy and mimics.
    bone : {"tibia_fibula", "radius_ulna", "femur"} or None
        Drawn when None.
    fracture : {"transverse", "oblique", "spiral", "comminuted"} or None
        None draws a normal study.
    displaced : bool or None
        Shift and angulate the distal fragment; drawn (p = 0.4) when None.
    rows : int or None
        Matrix height, drawn from 768-1024; columns are 0.5-0.65 x rows.
    pixel_spacing_mm : float or None
        Drawn from 0.25-0.4 mm when None (a 200-400 mm field, downsampled).

    Returns
    -------
    XRPhantom
        One Lesion(kind="fracture", subtype=fracture) when fractured, its box
        around the fracture lines and ``size_mm`` the longest line's length;
        ``mask`` those lines widened to about 2 mm, on the bone (all False when normal).
        ``notes["mimics"]`` lists nutrient canals, growth plates, overlapping
        bones and benign lesions (never lesions), each with a box.
    """
    if bone is not None and bone not in BONES:
        raise ValueError(f'Argument "bone" must be one of {BONES}, got {bone!r}')
    if fracture is not None and fracture not in FRACTURES:
        raise ValueError(f'Argument "fracture" must be one of {FRACTURES} or None, got {fracture!r}')
    rng, rng_f, rng_m, rng_noise = _streams(seed)
    bone = bone or str(rng.choice(BONES))
    rows = int(rows or rng.integers(768, 1025))
    cols = int(rows * rng.uniform(0.5, 0.65))
    spacing = float(pixel_spacing_mm or rng.uniform(0.25, 0.4))  # a 200-400 mm field, downsampled
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    r = cols * (0.11 if bone == "femur" else 0.085) * rng.uniform(0.85, 1.1)
    main = _Bone(
        xc=cols * rng.uniform(0.42, 0.5),
        yc=rows * rng.uniform(0.48, 0.52),
        theta=np.radians(rng.uniform(-4, 4)),
        half_len=rows * rng.uniform(0.36, 0.4),
        radius=r,
        cortex=r * rng.uniform(0.3, 0.45),
        widen=rng.uniform(1.5, 1.9),
    )
    age = int(rng.integers(4, 90))
    mimics: list[dict[str, object]] = []
    overlap = bone != "femur" and bool(rng_m.random() < 0.3)
    bones = [main]
    if bone != "femur":
        r2 = r * rng.uniform(0.45, 0.6)
        off = r + r2 + r * rng.uniform(0.3, 0.6)
        tilt = np.arctan(2.2 * off / (2 * main.half_len)) if overlap else 0.0
        second = replace(
            main,
            xc=main.xc + off * (0.0 if overlap else 1.0),
            radius=r2,
            cortex=r2 * 0.4,
            theta=main.theta + tilt,
            half_len=main.half_len * 0.97,
            widen=1.4,
        )
        if overlap:
            mimics.append(
                {"kind": "overlapping_bones", "box": (int(rows * 0.35), int(main.xc - 2 * r), int(rows * 0.65), int(main.xc + 2 * r))}
            )
        bones.append(second)
    gap = r * rng.uniform(0.15, 0.3)  # joint space
    ends = [
        replace(
            main,
            yc=main.yc + sign * (2 * main.half_len + gap),
            xc=main.xc + (r if bone != "femur" else 0.0),
            radius=r * 1.8,
            widen=1.1,
            cortex=r * 0.25,
        )
        for sign in (-1.0, 1.0)
    ]
    soft_r = (2.6 if bone != "femur" else 2.8) * r * rng.uniform(0.95, 1.15)
    u0, v0 = main.frame(yy, xx)
    density = 0.1 * 2 * soft_r * _chord(((v0 - 0.6 * r) / soft_r) ** 2 / (1.0 + 0.15 * np.cos(np.pi * u0 / rows)))
    for b in bones[1:] + ends:
        density += b.density(*b.frame(yy, xx))
    factor = np.ones_like(u0)  # multiplicative mimics on the main bone
    extra = np.zeros_like(u0)
    if age < 16:
        for sign in (-1.0, 1.0):
            up = sign * (main.half_len - main.radius * main.widen * rng_m.uniform(0.5, 0.8))
            d = np.abs(u0 - up - 0.03 * r * np.sin(v0 / r * 4))
            factor *= 1.0 - 0.55 * np.exp(-((d / rng_m.uniform(1.5, 3.0)) ** 2))
            mimics.append({"kind": "growth_plate", "box": box_of((d < 3.0)[None] & (main.density(u0, v0) > 0)[None])[1]})
    if rng_m.random() < 0.5 or not mimics:
        side, un = rng_m.choice([-1.0, 1.0]), rng_m.uniform(-0.45, 0.45) * main.half_len
        slope = np.tan(np.radians(rng_m.uniform(60, 75)))
        r_out, r_in, _ = main.radii(u0)
        sv = side * v0
        d = np.abs(u0 - un - slope * (sv - r_in)) / np.hypot(1.0, slope)
        canal = (d < 2.5) & (sv >= r_in - 0.5) & (sv <= r_out + 0.5)  # one cortex only
        factor *= 1.0 - 0.5 * np.exp(-((d / 1.0) ** 2)) * canal
        mimics.append({"kind": "nutrient_canal", "box": box_of(canal[None])[1], "u": float(un)})
    if rng_m.random() < 0.3:
        ub, au = rng_m.uniform(-0.5, 0.5) * main.half_len, r * rng_m.uniform(0.6, 1.4)
        av = main.radius - main.cortex
        q = ((u0 - ub) / au) ** 2 + (v0 / (av * rng_m.uniform(0.55, 0.8))) ** 2
        extra += -0.8 * main.medulla * 2 * av * _chord(q) + 0.5 * av * np.exp(-(((np.sqrt(q) - 1.0) / 0.08) ** 2))
        mimics.append({"kind": "benign_lesion", "box": box_of((q <= 1.1)[None])[1], "u": float(ub)})
    intact = density + main.density(u0, v0) * factor + extra

    lesions: list[Lesion] = []
    lesion_mask = np.zeros(u0.shape, dtype=bool)
    full = density
    # Fracture draws happen for normal studies too, for the same-seed pairing.
    kind = fracture or "transverse"
    taken = [u for u in (m.get("u") for m in mimics) if isinstance(u, float)]
    for _ in range(20):  # away from mimics, in the shaft
        uf = rng_f.uniform(-0.5, 0.5) * main.half_len
        if all(abs(uf - t) > 2.5 * r for t in taken):
            break
    lines = _fracture_lines(kind, uf, r, rng_f)
    shift = displaced if displaced is not None else bool(rng_f.random() < 0.4)
    dv, du, ang = rng_f.uniform(0.2, 0.8) * r * rng_f.choice([-1, 1]), rng_f.uniform(-0.1, 0.2) * r, np.radians(rng_f.uniform(-8, 8))
    width, depth = rng_f.uniform(1.0, 2.0), rng_f.uniform(0.6, 0.85)
    if fracture is None:
        full = intact
    else:
        dist = np.full(u0.shape, np.inf, dtype=np.float32)
        for f, lo, hi in lines:
            vv = np.clip(v0, lo, hi)
            slope = f(vv + 0.5) - f(vv - 0.5)
            d = np.abs(u0 - f(vv)) / np.sqrt(1.0 + slope**2) + np.abs(v0 - vv)
            dist = np.minimum(dist, d)
        bone_density = main.density(u0, v0)
        if shift:
            distal = u0 > lines[0][0](v0)
            c, s = np.cos(ang), np.sin(ang)
            ud, vd = u0 - uf - du, v0 - dv
            moved = main.density(c * ud + s * vd + uf, c * vd - s * ud)
            bone_density = np.where(distal, moved, bone_density)
        crack = 1.0 - depth * np.exp(-((dist / width) ** 2))
        full = density + bone_density * factor * crack + extra
        on_bone = main.density(u0, v0) > 0  # the undisplaced bone, for the box and the mask alike
        on_line = (dist < 2 * width) & on_bone
        r0, c0, r1, c1 = box = box_of(on_line[None])[1]
        # The drawn crack is 0.4-1.3 mm wide (FWHM), a thin target for a heatmap: label the lines
        # widened to about 2 mm, kept inside the box (a thin crack's box can be a pixel or two
        # narrower). Mimics are not in ``dist``, so they never enter the mask.
        lesion_mask[r0:r1, c0:c1] = ((dist <= 1.0 / spacing) & on_bone)[r0:r1, c0:c1]
        r_at = float(main.radii(np.array(uf))[0])  # the lines' extent is clipped to the bone
        size_px = max(_line_px(f, max(lo, -r_at), min(hi, r_at)) for f, lo, hi in lines)
        lesions.append(Lesion(kind="fracture", subtype=kind, slices=(0, 0), box=box, size_mm=size_px * spacing))

    exposure = _exposure(rng)
    base = _window(intact, intact, exposure)
    image, sigma = _add_noise(_window(full, intact, exposure), base, rng_noise)
    notes: dict[str, object] = {
        "bone": bone,
        "age": age,
        "mimics": [{k: v for k, v in m.items() if k != "u"} for m in mimics],
        "noise_sigma": sigma,
        **exposure,
    }
    if fracture is not None:
        notes["displaced"] = shift
        if shift:
            notes["displacement_mm"] = float(np.hypot(dv, du) * spacing)
            notes["angulation_deg"] = float(np.degrees(ang))
    return XRPhantom(image=image, pixel_spacing_mm=spacing, lesions=lesions, body_part=STUDY[bone][0], notes=notes, mask=lesion_mask)
