"""An abdomen CT without findings: a body part no detector covers.

It exists so that samples, routing and the worklist can show a study that is
"not analysed" for a good reason; it is deliberately simpler than the head
and chest phantoms (no lesions to model).
"""

from __future__ import annotations

import numpy as np

from detectors.phantoms.kernel import blur_inplane
from detectors.phantoms.truth import CTPhantom


def abdomen_ct(seed: int, *, slices: int = 24, matrix: int = 256) -> CTPhantom:
    """Body wall, liver, spleen, kidneys, spine, aorta and bowel gas, in HU.

    Parameters
    ----------
    seed
        The same seed gives the same volume.
    slices, matrix
        Shape of the volume: (slices, matrix, matrix).
    """
    if matrix not in (256, 512):
        raise ValueError(f'Argument "matrix" must be 256 or 512, got {matrix}')
    rng = np.random.default_rng(seed)
    pixel = float(rng.uniform(1.3, 1.6)) * 256 / matrix  # mm; a 330-410 mm field of view
    thickness = float(rng.choice([2.5, 3.0, 5.0]))
    y, x = np.mgrid[0:matrix, 0:matrix].astype(np.float32) * pixel
    cy, cx = matrix * pixel / 2 + rng.uniform(-10, 10, 2)
    a, b = rng.uniform(140, 175), rng.uniform(100, 125)  # body half-widths, mm
    hu = np.full((slices, matrix, matrix), -1000.0, dtype=np.float32)

    def ellipse(dy: float, dx: float, ry: float, rx: float) -> np.ndarray:
        return ((y - cy - dy) / ry) ** 2 + ((x - cx - dx) / rx) ** 2 <= 1

    for k in range(slices):
        s = hu[k]
        s[ellipse(0, 0, b, a)] = rng.uniform(-110, -90)  # subcutaneous fat
        s[ellipse(0, 0, b - 12, a - 12)] = 45  # muscle wall
        s[ellipse(0, 0, b - 20, a - 20)] = -95  # intra-abdominal fat
        liver_r = 70 * (1 - 0.6 * k / slices)  # the liver tapers towards the pelvis
        s[ellipse(-10, -55, liver_r * 0.8, liver_r)] = 58  # liver (patient's right = image left)
        s[ellipse(-25, 70, 35, 28)] = 48  # spleen
        for side in (-1, 1):
            s[ellipse(45, side * 50, 28, 18)] = 32  # kidneys
        s[ellipse(30, -12, 11, 11)] = 42  # aorta
        s[ellipse(b - 40, 0, 22, 22)] = 320  # vertebral body
        s[ellipse(b - 40, 0, 22, 22) & ~ellipse(b - 40, 0, 18, 18)] = 700  # cortex
        for _ in range(int(rng.integers(3, 7))):  # bowel gas
            dy, dx = rng.uniform(-50, 30), rng.uniform(-60, 60)
            s[ellipse(dy, dx, *rng.uniform(6, 16, 2))] = -950
    noise = float(rng.uniform(8, 20))
    hu = blur_inplane(hu, float(rng.uniform(0.4, 1.0))) + rng.normal(0, noise, hu.shape).astype(np.float32)
    return CTPhantom(
        hu=np.clip(hu, -1024, 3071).astype(np.float32),
        spacing_mm=(thickness, pixel, pixel),
        lesions=[],
        body_part="ABDOMEN",
        notes={"noise_hu": noise, "pixel_mm": pixel, "thickness_mm": thickness},
        mask=np.zeros(hu.shape, dtype=bool),
    )
