"""A seeded non-contrast head CT phantom in HU, with intracranial bleeds as ground truth.

Anatomy is built slice by slice along z (skull base at index 0, vertex at the
end) from an elliptical head whose size varies with z: scalp, a skull ring with
diploe, grey/white matter with gyral texture and sulcal CSF, lateral ventricles,
falx, basal cisterns, sinus and mastoid air, and normal calcifications (pineal,
choroid plexus, falx specks) that are bright mimics, never findings. Scanner
effects vary as they do between real scanners: field of view, matrix, slice
thickness, noise, kernel sharpness, head holder and beam-hardening streaks.

Three independent random streams keep a bleed from changing anything else: the
same seed with and without ``bleed`` gives the same anatomy and noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from detectors.phantoms.kernel import blur_inplane
from detectors.phantoms.truth import CTPhantom, Lesion, box_of

SUBTYPES = ("epidural", "subdural", "intraparenchymal", "subarachnoid", "intraventricular")
THICKNESSES_MM = (0.625, 1.0, 1.25, 2.5, 3.0, 5.0)
MAX_AUTO_SLICES = 48  # keeps a drawn 256-matrix phantom well under a second

Frac = np.ndarray  # (slices, rows, cols), float32 in [0, 1], fraction of a voxel


def head_ct(
    seed: int,
    *,
    bleed: str | None = None,
    slices: int | None = None,
    matrix: int | None = None,
    slice_thickness_mm: float | None = None,
    pixel_spacing_mm: float | None = None,
    volume_ml: float | None = None,
    noise_hu: float | None = None,
) -> CTPhantom:
    """Build a head CT phantom.

    Parameters
    ----------
    seed
        Seeds every drawn parameter; same arguments give identical arrays.
    bleed
        None, ``"random"`` or one of :data:`SUBTYPES`.
    slices, matrix, slice_thickness_mm, pixel_spacing_mm, noise_hu
        Override the drawn acquisition. ``matrix`` is 256 or 512. Without
        ``slices`` the series covers 125-145 mm of head, at most 48 slices
        (thin slices then cover a centred slab).
    volume_ml
        Requested bleed volume; drawn log-uniformly when None (0.5-60 mL;
        0.5-20 mL for subarachnoid and intraventricular). A bleed cannot
        outgrow its space: intraventricular blood stops at a cast of both
        ventricles (about 8-20 mL). The ground truth reports the measured volume.

    Returns
    -------
    CTPhantom
        ``hu`` is (slices, rows, cols) float32 HU clipped to [-1024, 3071];
        ``mask`` the bleed's voxels (blood fraction >= 0.5; all False without a
        bleed); ``notes`` holds every drawn parameter.
    """
    if bleed is not None and bleed != "random" and bleed not in SUBTYPES:
        raise ValueError(f'Argument "bleed" must be None, "random" or one of {SUBTYPES}, got {bleed!r}')
    if matrix is not None and matrix not in (256, 512):
        raise ValueError(f'Argument "matrix" must be 256 or 512, got {matrix}')
    if volume_ml is not None and volume_ml <= 0:
        raise ValueError(f'Argument "volume_ml" must be positive, got {volume_ml}')
    rng = np.random.default_rng([seed, 0])  # anatomy and acquisition
    rng_noise = np.random.default_rng([seed, 1])
    rng_bleed = np.random.default_rng([seed, 2])

    # --- acquisition and head geometry (mm) ---
    matrix = matrix or int(rng.choice([256, 512], p=[0.7, 0.3]))
    a_lr, b_ap = rng.uniform(66, 76), rng.uniform(84, 95)  # outer skull semi-axes at the widest level
    scalp, skull_t = rng.uniform(4, 7), rng.uniform(5, 8)
    vertex = rng.uniform(118, 136)  # skull base (z=0) to vertex
    off = (rng.uniform(-8, 8), rng.uniform(-8, 8))  # head centre offset (row, col), mm
    theta = float(np.deg2rad(rng.uniform(-8, 8)))  # in-plane rotation
    lo = (2 * (b_ap + scalp) + 2 * max(map(abs, off)) + 16) / matrix  # keep the head in the FOV
    px = pixel_spacing_mm or float(rng.uniform(max(lo, 0.8 * 256 / matrix), max(lo, 1.0 * 256 / matrix)))
    coverage = vertex + rng.uniform(6, 10)
    thick = slice_thickness_mm or (coverage / slices if slices else float(rng.choice(THICKNESSES_MM)))
    n = slices or int(min(round(coverage / thick), MAX_AUTO_SLICES))
    z0 = -4.0 if n * thick >= coverage - 1 else 0.45 * vertex - n * thick / 2  # slab start, mm
    noise = noise_hu if noise_hu is not None else float(rng.uniform(3, 12))
    kernel_sigma_px = float(rng.uniform(0.35, 1.1))
    gm, wm, csf = rng.uniform(35, 45), rng.uniform(22, 30), rng.uniform(2, 12)

    # Coordinates: u left-right, v anterior(-) to posterior(+), z up; (1,R,C) and (n,1,1).
    idx = (np.arange(matrix, dtype=np.float32) - (matrix - 1) / 2) * px
    yy, xx = idx[None, :, None] - off[0], idx[None, None, :] - off[1]
    cos_t, sin_t = float(np.cos(theta)), float(np.sin(theta))
    u = cos_t * xx + sin_t * yy  # (1, R, C) mm
    v = -sin_t * xx + cos_t * yy
    z = (z0 + (np.arange(n, dtype=np.float32) + 0.5) * thick)[:, None, None]  # (n, 1, 1) mm
    zm = 0.45 * vertex
    s = np.where(
        z < zm, 0.8 + 0.2 * np.sin(np.pi / 2 * np.clip(z, 0, zm) / zm), np.sqrt(np.clip(1 - ((z - zm) / (vertex - zm)) ** 2, 0, 1))
    ).astype(np.float32)
    s = np.where(z < -2, 0.0, s)  # below the base: neck is out of this phantom
    a, b = np.maximum(a_lr * s, 1e-3), np.maximum(b_ap * s, 1e-3)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)  # (n, R, C), 1 on the outer table
    d = (1 - rho) * np.sqrt(a * b)  # approx. depth below the outer table, mm
    t_z = skull_t * (1 + 1.2 * np.exp(-np.clip(z, 0, None) / 18))  # thicker skull base
    di = d - t_z  # depth below the inner table, mm (positive = intracranial)

    def frac(signed_mm: np.ndarray) -> Frac:
        """Partial-volume fraction from a signed distance (mm, positive inside)."""
        return np.clip(signed_mm / px + 0.5, 0, 1).astype(np.float32)

    def blob(cu: float, cv: float, cz: float, ru: float, rv: float, rz: float) -> tuple[slice, Frac]:
        """Ellipsoid fraction on the slices it touches (a z slab, for speed)."""
        rz = max(rz, 0.6 * thick)  # thick slices still catch small blobs (partial volume in z)
        k0, k1 = int(np.clip((cz - rz - z0) / thick - 1, 0, n)), int(np.clip((cz + rz - z0) / thick + 1, 0, n))
        zs = slice(k0, k1)
        r = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 + ((z[zs] - cz) / rz) ** 2)
        return zs, frac((1 - r) * min(ru, rv))

    hu = np.full((n, matrix, matrix), -1000.0, dtype=np.float32)

    def paint(f: Frac, value: float | np.ndarray, zs: slice = slice(None)) -> None:
        """Mix ``value`` into the voxels by fraction ``f`` (partial volume)."""
        hu[zs] += f * (value - hu[zs])

    # Head holder: a curved carbon/plastic cradle under (posterior to) the head.
    r_h, holder_hu = b_ap + scalp + rng.uniform(6, 14), float(rng.uniform(100, 300))
    rr = np.sqrt(u**2 + v**2)
    cradle = frac(2.5 - np.abs(rr - r_h)) * (v > 0.45 * r_h)
    paint(np.broadcast_to(cradle, hu.shape), holder_hu)
    paint(frac(d + scalp), 40.0 + rng.uniform(-5, 5))  # scalp
    bone_hu, diploe_hu = float(rng.uniform(1200, 1800)), float(rng.uniform(300, 600))
    paint(frac(d), bone_hu)  # cortical bone
    paint(frac(np.minimum(d - 0.3 * t_z, 0.7 * t_z - d)), diploe_hu)

    # Brain: grey near the cortex, white deeper, gyral texture from low-frequency waves.
    k = 8
    tex = np.zeros(hu.shape, dtype=np.float32)
    for _ in range(k):
        direction = rng.normal(size=3)
        wu, wv, wz = (float(w) for w in direction / np.linalg.norm(direction) * 2 * np.pi / rng.uniform(9, 22))
        tex += np.cos((wu * u + wv * v) + (wz * z + rng.uniform(0, 2 * np.pi)))  # in-plane part once, z broadcast
    tex /= np.sqrt(k / 2)  # ~unit variance
    brain = frac(di)
    w = np.clip((di - 2.5) / 7, 0, 1)
    paint(brain, gm * (1 - w) + wm * w + 2.0 * tex)
    sulci = np.maximum(np.clip((tex - 0.9) / 0.3, 0, 1) * frac(14 - di), frac(1.5 - di))
    cv_c, cz_c = 2.0, 0.30 * vertex  # basal cisterns: a ring around the midbrain
    ring = np.sqrt(u**2 + ((v - cv_c) / 1.2) ** 2)
    cistern = frac(np.minimum(2.5 - np.abs(ring - 15), 6 - np.abs(z - cz_c)))
    csf_space = np.maximum(sulci, cistern) * brain  # where subarachnoid blood can go
    paint(csf_space, csf)

    # Lateral ventricles: two ellipsoids bowed outward (curved), mid slices.
    v_lr, v_ap, v_z = rng.uniform(4, 7), rng.uniform(22, 30), rng.uniform(10, 14)
    vent_z = 0.52 * vertex
    ventricles = []
    for side in (-1, 1):
        bow = side * (6 + 0.006 * (v - 2) ** 2)  # horns diverge anteriorly and posteriorly
        r = np.sqrt(((u - bow) / v_lr) ** 2 + ((v - 2) / v_ap) ** 2 + ((z - vent_z) / v_z) ** 2)
        ventricles.append(frac((1 - r) * v_lr))
    paint(np.maximum(*ventricles), csf)
    paint(frac(0.6 - np.abs(u)) * brain * ((z > vent_z + v_z) | (np.abs(v - 2) > v_ap + 4)), float(rng.uniform(60, 100)))

    # Skull base: sinus air anteriorly, petrous bone with mastoid air laterally.
    for side in (-1, 1):
        pu, pv, pz = side * 0.62 * a_lr, 0.25 * b_ap, 0.16 * vertex
        zs, f = blob(pu, pv, pz, 16, 8, 9)
        paint(f, 1400.0, zs)  # petrous ridge
        zs, f = blob(pu * 1.05, pv + 6, pz, 6, 5, 6)
        paint(f, float(rng.uniform(-1000, -900)), zs)  # mastoid cells
        zs, f = blob(side * 12, -0.72 * b_ap, 0.12 * vertex, 10, 9, 12)
        paint(f, float(rng.uniform(-1000, -900)), zs)  # ethmoid/maxillary
    zs, f = blob(0, -0.78 * b_ap, 0.27 * vertex, 12, 6, 8)
    paint(f, float(rng.uniform(-1000, -900)), zs)  # frontal sinus

    # Normal calcifications: bright mimics, deliberately not in the lesions list.
    zs, f = blob(0, 2 + 0.4 * v_ap, vent_z - 0.6 * v_z, 2.5, 2.5, 2.5)
    paint(f, float(rng.uniform(150, 400)), zs)  # pineal
    for side in (-1, 1):  # choroid plexus in the atria
        zs, f = blob(side * (6 + 0.006 * (0.7 * v_ap) ** 2), 2 + 0.7 * v_ap, vent_z, 2, 3, 3)
        paint(f * brain[zs], float(rng.uniform(120, 250)), zs)
    for _ in range(int(rng.integers(0, 3))):  # falx specks
        zs, f = blob(0, rng.uniform(-50, 50), rng.uniform(0.7, 0.9) * vertex, 1.2, 2, 2)
        paint(f * brain[zs], 300.0, zs)

    # Beam hardening: dark streaks between the petrous bones on low slices.
    streak = np.zeros((1,) + hu.shape[1:], dtype=np.float32)
    for _ in range(int(rng.integers(1, 4))):
        ang, depth = rng.uniform(-0.15, 0.15), rng.uniform(15, 45)
        dist = np.abs(-np.sin(ang) * u + np.cos(ang) * (v - 0.25 * b_ap))
        streak -= depth * np.exp(-0.5 * (dist / rng.uniform(1.0, 2.5)) ** 2)
    hu += streak * np.exp(-0.5 * ((z - 0.16 * vertex) / 10) ** 2) * brain

    lesions: list[Lesion] = []
    lesion_mask = np.zeros(hu.shape, dtype=bool)
    if bleed is not None:
        subtype = str(rng_bleed.choice(SUBTYPES)) if bleed == "random" else bleed
        cap = 20.0 if subtype in ("subarachnoid", "intraventricular") else 60.0
        target = volume_ml or float(np.exp(rng_bleed.uniform(np.log(0.5), np.log(cap))))
        ctx = {
            "u": u,
            "v": v,
            "z": z,
            "di": di,
            "brain": brain,
            "csf_space": csf_space,
            "ventricles": ventricles,
            "a": a_lr,
            "b": b_ap,
            "t": skull_t,
            "vertex": vertex,
            "z_lim": (float(z[0, 0, 0]), float(z[-1, 0, 0])),
            "frac": frac,
            "voxel_ml": thick * px * px / 1000,
            "rng": rng_bleed,
        }
        f_blood, f_edema, value = _bleed(subtype, target, ctx)
        if f_edema is not None:
            paint(f_edema, float(rng_bleed.uniform(15, 20)))
        paint(f_blood, value)
        # Blood is painted last and its fraction is already clipped to its space (brain, CSF,
        # a ventricle), so this is the blood the image shows.
        mask = f_blood >= 0.5
        if not mask.any():  # a sub-voxel bleed still marks its strongest voxel
            mask = f_blood == f_blood.max()
        lesion_mask = mask
        (z_first, z_last), box = box_of(mask)
        pts = np.argwhere(mask) * np.array([thick, px, px])
        size = float(np.ptp(pts, axis=0).max() + px) if len(pts) else px
        lesions.append(Lesion("bleed", subtype, (z_first, z_last), box, round(size, 1), round(float(mask.sum()) * ctx["voxel_ml"], 3)))
        notes_bleed = {"bleed": subtype, "bleed_hu": round(value, 1), "requested_volume_ml": round(target, 3)}
    else:
        notes_bleed = {"bleed": None}

    # Scanner: kernel blur (separable, in-plane), then noise smoothed by the same kernel.
    hu = blur_inplane(hu, kernel_sigma_px)
    hu += blur_inplane(noise * rng_noise.standard_normal(hu.shape, dtype=np.float32), 0.5 * kernel_sigma_px)
    np.clip(hu, -1024, 3071, out=hu)
    rc = [(matrix - 1) / 2 + off[0] / px, (matrix - 1) / 2 + off[1] / px]
    notes = {
        "seed": seed,
        "matrix": matrix,
        "pixel_spacing_mm": round(px, 4),
        "slice_thickness_mm": thick,
        "slices": n,
        "slab_start_mm": round(z0, 2),
        "head_semi_axes_mm": [round(a_lr, 1), round(b_ap, 1)],
        "scalp_mm": round(scalp, 2),
        "skull_mm": round(skull_t, 2),
        "vertex_mm": round(vertex, 1),
        "offset_mm": [round(o, 2) for o in off],
        "rotation_deg": round(float(np.rad2deg(theta)), 2),
        "center_rc_px": rc,
        "noise_hu": round(noise, 2),
        "kernel_sigma_px": round(kernel_sigma_px, 3),
        "grey_hu": round(gm, 1),
        "white_hu": round(wm, 1),
        "csf_hu": round(csf, 1),
        "ventricle_z_mm": round(vent_z, 1),
        "bone_hu": round(bone_hu),
        "diploe_hu": round(diploe_hu),
        "holder_hu": round(holder_hu),
        **notes_bleed,
    }
    return CTPhantom(hu=hu, spacing_mm=(float(thick), px, px), lesions=lesions, body_part="HEAD", notes=notes, mask=lesion_mask)


def _bleed(subtype: str, target_ml: float, c: dict[str, Any]) -> tuple[Frac, Frac | None, float]:
    """Blood fraction, optional edema fraction and blood HU for one subtype, sized to ``target_ml``."""
    rng, u, v, z, di, frac = c["rng"], c["u"], c["v"], c["z"], c["di"], c["frac"]
    lo, hi = c["z_lim"]
    if subtype == "intraventricular":
        # Blood layers in the dependent (posterior, supine) part of one ventricle.
        vent = c["ventricles"][int(rng.integers(0, 2))]
        if (vent >= 0.5).sum() * c["voxel_ml"] < 1.25 * target_ml:  # too big for one: cast of both
            vent = np.maximum(*c["ventricles"])
        order = np.sort(np.broadcast_to(v, vent.shape)[vent >= 0.5])[::-1]
        keep = min(round(target_ml / c["voxel_ml"]), max(len(order) - 1, 0))
        level = order[keep] if len(order) else np.inf
        return frac(v - level) * vent, None, float(rng.uniform(50, 80))
    cz = float(np.clip(rng.uniform(0.4, 0.8) * c["vertex"], lo + 5, max(hi - 5, lo + 5)))
    psi = rng.uniform(0, 2 * np.pi)
    if subtype in ("epidural", "subdural"):
        # Lens (epidural) or flat crescent (subdural) hugging the inner table at (pu, pv, cz).
        depth = 0.5 if subtype == "epidural" else 0.0
        sz = np.sqrt(np.clip(1 - ((cz - 0.45 * c["vertex"]) / (0.55 * c["vertex"])) ** 2, 0.3, 1))
        pu, pv = (c["a"] * sz - c["t"] - depth) * np.cos(psi), (c["b"] * sz - c["t"] - depth) * np.sin(psi)
        r = np.sqrt((u - pu) ** 2 + (v - pv) ** 2 + (z - cz) ** 2)
        power, aspect = (2, 0.4) if subtype == "epidural" else (4, 0.15)

        def make_lens(radius: float) -> Frac:
            return frac(aspect * radius * (1 - (r / radius) ** power) - di) * c["brain"]

        radius0 = (target_ml * 1000 / (np.pi * aspect * (0.5 if power == 2 else 2 / 3))) ** (1 / 3)
        value = float(rng.uniform(55, 85) if subtype == "epidural" else rng.uniform(50, 75))
        return _fit(make_lens, radius0, target_ml, c["voxel_ml"])[0], None, value
    if subtype == "intraparenchymal":
        # Deep ellipsoid with a rim of edema; its centre sits in white matter.
        depth = rng.uniform(0.3, 0.5)
        cu, cv = depth * c["a"] * np.cos(psi), depth * c["b"] * np.sin(psi)
        ax = rng.uniform(0.7, 1.3, size=3)
        r = np.sqrt(((u - cu) / ax[0]) ** 2 + ((v - cv) / ax[1]) ** 2 + ((z - cz) / ax[2]) ** 2)

        def make_ball(radius: float) -> Frac:
            return frac((radius - r) * ax.min()) * c["brain"]

        radius0 = (target_ml * 1000 * 3 / (4 * np.pi * ax.prod())) ** (1 / 3)
        blood, radius = _fit(make_ball, radius0, target_ml, c["voxel_ml"])
        edema = frac((radius + rng.uniform(2, 4) / ax.min() - r) * ax.min()) * c["brain"]
        return blood, edema, float(rng.uniform(55, 85))
    # Subarachnoid: blood in the sulci and cisterns around a point (convexity or basal).
    if rng.random() < 0.5 or hi < 0.3 * c["vertex"]:
        cu, cv = 0.75 * c["a"] * np.cos(psi), 0.75 * c["b"] * np.sin(psi)
    else:
        cu, cv, cz = 0.0, 2.0, float(np.clip(0.30 * c["vertex"], lo, hi))
    r = np.sqrt((u - cu) ** 2 + (v - cv) ** 2 + (z - cz) ** 2)

    def make_sah(radius: float) -> Frac:
        return frac(radius - r) * c["csf_space"]

    radius0 = (target_ml * 1000 * 3 / (4 * np.pi * 0.3)) ** (1 / 3)
    return _fit(make_sah, radius0, target_ml, c["voxel_ml"])[0], None, float(rng.uniform(50, 70))


def _fit(make: Callable[[float], Frac], radius: float, target_ml: float, voxel_ml: float) -> tuple[Frac, float]:
    """Bisect ``radius`` (volume grows with it) until the measured volume (voxels >= half) nears ``target_ml``."""

    def volume(r: float) -> float:
        return float((make(r) >= 0.5).sum()) * voxel_ml

    lo, hi = 0.0, radius
    for _ in range(6):  # grow the bracket; a bleed too big for its space stops at the cap
        if volume(hi) >= target_ml:
            break
        lo, hi = hi, hi * 1.6
    best_r, best_err = hi, abs(np.log(max(volume(hi), 1e-6) / target_ml))
    for _ in range(12):
        mid = 0.5 * (lo + hi)
        got = volume(mid)
        err = abs(np.log(max(got, 1e-6) / target_ml))
        if err < best_err:
            best_r, best_err = mid, err
        if err < 0.08:  # within 8%: the voxel count is measured, not promised
            break
        lo, hi = (mid, hi) if got < target_ml else (lo, mid)
    return make(best_r), best_r
