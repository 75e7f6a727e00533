"""The CLI shows times on the site's clock (``[site] timezone``) with the zone's abbreviation; JSON stays UTC."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.tui.support import add_study
from triage.app.cli import main
from triage.reading.identity import os_account
from triage.store.db import make_engine
from triage.store.tables import STUDY

TOKYO = timedelta(hours=9)  # JST, no summer time


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_claim_times_are_shown_in_the_site_zone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data / 'triage.db'}")
    added = add_study(engine)
    with engine.connect() as conn:
        accession = conn.execute(select(STUDY.c.accession_number).where(STUDY.c.study_uid == added.uid)).scalar_one()
    account = os_account()
    config = tmp_path / "triage.toml"
    config.write_text(
        '[site]\ntimezone = "Asia/Tokyo"\n'
        f'[readers."dr.ada"]\nos_accounts = ["{account}"]\n[readers."dr.bo"]\nos_accounts = ["{account}"]\n',
        encoding="utf-8",
    )
    d = ["--data-dir", str(data), "--config", str(config)]

    code, out, _ = _run(capsys, "case", "claim", accession, "--user", "dr.ada", *d)
    with engine.connect() as conn:
        expires = conn.execute(select(STUDY.c.claim_expires).where(STUDY.c.study_uid == added.uid)).scalar_one()
    tokyo = expires.replace(tzinfo=None) + TOKYO  # the index keeps UTC
    assert code == 0 and out.strip().endswith(f"until {tokyo:%Y-%m-%d %H:%M} JST"), out

    code, out, _ = _run(capsys, "case", "show", accession, "--user", "dr.ada", *d)
    assert code == 0 and f"claimed by dr.ada until {tokyo:%H:%M} JST" in out, out
    # The service's refusal names the holder's expiry on the same clock.
    code, _, err = _run(capsys, "case", "claim", accession, "--user", "dr.bo", *d)
    assert code == 1 and f"claimed by dr.ada until {tokyo:%H:%M} JST" in err and "UTC" not in err, err

    # JSON is for programs: ISO 8601 in UTC, with its offset.
    code, out, _ = _run(capsys, "studies", "--json", *d)
    (row,) = json.loads(out)
    received = datetime.fromisoformat(row["first_received"])
    assert code == 0 and row["first_received"].endswith("+00:00") and received.utcoffset() == timedelta(0)
    engine.dispose()
