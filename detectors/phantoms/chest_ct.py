"""A seeded chest CT phantom in HU, with lung nodules and their ground truth.

Coordinates are millimetres: ``z`` from the lung apex downwards, ``y`` along
rows (anterior to posterior, as in a head-first-supine axial image) and ``x``
along columns (patient right to left), ``y = x = 0`` at the image centre.
Four independent random streams (scanner, anatomy, nodules, noise) keep a
phantom with ``nodules=0`` identical to its seed-mates outside the nodules.
"""

from __future__ import annotations

import math

import numpy as np

from detectors.phantoms.kernel import blur_inplane
from detectors.phantoms.truth import CTPhantom, Lesion, box_of

NODULE_TYPES = ("solid", "part_solid", "ground_glass")
PLACEMENTS = ("intraparenchymal", "juxta_pleural", "juxta_vascular")
_DIAMETER_MM = {"solid": (3.0, 30.0), "part_solid": (8.0, 30.0), "ground_glass": (5.0, 30.0)}
_THICKNESS_MM = (0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0)
_THORAX_MM = 260.0  # apex to lung base

Segment = tuple[np.ndarray, np.ndarray, float, int]  # (start zyx mm, end zyx mm, radius mm, generation)
Box = tuple[slice, slice, slice]  # (slices, rows, cols) index ranges


def chest_ct(
    seed: int,
    *,
    nodules: int | None = None,
    nodule_type: str | None = None,
    nodule_diameter_mm: float | None = None,
    nodule_placement: str | None = None,
    slices: int | None = None,
    matrix: int | None = None,
    slice_thickness_mm: float | None = None,
) -> CTPhantom:
    """Build a chest CT phantom.

    Parameters
    ----------
    seed
        Seeds everything not given explicitly.
    nodules
        Number of nodules; drawn 0-3 when None.
    nodule_type
        "solid", "part_solid" or "ground_glass" for every nodule; drawn per nodule when None.
    nodule_diameter_mm
        Diameter (largest axis) of every nodule; drawn per type when None.
    nodule_placement
        "intraparenchymal", "juxta_pleural" or "juxta_vascular"; drawn when None.
    slices, matrix, slice_thickness_mm
        Volume geometry; drawn when None (matrix 256 or 512, thickness 0.625-5 mm,
        slices covering 150-250 mm, at most ``48 * 256 / matrix``).

    Returns
    -------
    CTPhantom
        ``hu`` (slices, rows, cols) float32 in [-1024, 3071]; one ``Lesion`` per nodule;
        ``mask`` the nodules' voxels (a part-solid nodule's ground-glass halo included).
    """
    if nodule_type is not None and nodule_type not in NODULE_TYPES:
        raise ValueError(f'Argument "nodule_type" must be one of {NODULE_TYPES}, got {nodule_type!r}')
    if nodule_placement is not None and nodule_placement not in PLACEMENTS:
        raise ValueError(f'Argument "nodule_placement" must be one of {PLACEMENTS}, got {nodule_placement!r}')
    if nodules is not None and not 0 <= nodules <= 10:
        raise ValueError(f'Argument "nodules" must be in 0..10, got {nodules}')
    if matrix is not None and not 64 <= matrix <= 1024:
        raise ValueError(f'Argument "matrix" must be in 64..1024, got {matrix}')
    if slices is not None and slices < 1:
        raise ValueError(f'Argument "slices" must be positive, got {slices}')
    if nodule_diameter_mm is not None and not 1.0 <= nodule_diameter_mm <= 40.0:
        raise ValueError(f'Argument "nodule_diameter_mm" must be in 1..40 mm, got {nodule_diameter_mm}')
    scan_rng, anat_rng, nod_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))

    # Scanner: every draw is made even when overridden, so the other draws stay put.
    drawn_matrix = int(scan_rng.choice([256, 512]))
    spacing_factor = scan_rng.uniform(0.0, 1.0)  # position within the spacing range
    drawn_dz = float(scan_rng.choice(_THICKNESS_MM))
    coverage = scan_rng.uniform(150.0, 250.0)
    noise_hu, kernel_px = scan_rng.uniform(8.0, 25.0), scan_rng.uniform(0.4, 1.1)
    matrix = matrix or drawn_matrix
    ps = (0.6 + 0.2 * spacing_factor) * 512 / matrix  # mm per pixel: 0.6-0.8 at 512, 1.2-1.6 at 256
    dz = slice_thickness_mm or drawn_dz
    n = slices or int(np.clip(round(coverage / dz), 8, 48 * 256 // matrix))
    z0 = scan_rng.uniform(0.0, max(_THORAX_MM - n * dz, 0.0) * 0.9)
    zc = z0 + (np.arange(n) + 0.5) * dz  # (n,) slice centres, mm
    yc = (np.arange(matrix) - matrix / 2 + 0.5) * ps  # (rows,) mm
    xc = yc.copy()  # (cols,) mm
    Z, Y, X = zc[:, None, None], yc[None, :, None], xc[None, None, :]

    hu, lung, geo = _anatomy(anat_rng, Z, Y, X, ps)
    geo["dz"] = dz
    vessel_segments = _draw_tubes(anat_rng, hu, lung, zc, yc, xc, geo)
    lesions, placed, mask = _add_nodules(
        nod_rng, hu, lung, zc, yc, xc, geo, vessel_segments, nodules, nodule_type, nodule_diameter_mm, nodule_placement
    )
    hu += _streaks(scan_rng, Y[0], X[0], geo)[None]
    hu = blur_inplane(hu, kernel_px)
    hu += noise_rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    notes: dict[str, object] = {
        "matrix": matrix,
        "pixel_spacing_mm": ps,
        "slice_thickness_mm": dz,
        "slices": n,
        "z_start_mm": z0,
        "noise_hu": noise_hu,
        "kernel_sigma_px": kernel_px,
        **{k: v for k, v in geo.items() if k.endswith("_mm")},
        "nodules": placed,
    }
    return CTPhantom(hu=hu.astype(np.float32), spacing_mm=(dz, ps, ps), lesions=lesions, body_part="CHEST", notes=notes, mask=mask)


def _anatomy(
    rng: np.random.Generator, Z: np.ndarray, Y: np.ndarray, X: np.ndarray, ps: float
) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """Body wall, ribs, spine, mediastinum, heart and lungs; returns (hu, lung mask, geometry)."""
    fov = 2 * abs(float(X[0, 0, 0]))
    a = fov * rng.uniform(0.36, 0.45)  # body semi-axis, left-right, mm
    b = a * rng.uniform(0.62, 0.75)  # anterior-posterior
    cx, cy = fov * rng.uniform(-0.04, 0.04), fov * rng.uniform(-0.06, 0.0)  # patient position
    fat, muscle = rng.uniform(6.0, 25.0), rng.uniform(14.0, 22.0)
    rv = rng.uniform(13.0, 19.0)  # vertebral body radius, mm
    sy = cy + (b - fat - muscle) - 0.4 * rv  # spine centre, protruding into the posterior cavity
    y2, x2 = Y[0] - cy, X[0] - cx  # (rows,1), (1,cols) mm from the body centre

    def disk(dx: float, dy: float, r: float) -> np.ndarray:  # (rows, cols) bool
        return (x2 - dx) ** 2 + (y2 - dy) ** 2 <= r * r

    t = Z / _THORAX_MM  # (n,1,1) 0 at apex, 1 at base
    s = 0.62 + 0.38 * np.sin(0.5 * np.pi * np.clip(t / 0.6, 0, 1))  # thoracic inlet is narrow
    ca, cb = (a - fat - muscle) * s, (b - fat - muscle) * s  # cavity semi-axes, (n,1,1) mm
    hu = np.full(np.broadcast_shapes(Z.shape, Y.shape, X.shape), -1000.0, dtype=np.float32)
    hu[:, (x2 / a) ** 2 + (y2 / b) ** 2 <= 1] = rng.uniform(-110, -80)  # subcutaneous fat
    hu[:, (x2 / (a - fat)) ** 2 + (y2 / (b - fat)) ** 2 <= 1] = rng.uniform(35, 55)  # muscle
    r_cav = np.sqrt((x2 / ca) ** 2 + (y2 / cb) ** 2)  # (n,rows,cols), 1 at the pleura
    # Ribs: arcs of a band just outside the pleura; the phase drifts with z because ribs run obliquely.
    band = (r_cav > 1.0) & (r_cav <= 1.0 + 9.0 / np.minimum(ca, cb))
    hu[band & (np.cos(7 * np.arctan2(y2, x2) + Z * 0.25 + rng.uniform(0, 2 * np.pi)) > 0.2)] = rng.uniform(700, 1200)
    cavity = r_cav <= 1
    hu[cavity] = rng.uniform(30, 50)  # mediastinum fills the cavity, lungs are cut from it
    lung = ((np.abs(x2) - 0.5 * ca) / (0.54 * ca)) ** 2 + ((y2 + 0.03 * cb) / (0.97 * cb)) ** 2 <= 1  # both sides
    lung &= cavity & ~((np.abs(x2) < ca * (0.16 + 0.12 * t)) & (y2 < 0.6 * cb))  # minus the mediastinum
    heart = (t > 0.45) & (((x2 - 0.15 * ca) / (0.42 * ca)) ** 2 + ((y2 + 0.15 * cb) / (0.6 * cb)) ** 2 <= 1)
    lung &= ~heart & ~disk(0.0, sy - cy, 1.5 * rv)
    # Lung parenchyma: a dependent (posterior) density gradient and a smooth texture.
    lung_hu = rng.uniform(-870, -830) + rng.uniform(20.0, 50.0) * y2 / cb + _texture(rng, hu.shape, 10) * 12.0
    hu[lung] = lung_hu[lung]
    hu[heart] = rng.uniform(35, 45)
    hu[:, disk(1.3 * rv, sy - cy - 1.3 * rv, rng.uniform(10.0, 14.0))] = rng.uniform(38, 45)  # descending aorta
    hu[:, disk(0.0, sy - cy, rv + 1.2)] = rng.uniform(600, 800)  # vertebral cortex
    hu[:, disk(0.0, sy - cy, rv)] = rng.uniform(300, 450)  # cancellous bone
    hu[:, disk(0.0, sy - cy + rv + 8.0, 7.0)] = 15.0  # spinal canal
    upper = np.flatnonzero(t[:, 0, 0] < 0.4)  # slices above the carina
    for value, radius in ((30.0, 9.0), (-990.0, 7.5)):  # tracheal wall, then lumen
        rows, cols = np.nonzero(disk(0.0, sy - cy - rv - 22.0, radius))
        hu[upper[:, None], rows[None, :], cols[None, :]] = value
    # Scanner table: two curved carbon-fibre shells below the patient.
    top = cy + b + rng.uniform(2.0, 15.0) - X[0] ** 2 / (2 * rng.uniform(400.0, 700.0))  # (1,cols) mm
    for offset, thick in ((0.0, rng.uniform(3.0, 6.0)), (rng.uniform(25.0, 40.0), 3.0)):
        shell = (Y[0] >= top + offset) & (Y[0] < top + offset + thick) & (np.abs(X[0]) < 0.45 * fov)
        hu[:, shell] = rng.uniform(150, 400)
    geo = {
        "body_a_mm": a,
        "body_b_mm": b,
        "body_cx_mm": cx,
        "body_cy_mm": cy,
        "fat_mm": fat,
        "spine_y_mm": sy,
        "vertebra_r_mm": rv,
        "ps": ps,
        "ca": ca,
        "cb": cb,
    }
    return hu, lung, geo


def _texture(rng: np.random.Generator, shape: tuple[int, ...], cell_px: int) -> np.ndarray:
    """Smooth unit-variance-ish noise: a coarse grid bilinearly upsampled in-plane."""
    n, rows, cols = shape

    def interp(size: int) -> np.ndarray:  # (size, coarse) hat-function weights
        pos = np.arange(size) / cell_px
        grid = np.arange(int(pos[-1]) + 2)
        return np.clip(1 - np.abs(pos[:, None] - grid[None, :]), 0, None)

    wr, wc = interp(rows), interp(cols)
    coarse = rng.standard_normal((n, wr.shape[1], wc.shape[1]))
    return np.einsum("ij,njk,lk->nil", wr, coarse, wc, optimize=True).astype(np.float32)


def _grow(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    length: float,
    radius: float,
    generations: int,
    out: list[Segment],
    gen: int = 0,
) -> None:
    """Recursive branching: each segment splits in two, shorter, thinner, deflected."""
    direction = direction / np.linalg.norm(direction)
    end = start + direction * length
    out.append((start, end, radius, gen))
    if gen + 1 >= generations:
        return
    for _ in range(2):
        child = direction + rng.normal(0.0, 0.55, 3)
        _grow(rng, end, child, length * rng.uniform(0.65, 0.85), max(radius * 0.72, 1.0), generations, out, gen + 1)


def _box(lo: np.ndarray, hi: np.ndarray, zc: np.ndarray, yc: np.ndarray, xc: np.ndarray) -> Box | None:
    """Index ranges of the voxels whose centres lie in [lo, hi] (zyx mm), or None if none do."""
    idx = [np.flatnonzero((g >= low) & (g <= high)) for g, low, high in zip((zc, yc, xc), lo, hi, strict=True)]
    if any(i.size == 0 for i in idx):
        return None
    z, y, x = (slice(int(i[0]), int(i[-1]) + 1) for i in idx)
    return z, y, x


def _tube_dist(
    seg: Segment, zc: np.ndarray, yc: np.ndarray, xc: np.ndarray, ps: float, margin: float = 0.0
) -> tuple[Box, np.ndarray] | None:
    """Distance (mm) to one tube's axis in its bounding box, or None if outside the volume."""
    p0, p1, r, _ = seg
    r = r + margin
    lo, hi = np.minimum(p0, p1) - r - ps, np.maximum(p0, p1) + r + ps
    if (box := _box(lo, hi, zc, yc, xc)) is None:
        return None
    z, y, x = zc[box[0]][:, None, None], yc[box[1]][None, :, None], xc[box[2]][None, None, :]
    d = p1 - p0
    u = np.clip(((z - p0[0]) * d[0] + (y - p0[1]) * d[1] + (x - p0[2]) * d[2]) / (d @ d), 0, 1)
    dist = np.sqrt((z - p0[0] - u * d[0]) ** 2 + (y - p0[1] - u * d[1]) ** 2 + (x - p0[2] - u * d[2]) ** 2)
    return box, dist.astype(np.float32)


def _draw_tubes(
    rng: np.random.Generator, hu: np.ndarray, lung: np.ndarray, zc: np.ndarray, yc: np.ndarray, xc: np.ndarray, geo: dict
) -> list[Segment]:
    """Paint pulmonary vessels (+40 HU) and airways (air, thin wall) inside the lungs; return the vessels."""
    cx, cy, ps = geo["body_cx_mm"], geo["body_cy_mm"], geo["ps"]
    hz = _THORAX_MM * rng.uniform(0.4, 0.5)  # hilum level
    half_w = float(np.max(geo["ca"])) * 0.3
    vessels: list[Segment] = []
    airways: list[Segment] = []
    for side in (-1.0, 1.0):
        hilum = np.array([hz, cy, cx + side * half_w])
        for dz_dir in (-1.2, -0.3, 0.5, 1.2):  # upper, middle and lower lobe trunks
            _grow(rng, hilum, np.array([dz_dir, rng.normal(0, 0.4), side]), rng.uniform(35, 50), rng.uniform(4.0, 6.0), 5, vessels)
        for dz_dir in (-0.8, 0.8):
            _grow(
                rng, hilum + np.array([0, -6.0, 0]), np.array([dz_dir, -0.2, side]), rng.uniform(30, 40), rng.uniform(3.5, 5.0), 3, airways
            )
    vessel_hu, wall_hu = rng.uniform(35, 45), rng.uniform(-50, 20)
    for tubes, layers in ((vessels, ((0.0, vessel_hu),)), (airways, ((1.0, wall_hu), (0.0, -990.0)))):
        for seg in tubes:
            if (got := _tube_dist(seg, zc, yc, xc, ps, margin=1.0)) is None:
                continue
            box, dist = got
            for extra, value in layers:  # airways: the wall first, then the lumen inside it
                f = np.clip((seg[2] + extra * (0.5 + 0.15 * seg[2]) - dist) / ps + 0.5, 0, 1) * lung[box]
                hu[box] += f * (value - hu[box])
    return vessels


def _ellipsoid_frac(
    center: np.ndarray,
    radius: float,
    shape: tuple[float, float, float],
    zc: np.ndarray,
    yc: np.ndarray,
    xc: np.ndarray,
    ps: float,
    dz: float,
) -> tuple[Box, np.ndarray] | None:
    """Partial-volume occupancy of an ellipsoid (largest semi-axis ``radius`` mm, in-plane), slab-averaged in z."""
    e1, e2, angle = shape
    lo, hi = center - radius - ps - dz, center + radius + ps + dz
    if (box := _box(lo, hi, zc, yc, xc)) is None:
        return None
    y, x = yc[box[1]][None, :, None] - center[1], xc[box[2]][None, None, :] - center[2]
    u, v = x * math.cos(angle) + y * math.sin(angle), -x * math.sin(angle) + y * math.cos(angle)
    m = int(np.clip(math.ceil(dz / ps), 1, 5))  # sub-slices: the slab integrates over its thickness
    f = np.zeros((box[0].stop - box[0].start, y.shape[1], x.shape[2]), dtype=np.float32)
    for sub in (np.arange(m) + 0.5) / m - 0.5:
        w = zc[box[0]][:, None, None] + sub * dz - center[0]
        rho = np.sqrt((u / radius) ** 2 + (v / (radius * e1)) ** 2 + (w / (radius * e2)) ** 2)
        f += np.clip(0.5 - (rho - 1) * radius * e1 / ps, 0, 1) / m
    return box, f


def _add_nodules(
    rng: np.random.Generator,
    hu: np.ndarray,
    lung: np.ndarray,
    zc: np.ndarray,
    yc: np.ndarray,
    xc: np.ndarray,
    geo: dict,
    vessels: list[Segment],
    count: int | None,
    kind: str | None,
    diameter: float | None,
    placement: str | None,
) -> tuple[list[Lesion], list[dict[str, object]], np.ndarray]:
    """Place nodules in ``hu`` (in place); return their ground truth, placement notes and voxel mask."""
    ps, dz = geo["ps"], geo["dz"]
    count = int(rng.integers(0, 4)) if count is None else count
    taken = np.zeros(hu.shape, dtype=bool)
    nodule_mask = np.zeros(hu.shape, dtype=bool)  # (slices, rows, cols), every nodule's voxels
    lung_idx = np.argwhere(lung)  # (k, 3)
    ca, cb = geo["ca"][:, 0, 0], geo["cb"][:, 0, 0]  # (n,) cavity semi-axes per slice
    r_cav = np.hypot(
        (xc[lung_idx[:, 2]] - geo["body_cx_mm"]) / ca[lung_idx[:, 0]], (yc[lung_idx[:, 1]] - geo["body_cy_mm"]) / cb[lung_idx[:, 0]]
    )
    pleural_idx = lung_idx[r_cav > 1 - 2.5 * ps / np.minimum(ca, cb)[lung_idx[:, 0]]]
    lesions: list[Lesion] = []
    placed: list[dict[str, object]] = []
    for _ in range(count):
        typ = kind or str(rng.choice(NODULE_TYPES))
        lo, hi = _DIAMETER_MM[typ]
        hi = max(lo, min(hi, 0.6 * zc.size * dz))  # a drawn nodule fits the slab
        diam = diameter or float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        where = placement or str(rng.choice(PLACEMENTS))
        shape = (rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0), rng.uniform(0, np.pi))
        radius = diam / 2
        got = None
        for attempt in range(300):
            mode = where if attempt < 200 else "intraparenchymal"  # fall back rather than fail
            if mode == "juxta_vascular":
                seg = vessels[int(rng.integers(len(vessels)))]
                if seg[3] == 0 or seg[2] > 1.6 * radius:
                    continue
                along = seg[0] + rng.uniform(0.2, 0.8) * (seg[1] - seg[0])
                perp = np.cross(seg[1] - seg[0], rng.normal(size=3))
                center = along + perp / np.linalg.norm(perp) * (radius + 0.5 * seg[2])
            else:
                pool = pleural_idx if mode == "juxta_pleural" and len(pleural_idx) else lung_idx
                k, r, c = pool[int(rng.integers(len(pool)))]
                center = np.array([zc[k], yc[r], xc[c]])
                if mode == "juxta_pleural":  # from the pleura (scaled onto the ellipse), step inwards
                    rel = center[1:] - np.array([geo["body_cy_mm"], geo["body_cx_mm"]])  # (y, x) mm
                    inward = -rel / np.array([cb[k], ca[k]]) ** 2  # the ellipse's inward normal
                    rho = math.hypot(rel[0] / cb[k], rel[1] / ca[k])
                    center[1:] += rel / rho - rel + inward / np.linalg.norm(inward) * 0.8 * radius
            got = _ellipsoid_frac(center, radius, shape, zc, yc, xc, ps, dz)
            if got is None:
                continue
            box, f = got
            inside = float((f * lung[box]).sum() / max(f.sum(), 1e-6))
            need = {"intraparenchymal": 0.999, "juxta_pleural": 0.75, "juxta_vascular": 0.9}[mode]
            if inside >= need and not (taken[box] & (f > 0)).any() and f.max() >= 0.5:
                where = mode
                break
            got = None
        if got is None:
            continue  # no room (a thin slab at the apex): leave this nodule out
        box, f = got
        if where == "juxta_pleural":
            f *= lung[box]  # flattened against the pleura
        region = hu[box]
        if typ == "solid":
            region += f * (rng.uniform(20, 60) - region)
        else:
            ggo = rng.uniform(-700, -300) if typ == "ground_glass" else rng.uniform(-550, -350)
            np.maximum(region, region + f * (ggo - region), out=region)  # vessels stay visible through GGO
            if typ == "part_solid":
                core_r = max(radius * rng.uniform(0.4, 0.65), min(1.5 * ps, 0.7 * radius))  # visible through the blur
                core = _ellipsoid_frac(center, core_r, shape, zc, yc, xc, ps, dz)
                if core is not None:
                    cbox, cf = core
                    hu[cbox] += cf * (rng.uniform(20, 50) - hu[cbox])
        mask = f >= min(0.5, 0.5 * float(f.max()))  # clipping at the pleura can thin a tiny nodule
        taken[box] |= f > 0
        nodule_mask[box] |= mask  # the outer ellipsoid: a part-solid core lies inside its halo
        (s0, s1), (r0, c0, r1, c1) = box_of(mask)
        k0, rr, cc = box[0].start, box[1].start, box[2].start
        lesions.append(
            Lesion(
                kind="nodule",
                subtype=typ,
                slices=(s0 + k0, s1 + k0),
                box=(r0 + rr, c0 + cc, r1 + rr, c1 + cc),
                size_mm=float(diam),
                volume_ml=float(f.sum() * dz * ps * ps / 1000.0),
            )
        )
        placed.append({"type": typ, "placement": where, "diameter_mm": float(diam), "center_mm": [float(v) for v in center]})
    return lesions, placed, nodule_mask


def _streaks(rng: np.random.Generator, Y: np.ndarray, X: np.ndarray, geo: dict) -> np.ndarray:
    """Faint dark beam-hardening streaks fanning from the spine, within the body; (rows, cols) HU."""
    sy, cx = geo["spine_y_mm"], geo["body_cx_mm"]
    body = np.hypot((X - cx) / geo["body_a_mm"], (Y - geo["body_cy_mm"]) / geo["body_b_mm"]) <= 1
    out = np.zeros(body.shape, dtype=np.float32)
    for _ in range(int(rng.integers(2, 6))):
        phi = rng.uniform(0, np.pi)
        dist = np.abs(-np.sin(phi) * (X - cx) + np.cos(phi) * (Y - sy))
        out = out - rng.uniform(4.0, 15.0) * np.exp(-((dist / rng.uniform(1.5, 4.0)) ** 2))
    return (out * body).astype(np.float32)
