"""The ``triage`` command: parses arguments, builds settings, calls the parts.

A :class:`~triage.errors.TriageError` is printed as one line on stderr with its
exit code (2 for configuration and usage); nothing a user can cause prints a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from triage import __version__
from triage.config import Settings, load_settings
from triage.errors import TriageError
from triage.logs import setup_logging


SAMPLE_STUDIES = Path(__file__).resolve().parent.parent / "sample_studies"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML settings file (default: ./triage.toml if present)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging verbosity")


def _add_store_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--data-dir", metavar="DIR", help="data directory (default: the user's data home)")
    g.add_argument("--db", metavar="URL", help="SQLAlchemy database URL (default: SQLite in the data directory)")


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    overrides.setdefault("data_dir", getattr(args, "data_dir", None))
    overrides.setdefault("db", getattr(args, "db", None))
    overrides.setdefault("log_level", getattr(args, "log_level", None))
    settings = load_settings(args.config, overrides=overrides)
    setup_logging(settings.log_level)
    return settings


def _cmd_serve(args: argparse.Namespace) -> int:
    from triage.server import serve

    settings = _settings(
        args,
        **{
            "listener.port": args.port,
            "listener.ae_title": args.ae_title,
            "listener.host": args.host,
        },
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
            files, host, port, called_ae=args.called_ae, calling_ae=args.calling_ae,
            parallel=args.parallel, rate=args.rate, timeout=args.timeout,
            on_result=lambda _f, _ok: advance(),
        )  # fmt: skip
    for path, reason in summary.failures[:20]:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    if len(summary.failures) > 20:
        print(f"... and {len(summary.failures) - 20} more failures", file=sys.stderr)
    print(
        f"sent {summary.sent}, failed {summary.failed}, skipped {len(skipped)} non-DICOM files; "
        f"{summary.seconds:.1f} s, {summary.images_per_s:.0f} images/s"
    )
    return 0 if summary.failed == 0 else 1


def _cmd_studies(args: argparse.Namespace) -> int:
    from triage.db import make_engine
    from triage.studies import format_table, list_studies

    settings = _settings(args)
    if not settings.db and not (settings.data_dir / "triage.db").exists():
        raise TriageError(f"no study index in {settings.data_dir} (has `triage serve` run with this --data-dir?)")
    engine = make_engine(settings.db_url)
    rows = list_studies(engine)
    if args.json:
        print(json.dumps([r.as_json() for r in rows], indent=2))
    else:
        print(format_table(rows))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from triage.demo import run_demo

    level = args.log_level or "WARNING"
    setup_logging(level)
    return run_demo(Path(args.samples), port=args.port, log_level=level)


def _cmd_samples_generate(args: argparse.Namespace) -> int:
    from detectors.phantoms.samples import KINDS, generate_samples
    from triage.progress import progress_bar

    kinds = args.kinds or list(KINDS)
    if args.n < 1:
        raise TriageError(f"--n must be at least 1, got {args.n}")
    if unknown := [k for k in kinds if k not in KINDS]:
        raise TriageError(f"--kinds: unknown kind {unknown[0]!r}; choose from {', '.join(KINDS)}")
    out = Path(args.out)
    with progress_bar(args.n, "studies", enabled=not args.no_progress) as advance:
        manifest = generate_samples(out, args.n, args.seed, kinds, progress=advance)
    with_finding = sum(1 for s in manifest["studies"] if s["present"])  # type: ignore[union-attr]
    print(f"wrote {args.n} studies ({with_finding} with a finding) and {out / 'manifest.json'}")
    return 0


def _cmd_bench_ingest(args: argparse.Namespace) -> int:
    from triage.bench.ingest import run_ingest_bench

    setup_logging(args.log_level or "WARNING")
    return run_ingest_bench(n=args.n, parallel=args.parallel, size=args.size, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triage",
        description="Radiology triage worklist prioritizer (AI suggestions only; not a medical device).",
    )
    parser.add_argument("--version", action="version", version=f"triage {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("serve", help="run the DICOM listener (C-ECHO, C-STORE) and the study index")
    _add_store_args(p)
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

    p = sub.add_parser("studies", help="list the indexed studies")
    _add_store_args(p)
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    _add_config_args(p)
    p.set_defaults(func=_cmd_studies)

    p = sub.add_parser("demo", help="serve on a throw-away data directory and replay the sample studies")
    p.add_argument("--samples", default=str(SAMPLE_STUDIES), help="folder to replay (default: sample_studies/)")
    p.add_argument("--port", type=int, default=0, help="listener port (default: a free one)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_cmd_demo)

    samples = sub.add_parser("samples", help="synthetic phantom studies with ground truth")
    ssub = samples.add_subparsers(dest="samples", metavar="ACTION", required=True)
    p = ssub.add_parser("generate", help="write phantom studies as DICOM plus manifest.json (ground truth)")
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--n", type=int, default=13, help="number of studies (default 13)")
    p.add_argument("--seed", type=int, default=1, help="seed; the same seed gives the same files (default 1)")
    p.add_argument("--kinds", nargs="+", metavar="KIND", help="head_ct chest_ct chest_xr extremity_xr abdomen_ct (default all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_samples_generate)

    bench = sub.add_parser("bench", help="benchmarks, printed as ratios against baselines run alongside")
    bsub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    p = bsub.add_parser("ingest", help="images/s into triage serve vs pynetdicom's and dcmtk's storescp")
    p.add_argument("--n", type=int, default=1000, help="instances to send (default 1000)")
    p.add_argument("--parallel", type=int, default=4, help="parallel associations / sender processes (default 4)")
    p.add_argument("--size", type=int, default=256, help="CT slice matrix (default 256)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folders")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_cmd_bench_ingest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TriageError as exc:
        print(f"triage: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("triage: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
