"""The ``triage`` command: real runs, one-line errors, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import REPO_ROOT
from triage.app.cli import SAMPLE_STUDIES, main
from triage.bench.common import free_port


def test_replay_then_studies(server, make_ct_series, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_ct_series(slices=5)
    (tmp_path / "series0" / "notes.txt").write_text("not DICOM")
    assert main(["replay", str(tmp_path / "series0"), "--to", f"127.0.0.1:{server.port}", "--no-progress"]) == 0
    assert "sent 5, failed 0, skipped 1 non-DICOM files" in capsys.readouterr().out

    assert main(["studies", "--data-dir", str(server.settings.data_dir), "--json"]) == 0
    [study] = json.loads(capsys.readouterr().out)
    assert (study["modality"], study["num_series"], study["num_instances"], study["status"]) == ("CT", 1, 5, "receiving")
    assert study["description"] == "CT HEAD WO CONTRAST" and study["patient_id"] == "PHANTOM001"
    # Not scored yet: ranked by order priority and waiting alone, and it says so.
    assert (study["rank"], study["priority_class"], study["ai_status"]) == (1, "routine", "pending")
    assert "AI result pending" in study["reasons"]

    assert main(["studies", "--data-dir", str(server.settings.data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["#", "CLASS", "SCORE"] and "CT HEAD WO CONTRAST" in lines[1]
    assert lines[2].strip().startswith("why: AI result pending")


def test_echo(server, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", f"127.0.0.1:{server.port}"]) == 0
    assert "success" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["echo", "nohostport"], "expected HOST:PORT"),
        (["echo", "127.0.0.1:{port}", "--timeout", "2"], "could not be established: refused"),
        (["replay", "/no/such/folder", "--to", "127.0.0.1:104"], "no such file or folder"),
        (["studies", "--data-dir", "{tmp}/empty"], "no study index"),
    ],
)
def test_user_errors_are_one_line(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(port=free_port(), tmp=tmp_path) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_replay_to_nobody_fails_every_file(make_ct_series, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_ct_series(slices=3)
    port = free_port()
    assert main(["replay", str(tmp_path / "series0"), "--to", f"127.0.0.1:{port}", "--no-progress", "--timeout", "2"]) == 1
    assert "sent 0, failed 3" in capsys.readouterr().out


# -- score / evaluate / train ------------------------------------------------------------
# Throw-away cards (untrained tiny networks) in tmp folders; the package's
# shipped models are hidden (the no_shipped_models fixture of conftest) so these tests do not depend on them.


@pytest.fixture(scope="module")
def cli_cards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.triage.detector_cards import write_card

    out = tmp_path_factory.mktemp("cli-cards")
    return {name: write_card(name, out) for name in ("bleed-ct", "fracture-xr")}


@pytest.fixture(scope="module")
def manifest_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """head CT, extremity XR, abdomen CT, each without then with a finding (abdomen: never)."""
    from triage.samples.phantom_studies import generate_samples

    out = tmp_path_factory.mktemp("manifest")
    generate_samples(out, 6, 3, ["head_ct", "extremity_xr", "abdomen_ct"])
    return out


SAMPLES = Path(__file__).resolve().parents[3] / "sample_studies"


def test_score_json(no_shipped_models: Path, cli_cards: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "score",
        str(SAMPLES / "03_extremity_xr"),
        str(SAMPLES / "04_abdomen_ct"),
        "--json",
        "--device",
        "cpu",
        "--model",
        str(cli_cards["fracture-xr"]),
        "--model",
        str(cli_cards["bleed-ct"]),
    ]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "not a medical device" in doc["disclaimer"]
    assert sorted(d["name"] for d in doc["detectors"]) == ["bleed-ct", "fracture-xr"]
    xr, abdomen = doc["studies"]
    [series] = xr["series"]
    [finding] = series["findings"]
    assert (finding["detector"], finding["kind"], finding["model"]["version"]) == ("fracture-xr", "fracture", "0.0.1")
    assert finding["urgent"] == (finding["probability"] >= finding["operating_point"])
    assert finding["regions"] and len(finding["regions"][0]["box"]) == 4
    assert abdomen["series"][0]["analysed"] is False and abdomen["series"][0]["findings"] == []


def test_score_text_shows_route_decision_regions_and_footer(
    no_shipped_models: Path, cli_cards: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.triage.detector_cards import write_card

    quiet = write_card("fracture-xr", tmp_path / "quiet", version="0.0.2", bias=-8.0)  # below every threshold
    assert main(["score", str(SAMPLES / "03_extremity_xr"), str(SAMPLES / "02_chest_xr"), "--device", "cpu", "--model", str(quiet)]) == 0
    out = capsys.readouterr().out
    assert "route: skeletal radiograph (study description 'XR FOREARM 2V')" in out
    assert "fracture-xr (fracture): probability 0.0" in out and "below operating point (0.500)" in out
    assert "model fracture-xr 0.0.2 (sha256 " in out and "no region above the region threshold" in out
    assert "route: chest radiograph (body part CHEST); no nodule detector loaded for radiograph" in out
    assert out.rstrip().endswith("(AI suggestion for worklist ordering; not a diagnosis; not a medical device)")

    assert main(["score", str(SAMPLES / "00_head_ct"), "--device", "cpu", "--model", str(cli_cards["bleed-ct"])]) == 0
    out = capsys.readouterr().out
    assert "bleed-ct (bleed): probability" in out and "URGENT (operating point 0.500)" in out
    assert "region 1: p " in out and "box rows " in out and "SOP 1.2.826." in out


def test_evaluate_writes_report_plots_json_and_shipped_cards(
    no_shipped_models: Path,
    cli_cards: dict[str, Path],
    manifest_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from detectors.spec import load_card
    from tests.triage.detector_cards import write_card

    original = write_card("bleed-ct", no_shipped_models)  # a "shipped" detector; fracture-xr comes by --model
    shipped_text = original.read_text()
    before = load_card(original)
    # The updated card and a copy of its weights go to the user's data directory, not into the package.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    shipped = tmp_path / "xdg" / "triage" / "models" / "bleed-ct.toml"
    plots = tmp_path / "plots"
    argv = [
        "evaluate",
        str(manifest_folder),
        "--plots",
        str(plots),
        "--json",
        "--device",
        "cpu",
        "--model",
        str(cli_cards["fracture-xr"]),
        "--update-cards",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    reports = {d["detector"]: d for d in doc["detectors"]}
    assert set(reports) == {"bleed-ct", "fracture-xr"}
    for report in reports.values():
        assert (report["n"], report["n_positive"], report["n_negative"]) == (2, 1, 1)
        assert report["auc"] is not None and report["sensitivity"] is not None
    assert doc["not_routed"] == {"abdomen_ct": 2} and doc["failures"] == [] and doc["manifest_seed"] == 3
    assert doc["cards_updated"] == [str(shipped)]
    assert (plots / "roc.png").stat().st_size > 1000

    after = load_card(shipped)
    test = after.extra["test"]
    assert (test["studies"], test["positive"], test["manifest_seed"]) == (2, 1, 3)
    assert test["auc"] == round(reports["bleed-ct"]["auc"], 4) and "sensitivity" in test
    assert test["command"].startswith(f"triage evaluate {manifest_folder} --plots")
    # Everything else in the card is kept.
    assert (after.sha256, after.operating_point, after.extra["training"]) == (
        before.sha256,
        before.operating_point,
        before.extra["training"],
    )
    assert "Test on phantoms (`triage evaluate`" in shipped.with_suffix(".md").read_text()
    assert "studies" in captured.err  # the progress bar
    assert original.read_text() == shipped_text and not original.with_suffix(".md").exists()
    assert (shipped.parent / "bleed-ct.pt").read_bytes() == (original.parent / "bleed-ct.pt").read_bytes()

    # --cards-dir names the folder; a second run updates the card already there.
    named = tmp_path / "named"
    argv = ["evaluate", str(manifest_folder), "--device", "cpu", "--no-progress", "--json", "--update-cards", "--cards-dir", str(named)]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["cards_updated"] == [str(named / "bleed-ct.toml")]
    assert load_card(named / "bleed-ct.toml").extra["test"]["studies"] == 2 and original.read_text() == shipped_text

    assert main(["evaluate", str(manifest_folder), "--device", "cpu", "--no-progress", "--model", str(cli_cards["fracture-xr"])]) == 0
    out = capsys.readouterr().out
    assert "bleed-ct" in out and "fracture-xr" in out and "AUC" in out
    assert "not scored: 2 studies routed to no detector (abdomen_ct 2)" in out


def test_evaluate_lists_failures_instead_of_crashing(
    no_shipped_models: Path, cli_cards: dict[str, Path], manifest_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    folder = tmp_path / "broken"
    manifest = json.loads((manifest_folder / "manifest.json").read_text())
    head = manifest["studies"][0]
    shutil.copytree(manifest_folder / head["folder"], folder / head["folder"])
    manifest["studies"] = [head, {**head, "folder": "99_missing", "study_uid": "1.2.3"}]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert main(["evaluate", str(folder), "--device", "cpu", "--no-progress", "--model", str(cli_cards["bleed-ct"])]) == 1
    out = capsys.readouterr().out
    assert "1 scoring failures:" in out and "99_missing: study folder missing" in out


@pytest.mark.parametrize(
    ("argv", "message", "code"),
    [
        (["score", "{samples}", "--device", "gpu"], "config: detectors.device: must be", 2),
        (["score", "{samples}", "--device", "cuda:99"], "config: detectors.device:", 2),
        (["score", "{samples}", "--model", "{tmp}/nope.toml"], "--model: no such model card", 2),
        (["score", "{samples}", "--model", "{tmp}/bad.toml", "--device", "cpu"], "model card: ", 2),
        (["score", "{tmp}/no-such-folder", "--device", "cpu"], "no such file or folder", 1),
        (["score", "{tmp}", "--device", "cpu"], "no DICOM files found", 1),
        (["evaluate", "{tmp}", "--device", "cpu"], "no manifest.json in", 1),
        (["evaluate", "{tmp}", "--cards-dir", "{tmp}"], "--cards-dir needs --update-cards", 2),
        (["train", "bleed", "--epochs", "0"], "--epochs must be at least 1", 2),
        (["train", "bleed", "--device", "tpu"], "config: detectors.device", 2),
    ],
)
def test_detector_command_errors_are_one_line(
    no_shipped_models: Path, argv: list[str], message: str, code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.toml").write_text('name = "x"\nkind = "tumour"\n')
    argv = [a.format(samples=SAMPLES / "02_chest_xr", tmp=tmp_path) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_train_help_lists_the_kinds_and_true_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from detectors.routing import FindingKind
    from detectors.train import TrainConfig
    from triage.app.cli import FINDING_KINDS

    assert FINDING_KINDS == tuple(k.value for k in FindingKind)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "{bleed,fracture,nodule}" in out
    assert f"(default {TrainConfig.epochs})" in out and f"(default {TrainConfig.phantoms})" in out
    assert f"(default {TrainConfig.validation})" in out


def test_train_trains_every_task_of_the_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The wiring only: detectors.train.train itself is tested with the detectors."""
    from dataclasses import replace

    import triage.research.training
    from detectors.tasks import TASKS
    from detectors.train import TrainResult

    calls = []

    def fake_train(name, cfg, out_dir, progress, command):  # noqa: ANN001, ANN202
        calls.append((name, cfg, out_dir, command))
        for stage, total in (("phantoms", 2), ("training", 3), ("validation", 2)):
            for done in range(1, total + 1):
                progress(stage, done, total)
        spec = replace(TASKS[name].spec, sha256="ab" * 32, operating_point=0.25)
        metrics = {
            "validation_studies": 2,
            "validation_positive": 1,
            "validation_auc": 0.75,
            "validation_sensitivity": 1.0,
            "validation_specificity": 0.5,
        }
        return TrainResult(spec, out_dir / f"{name}.toml", metrics)

    monkeypatch.setattr(triage.research.training, "train", fake_train)
    argv = [
        "train",
        "nodule",
        "--epochs",
        "2",
        "--seed",
        "5",
        "--device",
        "cpu",
        "--phantoms",
        "3",
        "--validation",
        "2",
        "--workers",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    assert [c[0] for c in calls] == ["nodule-ct", "nodule-xr"]
    _, cfg, out_dir, command = calls[0]
    assert (cfg.epochs, cfg.seed, cfg.device, cfg.phantoms, cfg.validation, cfg.workers) == (2, 5, "cpu", 3, 2, 1)
    assert out_dir == tmp_path and command == "triage " + " ".join(argv)
    captured = capsys.readouterr()
    assert f"nodule-ct 1.0.0: weights {tmp_path / 'nodule-ct.pt'} (sha256 abababababab)" in captured.out
    assert "AUC 0.75, sensitivity 1.0, specificity 0.5 at operating point 0.2500" in captured.out
    assert "nodule-xr validation" in captured.err  # one bar per stage, named for the task


def test_train_writes_to_the_user_data_dir_not_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dataclasses import replace

    import detectors.registry
    import triage.research.training
    from detectors.tasks import TASKS
    from detectors.train import TrainResult

    out_dirs = []

    def fake_train(name, cfg, out_dir, progress, command):  # noqa: ANN001, ANN202
        out_dirs.append(out_dir)
        spec = replace(TASKS[name].spec, sha256="ab" * 32, operating_point=0.25)
        return TrainResult(spec, out_dir / f"{name}.toml", {"validation_studies": 2, "validation_positive": 1})

    monkeypatch.setattr(triage.research.training, "train", fake_train)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert main(["train", "bleed", "--device", "cpu", "--no-progress"]) == 0
    models = tmp_path / "xdg" / "triage" / "models"
    assert out_dirs == [models] and models != detectors.registry.MODELS_DIR
    assert f"cards in {models}: score with them by listing them in [detectors] external" in capsys.readouterr().out


def test_train_that_cannot_calibrate_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import triage.research.training

    def fake_train(name, cfg, out_dir, progress, command):  # noqa: ANN001, ANN202
        raise ValueError('Argument "labels" must hold both classes, got 2 positive and 0 negative')

    monkeypatch.setattr(triage.research.training, "train", fake_train)
    assert main(["train", "bleed", "--device", "cpu", "--out", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith('triage: error: training bleed-ct failed: Argument "labels" must hold both classes')
    assert err.count("\n") == 1


def test_demo_default_samples_are_the_committed_ones() -> None:
    # `make demo` runs `triage demo` with this default: it must name the repository's sample_studies/.
    assert SAMPLE_STUDIES == REPO_ROOT / "sample_studies"
    assert (SAMPLE_STUDIES / "manifest.json").is_file() and any(SAMPLE_STUDIES.rglob("*.dcm"))
