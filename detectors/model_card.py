"""The model card for people (Markdown), rendered from the machine card (TOML)."""

from __future__ import annotations

from detectors.base import Family
from detectors.spec import DetectorSpec

_INTENDED = {
    "bleed": "Flag non-contrast head CT series that may show acute intracranial haemorrhage "
    "(epidural, subdural, intraparenchymal, subarachnoid, intraventricular), to move them up a reading worklist.",
    "fracture": "Flag extremity radiographs (long bones: tibia/fibula, radius/ulna, femur) that may show "
    "a fracture, to move them up a reading worklist.",
    "nodule": "Flag chest imaging that may show a pulmonary nodule, with its location and estimated diameter, "
    "to move it up a reading worklist.",
}
_DATA = {
    "bleed-ct": "head CT phantoms (`detectors/phantoms/head_ct.py`): skull, brain, ventricles, cisterns, sinus "
    "air, normal calcifications (pineal, choroid plexus, falx), head holder, beam-hardening streaks; 256/512 "
    "matrices, 0.625-5 mm slices, varied noise and kernels; half with one bleed of 0.5-60 mL.",
    "nodule-ct": "chest CT phantoms (`detectors/phantoms/chest_ct.py`): lungs with branching vessels, airways, "
    "mediastinum, ribs and spine, streaks; 256/512 matrices, 0.625-5 mm slices; 0-3 solid, part-solid or "
    "ground-glass nodules of 3-30 mm, intraparenchymal, juxta-pleural or juxta-vascular.",
    "nodule-xr": "PA chest radiograph phantoms (`detectors/phantoms/radiographs.py`): ribs, clavicles, heart, "
    "diaphragm, varied exposure and noise, a gamma-like display curve; half with one 5-30 mm solid nodule.",
    "fracture-xr": "AP long-bone radiograph phantoms (`detectors/phantoms/radiographs.py`): tibia/fibula, "
    "radius/ulna, femur with cortex and medulla; mimics (nutrient canals, growth plates, overlapping bones, "
    "benign lesions); half with a transverse, oblique, spiral or comminuted fracture, displaced or not.",
}

# What the measurements showed; kept here so every regenerated card says it.
_KNOWN = {
    "bleed-ct": "Real anatomy: one real head CT (with its acquisition variants) is all the normal real anatomy it "
    "was calibrated on; other scanners, ages and pathology (atrophy, old infarcts, post-operative skulls, "
    'craniectomy) are untested. Where no closed skull is found it reports "not assessed", never negative. '
    "It looks for acute blood (50-90 HU): a chronic subdural haematoma, as dense as CSF, is not what it finds "
    "(the one real one reachable, a CQ500 slice with midline shift, scores 0.47, below the operating point), "
    "and it does not measure midline shift.",
    "nodule-ct": "Does not meet the project's target (sensitivity >= 0.90 at <= 1 false positive per scan): it "
    "misses small nodules on thin-slice 512-matrix scans and fires on vessels. No real chest CT is reachable from "
    "the package registries, so its filter and operating point come from phantoms alone. Do not rely on it for "
    "ordering.",
    "nodule-xr": "On the real chest radiograph its network sees neither inserted nodules nor the radiograph's own "
    "masses (its strongest candidates there are hilar vessels and intercostal spaces): 0 of 33 inserted nodules "
    "and 0 of 7 marked masses are shown on the real-anatomy test set. Its operating point sits above the "
    "candidates of that radiograph's normal anatomy, so that normal lung shows no region; expect it to miss "
    "most real nodules. Do not rely on it.",
    "fracture-xr": "On the real leg radiograph it finds few inserted cortical breaks (sensitivity below 0.1 on "
    "real-anatomy validation): the phantom fractures are far easier than real ones. Its operating point sits above "
    "the real normal radiograph. Long bones only (no hands, feet, joints or spine).",
}


_REAL = {
    "bleed-ct": "one real non-contrast head CT (Debian's `invesalius-examples`, GPL-2), normal, and the same head "
    "with one inserted haemorrhage (intraparenchymal, subdural, epidural, subarachnoid or intraventricular, "
    "0.3-50 mL, 50-90 HU, noise-matched, partial-volume edges, mass effect above 15 mL), each acquired by a "
    "drawn variant (slices 0.6-7 mm, gantry tilt 8-25 degrees, 256/512 matrix, soft to sharp kernel, noise)",
    "nodule-xr": "one real processed PA chest CR (`RG1_UNCR.dcm` of PyPI's `pydicom-data`, MIT) with one "
    "inserted 5-30 mm nodule (projected attenuation added in the log domain inside the lung fields, never on "
    "its own masses), under drawn display curves. That radiograph is not normal: it shows multiple round "
    "masses of its own (marked by eye; candidates on them are left out of the filter's training), so its "
    "normal anatomy is everything else in its lung fields, and the operating point sits above the candidates "
    "there",
    "fracture-xr": "one real lower-leg CR (`RG3_UNCR.dcm` of `pydicom-data`, MIT), normal, and the same "
    "radiograph with one inserted cortical break (transverse or oblique, displaced or not)",
}
_ANATOMY = {
    "intracranial": "the intracranial space (`detectors/anatomy/intracranial.py`: inside the skull ring, a "
    "margin from bone, largest 3D component; no scalp, muscle, face or neck)",
    "lungs": "the lung fields (`detectors/anatomy/lungs.py`)",
    "bone": "bone, widened a few mm (`detectors/anatomy/bone.py`)",
}


def _table(title: str, values: dict) -> list[str]:
    if not values:
        return []
    return [title, "", *[f"- {k.replace('_', ' ')}: {v}" for k, v in values.items()], ""]


def render_card(spec: DetectorSpec) -> str:
    """Markdown: intended use, design, inputs, training data, metrics, operating point, limitations, SHA-256."""
    inp = spec.input
    if spec.family is Family.CT:
        windows = ", ".join(f"{w.center:g}/{w.width:g}" for w in inp.windows)
        inputs = (
            f"axial CT in HU, resampled to {inp.spacing_mm:g} mm pixels, {inp.height}x{inp.width} around the "
            f"body; each slice with {inp.context_slices} neighbour(s) on each side (2.5D"
            f"{f', about {inp.context_mm:g} mm apart' if inp.context_mm else ', adjacent'}), windows (centre/width) "
            f"{windows}: {spec.item_shape[0]} channels"
        )
    else:
        inputs = (
            f"one projection radiograph (bright = dense), resampled to {inp.spacing_mm:g} mm pixels, "
            f"{inp.height}x{inp.width}, scaled to its 1st-99th percentiles"
        )
    val = spec.extra.get("validation", {})
    test = spec.extra.get("test", {})
    train = spec.extra.get("training", {})
    filter_training = spec.extra.get("filter_training", {})
    real_note = (
        f" Its false-positive filter and operating point were fitted on phantoms and on {_REAL[spec.name]}."
        if spec.filter is not None and spec.name in _REAL
        else ""
    )
    score = "x = the best candidate's filter logit" if spec.filter is not None else "x = strongest smoothed logit"
    lines = [
        f"# Model card: {spec.name} {spec.version}",
        "",
        "**Not a medical device.** Its network was trained on synthetic phantoms only." + real_note + " It has never "
        "seen a real lesion with ground truth. Its output is a suggestion for ordering a worklist; a radiologist "
        "reads every study whatever the score.",
        "",
        "| | |",
        "| --- | --- |",
        f"| finding | {spec.kind.value} |",
        f"| weights | `{spec.weights}` (fp16 state dict, {spec.network.get('arch', '?')} width "
        f"{spec.network.get('width', '?')}, output stride {spec.stride}) |",
        f"| SHA-256 | `{spec.sha256}` |",
        f'| operating point | calibrated probability >= {spec.operating_point:.4f} is "urgent" |',
        f"| regions | shown at calibrated probability >= {spec.region_threshold:.4f} |",
        f"| calibration | Platt: p = sigmoid({spec.platt_a:.4f} x + {spec.platt_b:.4f}), {score} |",
        "",
        "## Intended use",
        "",
        _INTENDED[spec.kind.value],
        "",
        "## Design",
        "",
    ]
    design = "A heatmap network (a small U-Net) scores every cell of every slice."
    if spec.anatomy != "none":
        design += f" Only cells inside {_ANATOMY[spec.anatomy]} count; a region outside it is never reported."
    if spec.filter is not None:
        design += f" Connected components of the heatmap above logit {spec.candidate_logit:g} are candidates"
        if "hyperdense" in spec.proposals:
            design += (
                ", and so are components of intracranial pixels at least 20 HU denser than the scan's own "
                "brain, away from bone, whatever the network says (`detectors/proposals.py`: thin and small "
                "bleeds that the phantom-trained network misses)"
            )
        design += (
            "; a logistic false-positive filter over their measured features (`detectors/candidates.py`) scores "
            "each, and the study score is the best candidate's. Filter weights (standardised features):"
        )
    lines += [design, ""]
    if spec.filter is not None:
        lines += ["| feature | weight |", "| --- | --- |"]
        lines += [f"| {f} | {w:+.3f} |" for f, w in zip(spec.filter.features, spec.filter.weights, strict=True)]
        lines += [f"| (bias) | {spec.filter.bias:+.3f} |", ""]
    lines += [
        "## Inputs",
        "",
        inputs + ".",
        "",
        "## Training data",
        "",
        f"Network: synthetic {_DATA.get(spec.name, 'phantoms')} Generated on the fly from seeds that the published "
        f"test sets never use. Command: `{train.get('command', '')}` (seed {train.get('seed', '?')}, "
        f"{train.get('phantoms', '?')} phantoms, {train.get('epochs', '?')} epochs, device {train.get('device', '?')}, "
        f"torch {train.get('torch', '?')}).",
        "",
    ]
    if filter_training:
        lines += [
            f"Filter and calibration: {filter_training.get('real_cases', 0)} real-anatomy and "
            f"{filter_training.get('phantom_cases', 0)} phantom training cases "
            f"({filter_training.get('candidates', '?')} candidates, {filter_training.get('lesion_candidates', '?')} on "
            f"a lesion); validation {filter_training.get('validation_real_cases', 0)} real-anatomy and "
            f"{filter_training.get('validation_phantom_cases', 0)} phantom cases, drawn apart from training. "
            f"Command: `{filter_training.get('command', '')}` ({filter_training.get('seconds', '?')} s on a 2-core CPU).",
            "",
        ]
    lines += [
        "## Metrics",
        "",
        f"Network validation ({val.get('validation_studies', '?')} held-out phantoms, {val.get('validation_positive', '?')} "
        f"positive): AUC {val.get('validation_auc', '?')}, sensitivity {val.get('validation_sensitivity', '?')}, "
        f"specificity {val.get('validation_specificity', '?')} at the network's own operating point.",
        "",
    ]
    lines += _table("Real-anatomy validation (calibration and operating point were chosen here):", spec.extra.get("real_validation", {}))
    lines += _table("Phantom validation of the filtered detector:", spec.extra.get("phantom_validation", {}))
    lines += _table("Test on phantoms (`triage evaluate`, seeds never used in training or validation):", test)
    lines += _table(
        "Test on real anatomy (`triage samples real` then `triage evaluate`; test split, never drawn for training or calibration):",
        spec.extra.get("real_test", {}),
    )
    lines += [
        "## Limitations",
        "",
        *([f"- {_KNOWN[spec.name]}"] if spec.name in _KNOWN else []),
        "- The network learnt from phantoms; the filter and calibration from phantoms and inserted lesions in one "
        "real scan per family. Real scans from other scanners, patients and pathology differ (motion, metal, "
        "post-operative change, contrast, paediatric anatomy, real rather than inserted lesions).",
        "- A site must check the operating point on its own labelled studies before relying on the ordering "
        "(`triage evaluate FOLDER --labels labels.csv --set-operating-point`).",
        "- It scores the series it is routed; it does not say a study is normal, and it never removes a case from the worklist.",
        "",
    ]
    return "\n".join(lines)
