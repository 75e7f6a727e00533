"""The ``triage`` command: parses arguments, builds settings, calls the parts.

A :class:`~triage.errors.TriageError` is printed as one line on stderr with its
exit code (2 for configuration and usage); nothing a user can cause prints a
traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from triage import __version__
from triage.app import cli_case, cli_config, cli_db, cli_readers, cli_retention
from triage.app.plugins import add_bench_commands
from triage.bench import infer as bench_infer
from triage.bench import pipeline as bench_pipeline
from triage.bench import scale as bench_scale
from triage.config import Settings, load_settings
from triage.errors import USER_ERRORS, ConfigError, TriageError, missing_extra
from triage.logs import setup_logging
from triage.vocabulary import FINDING_KINDS

if TYPE_CHECKING:
    from detectors.engine import InferenceEngine
    from detectors.registry import DetectorSet


SAMPLE_STUDIES = Path(__file__).resolve().parents[2] / "sample_studies"  # the repository's, beside the packages


LABELS_HELP = """\
labels CSV (--labels): a header row, then one row per study
  study_uid or accession   the Study Instance UID or the Accession Number (study_uid wins if both)
  bleed, fracture, nodule  1/0, yes/no, y/n, true/false, positive/negative; empty: unknown,
                           the study is not evaluated for that kind (any subset of the three)
  <kind>_sop_uid           optional: SOP Instance UID(s) of the image(s) the lesion is on, space-separated
  <kind>_box               optional: "row0 col0 row1 col1", half-open, in those images' own pixels
Other columns are ignored. Comma, semicolon or tab separated. Example:
  study_uid,bleed,bleed_sop_uid,bleed_box
  1.2.826.0.1.3680043.8.498.1,1,1.2.826.0.1.3680043.8.498.7,165 121 188 144
  1.2.826.0.1.3680043.8.498.2,0,,
"""


class UsageError(TriageError):
    """A flag value the command cannot use (exit 2, like argparse's own usage errors)."""

    exit_code = 2


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML settings file (default: the first of $TRIAGE_CONFIG, ./triage.toml, the user's config directory, "
        "/etc/triage/triage.toml)",
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging verbosity")


def _add_store_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--data-dir", metavar="DIR", help="data directory (default: the user's data home)")
    g.add_argument("--db", metavar="URL", help="SQLAlchemy database URL (default: SQLite in the data directory)")


# The flag behind each override, so that a bad value names it ("(from --port)").
_FLAGS = {
    "data_dir": "--data-dir",
    "db": "--db",
    "log_level": "--log-level",
    "role": "--role",
    "listener.port": "--port",
    "listener.ae_title": "--ae-title",
    "listener.host": "--host",
    "detectors.device": "--device",
}


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    overrides.setdefault("data_dir", getattr(args, "data_dir", None))
    overrides.setdefault("db", getattr(args, "db", None))
    overrides.setdefault("log_level", getattr(args, "log_level", None))
    settings = load_settings(args.config, overrides=overrides, flags=_FLAGS)
    setup_logging(settings.log_level)
    from triage.store.audit_key import set_key_file

    set_key_file(settings.audit.key_file)  # every audit event this process appends or verifies uses [audit] key_file
    return settings


def _add_detector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: [detectors] device, auto)")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="CARD",
        help="an external model card (TOML beside its TorchScript weights); repeat for several; "
        "replaces the shipped detector of the same finding kind and image family",
    )
    _add_config_args(p)


def _offline_settings(args: argparse.Namespace) -> Settings:
    """Settings with ``--device`` applied; logging at WARNING unless ``--log-level`` says otherwise.

    Offline commands print their own report, which INFO lines (the server's
    default level) would only interleave with.
    """
    settings = load_settings(args.config, overrides={"detectors.device": args.device, "log_level": args.log_level}, flags=_FLAGS)
    setup_logging(args.log_level or "WARNING")
    return settings


def _command_line(args: argparse.Namespace) -> str:
    return shlex.join(["triage", *args.argv])


def _resolve_device(name: str) -> str:
    from detectors.engine import pick_device

    try:
        return str(pick_device(name))
    except ValueError as exc:
        # pick_device names the argument; the user set a key or a flag, so name that instead.
        why = str(exc).split(", but ", 1)[-1]
        raise ConfigError(f"config: detectors.device: {name!r} cannot be used: {why}") from None


@contextmanager
def _scoring(args: argparse.Namespace) -> Iterator[tuple[DetectorSet, InferenceEngine]]:
    """Settings, detectors (shipped + config + --model) and an engine, closed on the way out."""
    from detectors.engine import InferenceEngine
    from detectors.registry import OperatingPointError, load_detectors
    from detectors.spec import CardError

    settings = _offline_settings(args)
    cfg = settings.detectors
    device = _resolve_device(cfg.device)
    for card in args.model:
        if not Path(card).is_file():
            raise UsageError(f"--model: no such model card: {card}")
    try:
        detectors = load_detectors([*cfg.external, *args.model], device=device, operating_points=cfg.operating_points)
    except CardError as exc:  # a bad card is configuration: exit 2
        raise ConfigError(f"model card: {exc}") from None
    except OperatingPointError as exc:  # the site's [detectors.operating_points] names no loaded detector
        raise ConfigError(f"config: detectors.operating_points.{exc.name}: {exc}") from None
    with InferenceEngine(device, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms, workers=cfg.workers) as engine:
        yield detectors, engine


def _cmd_serve(args: argparse.Namespace) -> int:
    from triage.app.server import serve

    settings = _settings(
        args, **{"listener.port": args.port, "listener.ae_title": args.ae_title, "listener.host": args.host, "role": args.role}
    )
    return serve(settings)


def _cmd_echo(args: argparse.Namespace) -> int:
    from dicom_io.send import echo, parse_address

    setup_logging("WARNING", pynetdicom_level="CRITICAL")
    host, port = parse_address(args.address)
    seconds = echo(host, port, called_ae=args.called_ae, calling_ae=args.calling_ae, timeout=args.timeout)
    print(f"C-ECHO {args.called_ae}@{host}:{port}: success in {seconds * 1000:.1f} ms")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from dicom_io.send import find_dicom_files, parse_address, replay
    from triage.progress import progress_bar

    setup_logging("WARNING", pynetdicom_level="CRITICAL")
    host, port = parse_address(args.to)
    files, skipped = find_dicom_files(args.paths)
    if not files:
        raise TriageError(f"no DICOM files found in {', '.join(args.paths)}")
    with progress_bar(len(files), "sending", enabled=not args.no_progress) as advance:
        summary = replay(
            files,
            host,
            port,
            called_ae=args.called_ae,
            calling_ae=args.calling_ae,
            parallel=args.parallel,
            rate=args.rate,
            timeout=args.timeout,
            on_result=lambda _f, _ok: advance(),
        )
    for path, reason in summary.failures[:20]:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    if len(summary.failures) > 20:
        print(f"... and {len(summary.failures) - 20} more failures", file=sys.stderr)
    print(
        f"sent {summary.sent}, failed {summary.failed}, skipped {len(skipped)} non-DICOM files; "
        f"{summary.seconds:.1f} s, {summary.images_per_s:.0f} images/s"
    )
    return 0 if summary.failed == 0 else 1


def _open_index(settings: Settings):
    """The engine of an existing study index; a clear error if there is none."""
    from triage.store.db import make_engine

    if not settings.db and not (settings.data_dir / "triage.db").exists():
        raise TriageError(f"no study index in {settings.data_dir} (has `triage serve` run with this --data-dir?)")
    return make_engine(settings.db_url)


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from triage.store.audit import verify

    settings = _settings(args)
    result = verify(_open_index(settings), anchor_file=settings.audit.anchor_path(settings.data_dir))
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    elif result.ok:
        print(f"audit trail intact: {result.events} events, keyed hash chain and anchors verified, current rows match it")
    elif result.mismatches:
        print(f"audit trail intact ({result.events} events), but {len(result.mismatches)} rows differ from it:", file=sys.stderr)
        for line in result.mismatches:
            print(f"  {line}", file=sys.stderr)
    elif result.first_broken_seq is None:
        print(f"audit trail BROKEN: {result.problem}", file=sys.stderr)
    else:
        print(f"audit trail BROKEN at event {result.first_broken_seq}: {result.problem}", file=sys.stderr)
    return 0 if result.ok else 3


def _cmd_audit_anchor(args: argparse.Namespace) -> int:
    from triage.store.audit import anchor
    from triage.store.audit_key import key_file, read_key

    settings = _settings(args)
    path = settings.audit.anchor_path(settings.data_dir)
    written = anchor(_open_index(settings), read_key(key_file()), path)
    if written is None:
        print("audit trail is empty: nothing to anchor")
    else:
        print(f"anchored event {written.seq} in {path}")
    return 0


def _parse_since(text: str | None):
    from datetime import datetime

    from triage.clock import as_utc

    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since: not an ISO 8601 date or time: {text!r} (e.g. 2026-11-28 or 2026-11-28T14:00)") from None
    return as_utc(value)


def _cmd_audit_export(args: argparse.Namespace) -> int:
    from triage.store.audit import export

    since = _parse_since(args.since)
    engine = _open_index(_settings(args))
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for event in export(engine, since=since, study_uid=args.study):
            out.write(json.dumps(event, ensure_ascii=False, sort_keys=True) + "\n")
    finally:
        if args.out:
            out.close()
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from triage.monitor.load import monitor_report
    from triage.monitor.plots import write_plots
    from triage.monitor.text import format_text

    if args.min_n < 1:
        raise UsageError(f"--min-n must be at least 1, got {args.min_n}")
    report = monitor_report(_open_index(_settings(args)), min_n=args.min_n)
    written = write_plots(report, Path(args.plots)) if args.plots else []
    if args.json:
        doc = report.as_json()
        doc["plots"] = [str(p) for p in written]
        print(json.dumps(doc, indent=2))
    else:
        print(format_text(report))
        if written:
            print(f"plots: {', '.join(str(p) for p in written)}")
    return 0


def _open_worklist(args: argparse.Namespace):
    from triage.reading.service import WorklistService

    settings = _settings(args)
    return WorklistService(_open_index(settings), settings)


def _add_index_args(p: argparse.ArgumentParser) -> None:
    _add_store_args(p)
    _add_config_args(p)


def _cmd_worklist(args: argparse.Namespace) -> int:
    from triage.app.plugins import worklist_runner

    run_worklist = worklist_runner()
    settings = _settings(args, log_level=args.log_level or "WARNING")
    _open_index(settings).dispose()  # a clear error before the screen takes over
    # Log lines on stderr would tear the screen: they go to the reader's own log
    # folder (not the data directory, which may be shared or read-only).
    import logging

    import platformdirs

    log_file = Path(platformdirs.user_log_dir("triage")) / "worklist.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root.addHandler(handler)
    run_worklist(settings, args.user)
    return 0


def _cmd_studies(args: argparse.Namespace) -> int:
    from triage.app.studies import format_table, item_json
    from triage.reading.service import WorklistService

    settings = _settings(args)
    service = WorklistService(_open_index(settings), settings)
    items = service.items(include_signed=not args.unsigned)
    results = service.results_by_study([i.study.study_uid for i in items])  # the outbox: results sent to the PACS
    if args.json:
        print(json.dumps([item_json(i, results.get(i.study.study_uid, [])) for i in items], indent=2))
    else:
        print(format_table(items, reasons=not args.brief, results=results))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from triage.app.demo import run_demo

    level = args.log_level or "WARNING"
    setup_logging(level)
    return run_demo(Path(args.samples), port=args.port, log_level=level, once=args.once, user=args.user)


def _cmd_samples_generate(args: argparse.Namespace) -> int:
    from triage.progress import progress_bar
    from triage.samples.phantom_studies import KINDS, generate_samples

    kinds = args.kinds or list(KINDS)
    if args.n < 1:
        raise TriageError(f"--n must be at least 1, got {args.n}")
    if unknown := [k for k in kinds if k not in KINDS]:
        raise TriageError(f"--kinds: unknown kind {unknown[0]!r}; choose from {', '.join(KINDS)}")
    out = Path(args.out)
    with progress_bar(args.n, "studies", enabled=not args.no_progress) as advance:
        manifest = generate_samples(out, args.n, args.seed, kinds, progress=advance, acquisition=args.acquisition)
    studies = cast(list[dict[str, Any]], manifest["studies"])
    with_finding = sum(1 for s in studies if s["present"])
    print(f"wrote {args.n} studies ({with_finding} with a finding) and {out / 'manifest.json'}")
    return 0


def _cmd_samples_real(args: argparse.Namespace) -> int:
    from detectors.realdata import RealDataError
    from triage.progress import progress_bar
    from triage.samples.real_studies import generate_real_samples

    counts = {"head_ct": args.head_ct, "chest_xr": args.chest_xr, "extremity_xr": args.extremity_xr}
    if any(n < 0 for n in counts.values()) or not any(counts.values()):
        raise TriageError("--head-ct, --chest-xr and --extremity-xr must be >= 0, and one of them > 0")
    out = Path(args.out)
    try:
        with progress_bar(sum(counts.values()), "studies", enabled=not args.no_progress) as advance:
            manifest = generate_real_samples(out, {k: n for k, n in counts.items() if n}, args.seed, progress=advance)
    except RealDataError as exc:
        raise TriageError(str(exc)) from None
    inserted = sum(1 for s in manifest["studies"] if any(f.get("origin") == "inserted" for f in s["findings"]))
    print(f"wrote {len(manifest['studies'])} real-anatomy studies ({inserted} with an inserted finding) and {out / 'manifest.json'}")
    return 0


def _cmd_realdata(args: argparse.Namespace) -> int:
    from detectors import realdata

    if args.action == "fetch":
        try:
            paths = realdata.fetch()
        except realdata.RealDataError as exc:
            raise TriageError(str(exc)) from None
        print("\n".join(str(p) for p in paths))
        return 0
    for case in realdata.CASES:
        cached = (realdata.cache_dir() / case.name).is_file()
        print(
            f"{case.name}  [{case.package.registry} {case.package.name} {case.package.version}, {case.package.licence}]"
            f"{'  cached' if cached else ''}\n    {case.shows}"
        )
    print(f"cache: {realdata.cache_dir()} (${realdata.ENV_DIR})")
    return 0


def _cmd_train_filter(args: argparse.Namespace) -> int:
    from detectors.train_filter import train_filter

    def progress(stage: str, done: int, total: int) -> None:
        if not args.no_progress:
            print(f"\r{stage}: {done}/{total} cases", end="\n" if done == total else "", file=sys.stderr, flush=True)

    out = Path(args.out) if args.out else None
    where: dict[str, Any] = {"out_dir": out} if out else {}
    path = train_filter(args.name, tuple(args.real), tuple(args.phantoms), l2=args.l2, progress=progress, **where)
    print(f"wrote {path} and {path.with_suffix('.md').name}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from triage.app.score_report import format_scores
    from triage.flow.scoring import score_paths

    with _scoring(args) as (detectors, engine):
        report = score_paths(args.paths, detectors, engine)
    if not report.studies and not report.unreadable:
        raise TriageError(f"no DICOM files found in {', '.join(args.paths)}")
    if args.json:
        doc = report.as_json()
        doc["detectors"] = [
            {"name": d.name, "kind": d.kind.value, "family": d.family.value, "version": d.identity.version, "sha256": d.identity.sha256}
            for d in detectors
        ]
        print(json.dumps(doc, indent=2))
    else:
        print(format_scores(report))
    return 1 if report.failures or report.unreadable else 0


def _figure_key(label: str) -> str:
    """A stratum or lesion group as a card key: "slices <= 1.25 mm" -> "slices_le_1_25_mm"."""
    words = label.replace(">=", "ge").replace("<=", "le").replace("<", "under").lower()
    return re.sub(r"[^a-z0-9]+", "_", words).strip("_")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from detectors import registry
    from detectors.evaluation import DISCLAIMER, evaluate, format_reports, reports_as_json
    from detectors.plots import REAL_FOOTER as REAL_DISCLAIMER
    from triage.progress import progress_bar
    from triage.research.evaluate import acquisition_strata, lesions_found, not_scored_line, read_manifest, score_manifest, update_cards

    if args.cards_dir and not args.update_cards:
        raise UsageError("--cards-dir needs --update-cards")
    if args.labels:
        return _cmd_evaluate_labels(args)
    for flag, given in (("--set-operating-point", args.set_operating_point), ("--min-n", args.min_n is not None)):
        if given:
            raise UsageError(f"{flag} needs --labels (a site's own labelled studies)")
    folder = Path(args.path)
    total = len(read_manifest(folder)["studies"])  # before loading models: a wrong folder fails fast
    with _scoring(args) as (detectors, engine):
        with progress_bar(total, "studies", enabled=not args.no_progress) as advance:
            result = score_manifest(folder, detectors, engine, on_study=advance)
    if not result.outcomes:
        detail = not_scored_line(result) or f"{len(result.failures)} failures"
        raise TriageError(f"no study in {folder} was scored by a detector ({detail})")
    # A real-anatomy set (`triage samples real`) is not synthetic phantoms: its plots and text say so.
    disclaimer = REAL_DISCLAIMER if read_manifest(folder).get("generator") == "triage samples real" else DISCLAIMER
    reports = evaluate(result.outcomes, Path(args.plots) if args.plots else None, footer=disclaimer)
    strata = {name: evaluate(group) for name, group in acquisition_strata(folder, result.outcomes).items()}
    found = lesions_found(folder, result.outcomes)
    updated: list[Path] = []
    notes: list[str] = []
    if args.update_cards:
        if result.failures:
            notes.append(f"cards not updated: {len(result.failures)} scoring failures")
        else:
            real = read_manifest(folder).get("generator") == "triage samples real"
            by_stratum: dict[str, dict[str, Any]] = {}
            for stratum, group in strata.items():
                for r in group:
                    if r.sensitivity is not None:
                        name = _figure_key(stratum)
                        by_stratum.setdefault(r.detector, {})[f"sensitivity_{name}"] = round(r.sensitivity, 4)
                        by_stratum[r.detector][f"positives_{name}"] = r.n_positive
            for detector, groups in found.items():
                for origin, (k, n) in groups.items():
                    by_stratum.setdefault(detector, {})[f"found_{_figure_key(origin)}"] = f"{k}/{n}"
            updated, notes = update_cards(
                reports,
                result.models,
                Path(args.cards_dir) if args.cards_dir else _models_dir(),
                _command_line(args),
                result.seed,
                table="real_test" if real else "test",
                extra_figures=by_stratum,
                shipped_dir=registry.MODELS_DIR,
            )
    if args.json:
        doc = reports_as_json(reports, disclaimer) | result.as_json()
        doc["cards_updated"] = [str(p) for p in updated]
        doc["strata"] = {name: reports_as_json(group, disclaimer) for name, group in strata.items()}
        doc["lesions_found"] = {det: {g: {"found": k, "lesions": n} for g, (k, n) in groups.items()} for det, groups in found.items()}
        print(json.dumps(doc, indent=2))
    else:
        print(format_reports(reports, disclaimer))
        for name, group in strata.items():
            print(f"\n-- acquisition stratum: {name} --")
            print(format_reports(group, disclaimer))
        if found:
            print("\n-- lesions shown by a region (inserted: exact truth; read by eye: approximate boxes) --")
            for detector, groups in found.items():
                print(f"{detector}: " + "; ".join(f"{g} {k}/{n}" for g, (k, n) in groups.items()))
        lines = [f"models: {', '.join(str(m) for _, m in sorted(result.models.items()))}"]
        if line := not_scored_line(result):
            lines.append(line)
        if result.failures:
            lines.append(f"{len(result.failures)} scoring failures:")
            lines += [f"  {text}" for text in result.failures]
        lines += [f"updated {p} and {p.with_suffix('.md').name}" for p in updated] + notes
        if args.plots:
            lines.append(f"plots in {args.plots}")
        print("\n".join(lines))
    return 1 if result.failures else 0


def _cmd_evaluate_labels(args: argparse.Namespace) -> int:
    """``triage evaluate FOLDER --labels CSV``: the same report on a site's own labelled studies."""
    import os

    from detectors.evaluation import evaluate, format_reports, reports_as_json
    from detectors.plots import LOCAL_FOOTER as LOCAL_DISCLAIMER
    from triage.progress import progress_bar
    from triage.research import local_validation as lv
    from triage.research import site_operating_points as sop
    from triage.research.evaluate import not_scored_line

    if args.update_cards:
        raise UsageError(
            "--update-cards takes a sample folder: a site's figures never go into the shipped cards (use --set-operating-point)"
        )
    min_n = 5 if args.min_n is None else args.min_n
    if min_n < 1:
        raise UsageError(f"--min-n must be at least 1, got {min_n}")
    if not 0.0 < args.target_sensitivity <= 1.0:
        raise UsageError(f"--target-sensitivity must be in (0, 1], got {args.target_sensitivity}")
    config_path = sop.site_config_path(args.config, os.environ) if args.set_operating_point else None
    # The CSV and the folder's headers before the models load: a bad file fails fast.
    labels = lv.read_labels(args.labels)
    folder = Path(args.path)
    studies, unreadable = lv.read_folder(folder)
    if not studies:
        raise TriageError(f"no DICOM study found in {folder}")
    matched = lv.match_labels(labels, studies)[0]
    with _scoring(args) as (detectors, engine):
        with progress_bar(len(matched), "studies", enabled=not args.no_progress) as advance:
            result = lv.score_labelled(folder, labels, detectors, engine, studies, unreadable, on_study=advance)
    if not result.outcomes:
        detail = not_scored_line(result) or f"{result.studies} labelled studies in the folder"
        raise TriageError(f"no labelled study in {folder} was scored by a detector ({detail})")
    reports = evaluate(result.outcomes, Path(args.plots) if args.plots else None, footer=LOCAL_DISCLAIMER)
    groups = lv.subgroups(result.outcomes, result.strata, min_n=min_n)
    choices: list[sop.OperatingPointChoice] = []
    previous: dict[str, float | None] = {}
    refusal = None
    chosen: dict[str, float] = {}
    if config_path is not None:
        choices = sop.choose_operating_points(result.outcomes, args.target_sensitivity)
        chosen = {c.detector: c.value for c in choices if c.value is not None}
        if result.failures:
            refusal = f"operating points not written: {len(result.failures)} scoring failures (fix them, or move them out)"
        elif chosen:
            previous = sop.write_operating_points(config_path, chosen)
    if args.json:
        doc = reports_as_json(reports, LOCAL_DISCLAIMER) | result.as_json()
        doc["subgroups"] = [g.as_json() for g in groups]
        if config_path is not None:
            doc["operating_points"] = {
                "config": str(config_path),
                "written": sorted(chosen) if refusal is None else [],
                "target_sensitivity": args.target_sensitivity,
                "refused": refusal,
                "detectors": [
                    {
                        "detector": c.detector,
                        "previous_site": previous.get(c.detector),
                        "previous_scored": c.previous,
                        "value": c.value,
                        "refused": c.refused,
                    }
                    for c in choices
                ],
            }
        print(json.dumps(doc, indent=2))
    else:
        print(format_reports(reports, LOCAL_DISCLAIMER))
        print(f"\n-- subgroups (a rate needs at least {min_n} studies of its class) --")
        print(lv.format_subgroups(groups))
        lines = ["", *lv.format_labels_summary(result)]
        lines.append(f"models: {', '.join(str(m) for _, m in sorted(result.models.items()))}")
        if line := not_scored_line(result):
            lines.append(line)
        if result.failures:
            lines.append(f"{len(result.failures)} scoring failures:")
            lines += [f"  {text}" for text in result.failures]
        if args.plots:
            lines.append(f"plots in {args.plots}")
        if config_path is not None:
            lines += [refusal] if refusal else sop.format_choices(choices, config_path, previous, args.target_sensitivity)
        print("\n".join(lines))
    refused = any(c.value is None for c in choices)
    return 1 if result.failures or refused else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from detectors.train import TrainConfig
    from triage.research.training import format_result, train_kind

    # Unset flags keep TrainConfig's defaults, so the help and the code cannot disagree.
    given = {k: getattr(args, k) for k in ("epochs", "phantoms", "validation", "workers") if getattr(args, k) is not None}
    for key, least in (("epochs", 1), ("phantoms", 1), ("validation", 2), ("workers", 0)):
        if given.get(key, least) < least:
            raise UsageError(f"--{key} must be at least {least}, got {given[key]}")
    settings = _offline_settings(args)
    cfg = TrainConfig(seed=args.seed, device=_resolve_device(settings.detectors.device), **given)
    out = Path(args.out) if args.out else _models_dir()
    results = train_kind(args.kind, cfg, out, _command_line(args), show_progress=not args.no_progress)
    for result in results:
        print(format_result(result))
    # Written beside, not over, the shipped detectors: nothing scores with them until a site names them.
    print(f"cards in {out}: score with them by listing them in [detectors] external (or --model CARD)")
    return 0


def _models_dir() -> Path:
    """Where ``train`` and ``evaluate --update-cards`` write unless told: the user's data directory.

    Never the installed package (read-only, or shared by every user of it); a card written
    here scores only where named (``[detectors] external``, ``--model``)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("triage")) / "models"


def _cmd_bench_ingest(args: argparse.Namespace) -> int:
    from triage.bench.ingest import run_ingest_bench

    setup_logging(args.log_level or "WARNING")
    return run_ingest_bench(n=args.n, parallel=args.parallel, size=args.size, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triage", description="Radiology triage worklist prioritizer (AI suggestions only; not a medical device)."
    )
    parser.add_argument("--version", action="version", version=f"triage {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("serve", help="run the DICOM listener, the study index, scoring and results to the PACS (by --role)")
    # Not exclusive here, unlike the other commands: a scale-out server names both the
    # shared storage volume and the shared database.
    p.add_argument("--data-dir", metavar="DIR", help="data directory: the stored instances (default: the user's data home)")
    p.add_argument(
        "--db", metavar="URL", help="SQLAlchemy database URL, e.g. postgresql+psycopg://... (default: SQLite in the data directory)"
    )
    p.add_argument(
        "--role",
        choices=["all", "listener", "worker"],
        help="all (default): everything; listener: receive, index, decide completeness; "
        "worker: score jobs from the database (no listening)",
    )
    p.add_argument("--port", type=int, help="TCP port (default 11112)")
    p.add_argument("--ae-title", help="our AE title (default TRIAGE)")
    p.add_argument("--host", help="address to bind (default 0.0.0.0)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    p.add_argument("address", metavar="HOST:PORT")
    p.add_argument("--called-ae", default="TRIAGE", help="the peer's AE title (default TRIAGE)")
    p.add_argument("--calling-ae", default="TRIAGESCU", help="our AE title (default TRIAGESCU)")
    p.add_argument("--timeout", type=float, default=10, help="seconds (default 10)")
    p.set_defaults(func=_cmd_echo)

    p = sub.add_parser("replay", help="send DICOM files and folders to a peer (C-STORE)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="the receiving peer")
    p.add_argument("--called-ae", default="TRIAGE", help="the peer's AE title (default TRIAGE)")
    p.add_argument("--calling-ae", default="TRIAGESCU", help="our AE title (default TRIAGESCU)")
    p.add_argument("--parallel", type=int, default=4, help="parallel associations (default 4)")
    p.add_argument("--rate", type=float, help="at most this many images per second")
    p.add_argument("--timeout", type=float, default=30, help="network timeout in seconds (default 30)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("studies", help="the worklist: every study in priority order, with class, findings and reasons")
    _add_store_args(p)
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument("--unsigned", action="store_true", help="leave out signed studies")
    p.add_argument("--brief", action="store_true", help="one line per study, without the reasons")
    _add_config_args(p)
    p.set_defaults(func=_cmd_studies)

    p = sub.add_parser("worklist", help="the terminal worklist: ranked cases, why and where; claim, read, feedback, sign")
    p.add_argument(
        "--user", help="the reader, among those your OS account is mapped to in [readers] (default: [worklist] user, else the only one)"
    )
    _add_index_args(p)
    p.set_defaults(func=_cmd_worklist)

    cli_case.add_parser(sub, _add_index_args, _open_worklist)
    cli_readers.add_parser(sub, _add_index_args, _open_worklist)
    cli_retention.add_parser(sub, _add_index_args, _open_worklist)
    cli_db.add_parser(sub, _add_index_args, _settings)
    cli_config.add_parser(sub)

    audit = sub.add_parser("audit", help="the hash-chained audit trail: verify it, export it")
    asub = audit.add_subparsers(dest="audit", metavar="ACTION", required=True)
    p = asub.add_parser(
        "verify", help="check the keyed chain, the anchors and the current rows against the chain; exit 3 naming what differs"
    )
    p.add_argument("--json", action="store_true", help="a JSON document instead of text")
    _add_store_args(p)
    _add_config_args(p)
    p.set_defaults(func=_cmd_audit_verify)
    p = asub.add_parser("anchor", help="append the chain's head to [audit] anchor_file now (the server does it periodically)")
    _add_store_args(p)
    _add_config_args(p)
    p.set_defaults(func=_cmd_audit_anchor)
    p = asub.add_parser("export", help="events as JSON lines, oldest first")
    p.add_argument("--since", metavar="WHEN", help="only events at or after this ISO 8601 time (UTC unless it says)")
    p.add_argument("--study", metavar="UID", help="only events of this Study Instance UID")
    p.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    _add_store_args(p)
    _add_config_args(p)
    p.set_defaults(func=_cmd_audit_export)

    p = sub.add_parser("monitor", help="detector agreement, PPV and misses from radiologists' feedback, by subgroup and week")
    p.add_argument("--json", action="store_true", help="a JSON document instead of text")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots (per-subgroup agreement, weekly trend) here")
    p.add_argument("--min-n", type=int, default=5, help="fewest reviews for a subgroup to be judged (default 5)")
    _add_store_args(p)
    _add_config_args(p)
    p.set_defaults(func=_cmd_monitor)

    p = sub.add_parser("demo", help="serve on a throw-away data directory, replay the sample studies, show them ranked")
    p.add_argument("--samples", default=str(SAMPLE_STUDIES), help="folder to replay (default: sample_studies/)")
    p.add_argument("--port", type=int, default=0, help="listener port (default: a free one)")
    p.add_argument("--once", action="store_true", help="print the ranked list and exit once every study is ranked (no terminal worklist)")
    p.add_argument("--user", help="the reader in the worklist: the OS account's own name (the demo has no [readers] table)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_cmd_demo)

    samples = sub.add_parser("samples", help="synthetic phantom studies with ground truth")
    ssub = samples.add_subparsers(dest="samples", metavar="ACTION", required=True)
    p = ssub.add_parser("generate", help="write phantom studies as DICOM plus manifest.json (ground truth)")
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--n", type=int, default=13, help="number of studies (default 13)")
    p.add_argument("--seed", type=int, default=1, help="seed; the same seed gives the same files (default 1)")
    p.add_argument("--kinds", nargs="+", metavar="KIND", help="head_ct chest_ct chest_xr extremity_xr abdomen_ct (default all)")
    p.add_argument(
        "--acquisition",
        choices=("fixed", "varied"),
        default="fixed",
        help="CT geometry: fixed (24 slices, 256 matrix; small) or varied (matrix, thickness and slices drawn as scanners vary; large)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_samples_generate)

    p = ssub.add_parser(
        "real",
        help="write real-anatomy studies (real scans, inserted lesions, drawn acquisitions) "
        "as DICOM plus manifest.json, for `triage evaluate`",
    )
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--head-ct", type=int, default=80, help="head CTs, normal or with a haemorrhage (default 80)")
    p.add_argument("--chest-xr", type=int, default=40, help="chest radiographs, normal or with a nodule (default 40)")
    p.add_argument("--extremity-xr", type=int, default=0, help="leg radiographs, normal or with a fracture (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0); the test split of detectors.real_cases")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_samples_real)

    p = sub.add_parser("realdata", help="the real scans the detectors are developed on: list them, or fetch and cache them")
    p.add_argument("action", choices=("list", "fetch"), help="list: sources, licences, what each shows; fetch: download and check")
    p.set_defaults(func=_cmd_realdata)

    p = sub.add_parser("train-filter", help="fit a shipped detector's false-positive filter and calibrate it on real anatomy")
    p.add_argument("name", choices=("bleed-ct", "nodule-ct", "nodule-xr", "fracture-xr"), help="the shipped detector")
    p.add_argument(
        "--real", type=int, nargs=2, default=(120, 80), metavar=("TRAIN", "VALIDATION"), help="real-anatomy cases (default 120 80)"
    )
    p.add_argument(
        "--phantoms", type=int, nargs=2, default=(120, 120), metavar=("TRAIN", "VALIDATION"), help="phantom cases (default 120 120)"
    )
    p.add_argument("--l2", type=float, default=1.0, help="ridge penalty of the filter (default 1.0; bleed-ct ships with 10)")
    p.add_argument("--out", help="write the card here instead of the package's detectors/models/")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_train_filter)

    p = sub.add_parser("score", help="score DICOM files and folders with the detectors (offline: no network, no DB)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files and folders, walked for DICOM files")
    p.add_argument("--json", action="store_true", help="a JSON document instead of text")
    _add_detector_args(p)
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser(
        "evaluate",
        help="score a sample folder (manifest.json) or a site's labelled studies (--labels) and report AUC, sensitivity, FROC, calibration",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=LABELS_HELP,
    )
    p.add_argument("path", metavar="PATH", help="a folder written by `triage samples generate`, or with --labels any folder of DICOM")
    p.add_argument("--labels", metavar="CSV", help="the site's labels of the studies in PATH (format below)")
    p.add_argument("--plots", metavar="DIR", help="write roc.png, froc-<detector>.png and reliability-<detector>.png here")
    p.add_argument("--json", action="store_true", help="a JSON document instead of text")
    p.add_argument("--min-n", type=int, help="with --labels: fewest studies of a class for a subgroup's rate to be given (default 5)")
    p.add_argument(
        "--set-operating-point",
        action="store_true",
        help="with --labels: choose each detector's operating point on these studies and write it into "
        "the site's settings ([detectors.operating_points] of --config, else $TRIAGE_CONFIG, else the settings "
        "file in use, else ./triage.toml, created if absent); never into the shipped cards",
    )
    p.add_argument(
        "--target-sensitivity",
        type=float,
        default=0.95,
        help="sensitivity the chosen operating point keeps on the labelled studies (default 0.95)",
    )
    p.add_argument(
        "--update-cards",
        action="store_true",
        help="write the shipped detectors' cards with these test figures (and their weights) to --cards-dir",
    )
    p.add_argument(
        "--cards-dir", metavar="DIR", help="where --update-cards writes (default: <user data dir>/models; the package's are read only)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_detector_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("train", help="train, calibrate and write the shipped detectors of one finding kind")
    p.add_argument("kind", choices=FINDING_KINDS, help="bleed (head CT), fracture (radiographs) or nodule (CT and radiographs)")
    p.add_argument("--epochs", type=int, help="passes over the training examples (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed; the same seed, flags, device and torch give the same weights (default 0)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: [detectors] device, auto)")
    p.add_argument("--phantoms", type=int, help="training phantoms per detector (default 300)")
    p.add_argument("--validation", type=int, help="validation phantoms, for calibration and the operating point (default 200)")
    p.add_argument("--workers", type=int, help="phantom generation processes (default 0: one per core)")
    p.add_argument("--out", metavar="DIR", help="where weights and cards go (default: <user data dir>/models)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_config_args(p)
    p.set_defaults(func=_cmd_train)

    bench = sub.add_parser("bench", help="benchmarks, printed as ratios against baselines run alongside")
    bsub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    p = bsub.add_parser("ingest", help="images/s into triage serve vs pynetdicom's and dcmtk's storescp")
    p.add_argument("--n", type=int, default=1000, help="instances to send (default 1000)")
    p.add_argument("--parallel", type=int, default=4, help="parallel associations / sender processes (default 4)")
    p.add_argument("--size", type=int, default=256, help="CT slice matrix (default 256)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folders")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_cmd_bench_ingest)
    p = bsub.add_parser("triage", help="time to triage p50/p95, sustained studies/hour and memory of a running triage serve")
    bench_pipeline.add_arguments(p)
    p.set_defaults(func=bench_pipeline.run)
    p = bsub.add_parser("scale", help="PostgreSQL scale-out: ingest with 1 vs 2 listeners, scoring with 1 vs 2 workers")
    bench_scale.add_arguments(p)
    p.set_defaults(func=bench_scale.run)
    p = bsub.add_parser("infer", help="detector slices/s: dynamic batching vs batch 1, GFLOP/s vs matmul peak, head CT latency")
    bench_infer.add_arguments(p)
    p.set_defaults(func=bench_infer.run)
    add_bench_commands(bsub)  # `bench tui`, from the tui package (triage does not import it)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the exact command, recorded in model cards
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"triage: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))  # every USER_ERRORS class has one
    except ModuleNotFoundError as exc:
        # torch, matplotlib, psycopg come with extras (pyproject.toml): a lean host gets the install line.
        missing = missing_extra(exc)
        if missing is None:
            raise
        print(f"triage: error: {missing}", file=sys.stderr)
        return missing.exit_code
    except KeyboardInterrupt:
        print("triage: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
