"""The ``triage`` command: real runs, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from triage.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_replay_then_studies(server, make_ct_series, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_ct_series(slices=5)
    (tmp_path / "series0" / "notes.txt").write_text("not DICOM")
    assert main(["replay", str(tmp_path / "series0"), "--to", f"127.0.0.1:{server.port}", "--no-progress"]) == 0
    assert "sent 5, failed 0, skipped 1 non-DICOM files" in capsys.readouterr().out

    assert main(["studies", "--data-dir", str(server.settings.data_dir), "--json"]) == 0
    [study] = json.loads(capsys.readouterr().out)
    assert (study["modality"], study["num_series"], study["num_instances"], study["status"]) == ("CT", 1, 5, "receiving")
    assert study["description"] == "CT HEAD WO CONTRAST" and study["patient_id"] == "PHANTOM001"

    assert main(["studies", "--data-dir", str(server.settings.data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("RECEIVED") and "CT HEAD WO CONTRAST" in lines[1]


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
