"""``triage evaluate FOLDER --labels CSV``: local validation on a site's own labelled studies.

The labels are built from the committed sample studies' manifest (study UIDs,
accession numbers and true findings) and run through the real CLI. Detectors
are throw-away tiny cards (the shipped models are hidden), as in test_cli.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pydicom import dcmread

from triage.app.cli import main
from triage.research.local_validation import LabelsError, parse_labels, slice_band, subgroups
from triage.research.site_operating_points import choose_operating_points, write_operating_points

SAMPLES = Path(__file__).resolve().parents[3] / "sample_studies"
MODELS = Path(__file__).resolve().parents[3] / "detectors" / "models"
MANIFEST = json.loads((SAMPLES / "manifest.json").read_text())


@pytest.fixture(autouse=True)
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of our own (./triage.toml lands there) and no inherited settings file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRIAGE_CONFIG", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from tests.triage.detector_cards import write_card

    out = tmp_path_factory.mktemp("lv-cards")
    return [a for name in ("bleed-ct", "fracture-xr", "nodule-xr") for a in ("--model", str(write_card(name, out)))]


def _accession(folder: Path) -> str:
    return str(dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True).AccessionNumber)


def labels_csv(
    path: Path,
    manifest: dict,
    folder: Path,
    *,
    by: str = "study_uid",
    skip: int | None = None,
    extra: str | None = None,
    regions: bool = True,
) -> Path:
    """A site's CSV from a manifest: every kind 1/0 from the true findings, regions from their SOPs and boxes."""
    rows = [f"{by},bleed,fracture,nodule,bleed_sop_uid,bleed_box,nodule_sop_uid,nodule_box"]
    for i, study in enumerate(manifest["studies"]):
        if i == skip:
            continue
        ident = study["study_uid"] if by == "study_uid" else _accession(folder / study["folder"])
        kinds = {f["kind"]: f for f in study["findings"]}
        cells = [ident, *("1" if k in kinds else "0" for k in ("bleed", "fracture", "nodule"))]
        for kind in ("bleed", "nodule"):
            f = kinds.get(kind)
            ok = regions and f is not None
            cells += [" ".join(f["sop_instance_uids"]) if ok else "", " ".join(map(str, f["box"])) if ok else ""]
        rows.append(",".join(cells))
    if extra:
        rows.append(extra)
    path.write_text("\n".join(rows) + "\n")
    return path


def _sha(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# -- the whole path through the CLI ------------------------------------------------------------


def test_labels_give_the_same_report_with_subgroups_plots_and_unmatched_studies(
    no_shipped_models: Path, cards: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = labels_csv(tmp_path / "labels.csv", MANIFEST, SAMPLES, skip=0, extra="1.2.3.4,1,,,,,,")
    plots = tmp_path / "plots"
    argv = ["evaluate", str(SAMPLES), "--labels", str(labels), "--json", "--no-progress", "--device", "cpu", "--plots", str(plots), *cards]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    reports = {d["detector"]: d for d in doc["detectors"]}
    # Study 00 (a normal head CT) is left out of the CSV: two head CTs remain, one with a bleed.
    assert (reports["bleed-ct"]["n"], reports["bleed-ct"]["n_positive"]) == (2, 1)
    assert (reports["fracture-xr"]["n"], reports["fracture-xr"]["n_positive"]) == (2, 1)
    # The labelled region maps onto the scored series' own slices: the one true lesion is counted.
    assert reports["bleed-ct"]["localisation"]["lesions"] == 1
    assert reports["nodule-xr"]["localisation"]["lesions"] == 1
    assert doc["labels"]["not_in_folder"] == ["1.2.3.4"]
    [unlabelled] = doc["labels"]["not_in_labels"]
    assert unlabelled.startswith(MANIFEST["studies"][0]["study_uid"])
    assert "labelled studies; not a medical device" in doc["disclaimer"]
    for report in reports.values():
        calibration = report["calibration"]
        assert 0.0 <= calibration["expected_calibration_error"] <= 1.0
        assert sum(b["n"] for b in calibration["bins"]) == report["n"]
        assert (plots / f"reliability-{report['detector']}.png").stat().st_size > 1000
    assert (plots / "roc.png").is_file()
    dims = {(g["detector"], g["dimension"]) for g in doc["subgroups"]}
    assert {
        ("bleed-ct", "sex"),
        ("bleed-ct", "age"),
        ("bleed-ct", "manufacturer"),
        ("bleed-ct", "model"),
        ("bleed-ct", "slice thickness"),
    } <= dims
    assert ("fracture-xr", "slice thickness") not in dims  # radiographs have no slice thickness band
    # Two studies per detector: every subgroup is below the minimum count, so no rate is given.
    assert all(g["sensitivity"] is None and g["specificity"] is None for g in doc["subgroups"])


def test_accession_numbers_identify_studies_and_the_text_report_says_what_matched(
    no_shipped_models: Path, cards: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = labels_csv(tmp_path / "labels.csv", MANIFEST, SAMPLES, by="accession", regions=False)
    assert main(["evaluate", str(SAMPLES), "--labels", str(labels), "--no-progress", "--device", "cpu", "--min-n", "1", *cards]) == 0
    out = capsys.readouterr().out
    assert f"(by accession): {len(MANIFEST['studies'])} labelled, {len(MANIFEST['studies'])} matched" in out
    assert "bleed-ct     3 (1/2)" in out and "ECE" in out
    assert "-- subgroups (a rate needs at least 1 studies of its class) --" in out
    assert "bleed-ct     sex: M" in out and "too few" not in out.split("-- subgroups")[1].split("labels:")[0]
    assert "not in the folder" not in out and "not in the labels" not in out
    assert "(the site's own labelled studies; not a medical device)" in out


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("uid,bleed\n1.2.3,1\n", "labels.csv:1: no study id column (study_uid or accession)"),
        ("study_uid,notes\n1.2.3,x\n", "labels.csv:1: no finding column"),
        ("study_uid,bleed\n1.2.3,1\n1.2.4,maybe\n", "labels.csv:3: column bleed: unknown value 'maybe'"),
        ("study_uid,bleed\n1.2.3,1\n1.2.3,0\n", "labels.csv:3: column study_uid: 1.2.3 already labelled on line 2"),
        ("study_uid,bleed\nabc,1\n", "labels.csv:2: column study_uid: not a DICOM UID: 'abc'"),
        (
            "study_uid,bleed,bleed_sop_uid,bleed_box\n1.2.3,1,1.2.9,10 10 5 20\n",
            "labels.csv:2: column bleed_box: box must have 0 <= row0 < row1",
        ),
        (
            "study_uid,bleed,bleed_sop_uid,bleed_box\n1.2.3,1,1.2.9,10 10 20\n",
            "labels.csv:2: column bleed_box: box must be four whole numbers",
        ),
        (
            "study_uid,bleed,bleed_sop_uid,bleed_box\n1.2.3,0,1.2.9,1 1 5 5\n",
            "labels.csv:2: column bleed_box: a bleed region on a study not labelled bleed positive",
        ),
        ("study_uid,bleed,bleed_box\n1.2.3,1,1 1 5 5\n", "labels.csv:1: column bleed_box: needs a bleed_sop_uid column"),
        ("", "labels.csv:1: no header row"),
    ],
)
def test_a_bad_csv_is_one_line_naming_file_line_and_column(
    no_shipped_models: Path, csv: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "labels.csv").write_text(csv)
    assert main(["evaluate", str(SAMPLES), "--labels", str(tmp_path / "labels.csv"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_flags_that_need_labels_or_a_manifest_are_usage_errors(
    no_shipped_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(SAMPLES), "--set-operating-point", "--device", "cpu"]) == 2
    assert "--set-operating-point needs --labels" in capsys.readouterr().err
    labels = labels_csv(tmp_path / "labels.csv", MANIFEST, SAMPLES)
    assert main(["evaluate", str(SAMPLES), "--labels", str(labels), "--update-cards", "--device", "cpu"]) == 2
    assert "never go into the shipped cards" in capsys.readouterr().err


# -- the site's operating point -----------------------------------------------------------------


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Twelve forearm radiographs, six with a fracture: enough positives to choose a point."""
    from triage.samples.phantom_studies import generate_samples

    out = tmp_path_factory.mktemp("lv-xr")
    return out, generate_samples(out, 12, 5, ["extremity_xr"])


def test_set_operating_point_writes_the_site_config_and_findings_carry_it(
    no_shipped_models: Path, radiographs: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.triage.detector_cards import write_card

    folder, manifest = radiographs
    card = write_card("fracture-xr", tmp_path / "cards", bias=0.0)
    cards_before, shipped_before = _sha(card.parent), _sha(MODELS)
    config = tmp_path / "site.toml"
    config.write_text('# our site\nlog_level = "WARNING"\n\n[detectors]\ndevice = "cpu"  # no GPU here\n')
    labels = labels_csv(tmp_path / "labels.csv", manifest, folder)
    argv = [
        "evaluate",
        str(folder),
        "--labels",
        str(labels),
        "--no-progress",
        "--model",
        str(card),
        "--set-operating-point",
        "--target-sensitivity",
        "0.8",
        "--config",
        str(config),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"operating points (target sensitivity 0.8) in {config}:" in out
    assert "fracture-xr: 0.5 (card) -> " in out and "(6 positive, 6 negative); local sensitivity" in out

    text = config.read_text()
    assert text.startswith('# our site\nlog_level = "WARNING"') and 'device = "cpu"  # no GPU here' in text
    from triage.config import load_settings

    point = load_settings(config, environ={}).detectors.operating_points["fracture-xr"]
    assert 0.0 <= point <= 1.0 and point != 0.5
    # Never the cards: neither the detector's own nor the package's shipped models.
    assert _sha(card.parent) == cards_before and _sha(MODELS) == shipped_before

    # Loaded with that config, the detector's Findings carry the site's point; the model is the same.
    assert main(["score", str(folder / manifest["studies"][1]["folder"]), "--json", "--model", str(card), "--config", str(config)]) == 0
    [finding] = json.loads(capsys.readouterr().out)["studies"][0]["series"][0]["findings"]
    assert finding["operating_point"] == point
    assert finding["model"]["sha256"] == hashlib.sha256((card.parent / "fracture-xr.pt").read_bytes()).hexdigest()

    # Run again: the old value shown is now the site's.
    assert main(argv) == 0
    assert f"fracture-xr: {point:.4g} (site) -> " in capsys.readouterr().out


def test_too_few_positives_refuse_and_nothing_is_written(
    no_shipped_models: Path, cards: list[str], site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = labels_csv(tmp_path / "labels.csv", MANIFEST, SAMPLES)
    assert (
        main(["evaluate", str(SAMPLES), "--labels", str(labels), "--no-progress", "--device", "cpu", "--set-operating-point", *cards]) == 1
    )
    out = capsys.readouterr().out
    assert "bleed-ct: not set: 1 positive study, at least 5 needed" in out
    assert not (site / "triage.toml").exists()


def test_an_operating_point_for_no_loaded_detector_is_a_config_error(
    no_shipped_models: Path, cards: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "triage.toml").write_text('[detectors.operating_points]\n"bleed-cx" = 0.4\n')
    assert main(["score", str(SAMPLES / "00_head_ct"), "--device", "cpu", *cards]) == 2
    err = capsys.readouterr().err
    assert "config: detectors.operating_points.bleed-cx: no loaded detector is named 'bleed-cx'" in err
    assert err.count("\n") == 1


def test_the_config_file_is_never_a_shipped_card(no_shipped_models: Path, tmp_path: Path) -> None:
    from triage.errors import ConfigError
    from triage.research.site_operating_points import site_config_path

    with pytest.raises(ConfigError, match="inside the shipped models"):
        site_config_path(no_shipped_models / "bleed-ct.toml", {})
    assert site_config_path(None, {}) == Path("triage.toml")
    assert site_config_path(None, {"TRIAGE_CONFIG": str(tmp_path / "x.toml")}) == tmp_path / "x.toml"


def test_write_operating_points_creates_or_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "triage.toml"
    assert write_operating_points(path, {"bleed-ct": 0.25}) == {"bleed-ct": None}
    assert write_operating_points(path, {"bleed-ct": 0.5, "nodule-ct": 0.125}) == {"bleed-ct": 0.25, "nodule-ct": None}
    import tomllib

    assert tomllib.loads(path.read_text())["detectors"]["operating_points"] == {"bleed-ct": 0.5, "nodule-ct": 0.125}


def test_config_validates_site_operating_points(tmp_path: Path) -> None:
    from triage.config import load_settings
    from triage.errors import ConfigError

    cfg = tmp_path / "triage.toml"
    cfg.write_text('[detectors.operating_points]\n"bleed-ct" = 0.42\n"nodule.ct" = 0.1\n')
    assert load_settings(cfg, environ={}).detectors.operating_points == {"bleed-ct": 0.42, "nodule.ct": 0.1}
    env = {"TRIAGE_DETECTORS__OPERATING_POINTS": '{"bleed-ct": 0.3}'}
    assert load_settings(environ=env).detectors.operating_points == {"bleed-ct": 0.3}
    for body, message in (
        ('"bleed-ct" = 1.5', "config: detectors.operating_points: bleed-ct: must be a probability in [0, 1], got 1.5"),
        ('"bleed-ct" = "high"', "config: detectors.operating_points.bleed-ct: Input should be a valid number"),
    ):
        cfg.write_text(f"[detectors.operating_points]\n{body}\n")
        with pytest.raises(ConfigError) as err:
            load_settings(cfg, environ={})
        assert str(err.value).startswith(message) and "\n" not in str(err.value)


# -- pure parts ---------------------------------------------------------------------------------


def test_parse_labels_values_delimiters_and_regions() -> None:
    text = (
        "\ufeffAccession Number;Bleed;Nodule;nodule_sop_uid;nodule_box;notes\n"
        "A1;Yes;;;;x\nA2;negative;FALSE;;;\n\nA3;0;positive;1.2.3 1.2.4;10 20 30 40;\n"
    )
    labels = parse_labels(text, "site.csv")
    assert (labels.id_column, labels.kinds) == ("accession", ("bleed", "nodule"))
    a1, a2, a3 = labels.studies["A1"], labels.studies["A2"], labels.studies["A3"]
    assert a1.present == {"bleed": True} and a1.line == 2  # nodule empty: unknown, not evaluated
    assert a2.present == {"bleed": False, "nodule": False}
    assert a3.line == 5 and a3.regions["nodule"].sop_uids == ("1.2.3", "1.2.4")
    assert a3.regions["nodule"].box == (10, 20, 30, 40)


def test_a_region_on_an_unknown_label_is_refused() -> None:
    with pytest.raises(LabelsError, match=r"site.csv:2: column nodule_box: a nodule region on a study not labelled"):
        parse_labels("accession,nodule,nodule_sop_uid,nodule_box\nA1,,1.2.3,1 2 3 4\n", "site.csv")


def test_slice_bands() -> None:
    assert [slice_band(v) for v in ("0.625", 1.25, "2.5", "5", "", None, "-1")] == [
        "<= 1.25 mm",
        "<= 1.25 mm",
        "1.25-3 mm",
        "> 3 mm",
        "unknown",
        "unknown",
        "unknown",
    ]


def _outcome(label: bool, p: float, op: float = 0.5) -> object:
    from detectors.evaluation import StudyOutcome

    return StudyOutcome(kind="bleed-ct", study_folder="s", label=label, probability=p, urgent=p >= op, operating_point=op)


def test_subgroups_give_rates_only_with_enough_studies() -> None:
    outcomes = [_outcome(True, 0.9)] * 5 + [_outcome(False, 0.1)] * 5 + [_outcome(True, 0.2)] * 2
    strata = [{"sex": "F"}] * 10 + [{"sex": "M"}] * 2
    m, f = subgroups(outcomes, strata, min_n=5)  # sexes in PS3.3 order: M, F, O
    assert (f.value, f.sensitivity_judged, f.specificity_judged, f.counts.sensitivity) == ("F", True, True, 1.0)
    assert f.auc == 1.0 and f.as_json()["sensitivity"]["ci"][1] == 1.0
    assert (m.value, m.sensitivity_judged, m.as_json()["sensitivity"]) == ("M", False, None)


def test_operating_point_keeps_the_target_and_refuses_few_positives() -> None:
    positives = [0.9, 0.8, 0.7, 0.6, 0.4]
    outcomes = [_outcome(True, p) for p in positives] + [_outcome(False, p) for p in (0.5, 0.3, 0.1)]
    [choice] = choose_operating_points(outcomes, target_sensitivity=0.8)
    # 4 of 5 positives keep 0.8: the threshold sits between 0.6 and the highest negative below it (0.5).
    assert 0.5 < choice.value <= 0.6 and choice.at_new.sensitivity == 0.8 and choice.previous == 0.5
    [refused] = choose_operating_points(outcomes[3:], target_sensitivity=0.8)
    assert refused.value is None and refused.refused == "2 positive studies, at least 5 needed"
