"""The names of what the second stage measures on a candidate, in the order candidates carry them.

Cards name their filter's features and proposals; ``detectors.spec`` checks
them against these names when it loads a card, ``detectors.candidates`` and
``detectors.proposals`` measure them. Kept apart so that the card parser
needs neither numpy nor scipy, and neither module imports the other to know a name.
"""

from __future__ import annotations

from detectors.base import Family

CT_FEATURES = (
    "peak_logit",
    "mean_logit",
    "log_area_mm2",
    "depth_mm",
    "anatomy_depth_mm",
    "hu_mean",
    "hu_excess",
    "hu_contrast",
    "bone_adjacent",
    "bone_through",
)
RADIOGRAPH_FEATURES = ("peak_logit", "mean_logit", "log_area_mm2", "anatomy_depth_mm", "intensity_mean", "intensity_contrast")
PROPOSALS = ("hyperdense",)  # classical candidate sources a card may ask for
DENSE_FEATURES = ("dense_log_ml", "dense_hu", "dense_calcified_share", "dense_contrast_hu", "midline_mm")  # hyperdense only


def feature_names(family: Family, proposals: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The features a filter reads, in the order candidates carry them."""
    if family is not Family.CT:
        return RADIOGRAPH_FEATURES
    return CT_FEATURES + (DENSE_FEATURES if "hyperdense" in proposals else ())
