"""Crash recovery at start: temp files removed, unindexed files indexed."""

from __future__ import annotations

import shutil
import sqlite3

from dicom_io.headers import read_header


def test_recovery_on_start(make_server, make_ct_series) -> None:
    paths = make_ct_series(slices=3)
    server = make_server()
    data = server.settings.data_dir
    server.stop()
    # What a crash leaves: a finished file never indexed, and a half-written temp file.
    h = read_header(paths[0].read_bytes())
    series_dir = data / "studies" / h.study_uid / h.series_uid
    series_dir.mkdir(parents=True)
    shutil.copy(paths[0], series_dir / f"{h.sop_instance_uid}.dcm")
    (series_dir / f".{h.sop_instance_uid}.deadbeef.tmp").write_bytes(b"partial")

    restarted = make_server(data_dir=str(data))
    assert not list(series_dir.glob("*.tmp"))
    with sqlite3.connect(data / "triage.db") as conn:
        rows = conn.execute("select sop_instance_uid, calling_ae from instance").fetchall()
        assert rows == [(h.sop_instance_uid, None)]
        assert conn.execute("select num_instances, status from series").fetchall() == [(1, "receiving")]
    restarted.stop()
    make_server(data_dir=str(data))  # a second start finds nothing to do
    with sqlite3.connect(data / "triage.db") as conn:
        assert conn.execute("select count(*) from instance").fetchone() == (1,)


def test_recovery_quarantines_a_truncated_file_instead_of_indexing_it(make_server, make_ct_series, caplog) -> None:
    good, cut = make_ct_series(slices=2)
    server = make_server()
    data = server.settings.data_dir
    server.stop()
    # A crash on storage that lost the end of one file (or a file copied in by hand, cut short).
    h = read_header(good.read_bytes())
    series_dir = data / "studies" / h.study_uid / h.series_uid
    series_dir.mkdir(parents=True)
    shutil.copy(good, series_dir / f"{h.sop_instance_uid}.dcm")
    cut_name = f"{read_header(cut.read_bytes()).sop_instance_uid}.dcm"
    (series_dir / cut_name).write_bytes(cut.read_bytes()[:-100])
    (data / "incoming").mkdir()
    (data / "incoming" / "0123abcd.tmp").write_bytes(b"a spool of an unfinished association")

    make_server(data_dir=str(data))
    with sqlite3.connect(data / "triage.db") as conn:
        assert conn.execute("select count(*) from instance").fetchone() == (1,)  # the good one only
    assert not (series_dir / cut_name).exists()
    assert list((data / "quarantine").rglob(cut_name))  # kept, out of the store, for someone to look at
    assert not list((data / "incoming").iterdir())
    assert "quarantine" in caplog.text and cut_name in caplog.text
