"""What real chest radiographs have that the plain phantom lacks: vessels, projected spheres, CR processing."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.phantoms.chest_texture import present, sphere_projection, vessel_markings
from detectors.phantoms.radiographs import chest_radiograph


def test_vessels_branch_from_the_hilum_and_stay_in_the_lung() -> None:
    lung = np.zeros((400, 400), np.float32)
    lung[50:350, 220:380] = 1.0
    out = vessel_markings((400, 400), [(200.0, 230.0, 1.0)], lung, 0.4, 0.004, np.random.default_rng(0))
    assert out[lung == 0].max() == 0.0
    assert (out > 0).mean() > 0.05  # a tree, not a line
    near, far = out[150:250, 220:270], out[150:250, 330:380]
    assert near.mean() > far.mean() > 0  # thick at the hilum, tapering outwards


def test_a_projected_sphere_is_its_chord_times_the_contrast() -> None:
    profile, disc = sphere_projection((101, 101), (50.0, 50.0), 20.0, 0.5, 0.004)
    assert profile.max() == pytest.approx(20.0 * 0.004, rel=1e-3)  # the chord through the centre is the diameter
    assert disc.sum() == pytest.approx(np.pi * 20**2, rel=0.03)  # radius 10 mm = 20 pixels
    assert profile[~disc].max() == 0.0 and profile[50, 69] < 0.5 * profile.max()  # soft towards the rim


def test_presentation_processing_stays_in_range_and_is_seeded() -> None:
    image = np.random.default_rng(1).random((200, 180)).astype(np.float32)
    a, drawn = present(image, 0.4, np.random.default_rng(5))
    b, _ = present(image, 0.4, np.random.default_rng(5))
    assert np.array_equal(a, b) and 0.0 <= a.min() and a.max() <= 1.0
    assert 0.3 <= drawn["compress"] <= 0.85


@pytest.mark.parametrize("seed", range(3))
def test_textured_chest_phantom(seed: int) -> None:
    plain, textured = chest_radiograph(seed, nodule=True), chest_radiograph(seed, nodule=True, texture=True)
    again = chest_radiograph(seed, nodule=True, texture=True)
    assert np.array_equal(textured.image, again.image)
    assert textured.image.shape == plain.image.shape and not np.array_equal(textured.image, plain.image)
    (lesion,) = textured.lesions
    assert 4.0 <= lesion.size_mm <= 40.0 and textured.notes["texture"]
    radius = lesion.size_mm / textured.pixel_spacing_mm / 2
    assert textured.mask.sum() == pytest.approx(np.pi * radius**2, rel=0.1)
    normal = chest_radiograph(seed, nodule=False, texture=True)
    assert not normal.mask.any() and normal.lesions == []
