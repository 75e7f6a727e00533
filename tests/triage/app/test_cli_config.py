"""``triage config show|check``: effective values with origins, secrets masked, files checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT
from triage.app.cli import main
from triage.app.cli_config import mask_db_url


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An environment with no TRIAGE_* variables, an empty working directory and a system file at tmp_path/etc."""
    for name in [n for n in os.environ if n.startswith("TRIAGE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr("triage.config._warned_env", set())
    (tmp_path / "work").mkdir()
    (tmp_path / "etc").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setattr("triage.config.SYSTEM_CONFIG_FILE", tmp_path / "etc" / "triage.toml")
    return tmp_path / "etc" / "triage.toml"


def show_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str | None, dict[str, tuple[object, str]]]:
    assert main(["config", "show", "--json", *argv]) == 0
    out = json.loads(capsys.readouterr().out)
    return out["file"], {row["key"]: (row["value"], row["origin"]) for row in out["settings"]}


def test_show_every_key_with_its_origin(site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    site.write_text("[listener]\nport = 4000\n[readers.alice]\nauth = 'pam'\n")
    monkeypatch.setenv("TRIAGE_LISTENER__AE_TITLE", "SITE_AI")
    monkeypatch.setenv("TRIAGE_DB", "postgresql+psycopg://triage:s3cret@db.example/triage")
    monkeypatch.setenv("TRIAGE_PORT", "tcp://10.0.0.1:11112")  # Kubernetes' own: ignored, not shown
    file, rows = show_json(capsys)
    assert file == str(site)
    assert rows["listener.port"] == (4000, str(site))
    assert rows["listener.ae_title"] == ("SITE_AI", "TRIAGE_LISTENER__AE_TITLE")
    assert rows["listener.max_pdu"] == (1 << 20, "default")
    assert rows["listener.tls.require_client_cert"] == (True, "default")  # sections all the way down
    assert rows["readers"][1] == str(site) and rows["readers"][0]["alice"]["auth"] == "pam"
    assert rows["db"] == ("postgresql+psycopg://triage:***@db.example/triage", "TRIAGE_DB")
    assert "port" not in rows and not any(k.startswith("service") for k in rows)
    # Every setting is there: each section's fields, dotted.
    from triage.config import Settings

    assert {k.split(".")[0] for k in rows} == set(Settings.model_fields)
    assert "s3cret" not in json.dumps(rows)


def test_show_text_names_the_file_and_origins(site: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    named = tmp_path / "named.toml"
    named.write_text("log_level = 'debug'\n")
    assert main(["config", "show", "--config", str(named)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"# file: {named}"
    [level] = [line for line in lines if line.startswith("log_level ")]
    assert level.split() == ["log_level", "=", '"DEBUG"', "#", str(named)]
    [port] = [line for line in lines if line.startswith("listener.port ")]
    assert port.split() == ["listener.port", "=", "11112", "#", "default"]


def test_show_without_any_file(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file, rows = show_json(capsys)
    assert file is None
    assert {origin for _, origin in rows.values()} == {"default"}


def test_show_a_bad_variable_is_the_one_line_error(site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRIAGE_LISTENER__PROT", "1")
    assert main(["config", "show"]) == 2
    err = capsys.readouterr().err
    assert err == "triage: error: config: unknown key 'listener.prot' (from TRIAGE_LISTENER__PROT)\n"


def test_check(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[listener]\nport = 4000\n")
    monkeypatch.setenv("TRIAGE_LISTENER__PORT", "not a port")  # the shell's variables do not count against the file
    assert main(["config", "check", str(good)]) == 0
    assert capsys.readouterr().out == "ok\n"

    bad = tmp_path / "bad.toml"
    bad.write_text("[listener]\nport = 4000\n[pipeline]\nheartbeat_seconds = 90\n")
    assert main(["config", "check", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "triage: error: config: pipeline: heartbeat_seconds must be shorter than lease_seconds "
        f"(from pipeline.heartbeat_seconds in {bad})\n"
    )
    assert main(["config", "check", str(tmp_path / "gone.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_kubernetes_variables_do_not_stop_a_command(tmp_path: Path) -> None:
    """A real ``triage`` process in a pod's environment: it runs, and says once what it ignored."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env |= {"TRIAGE_PORT": "tcp://10.0.0.1:11112", "TRIAGE_SERVICE_HOST": "10.0.0.1", "TRIAGE_SERVICE_PORT": "11112"}
    result = subprocess.run(
        [sys.executable, "-m", "triage", "config", "show", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(REPO_ROOT)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    named = "TRIAGE_PORT, TRIAGE_SERVICE_HOST, TRIAGE_SERVICE_PORT"
    assert result.stderr == f"ignoring environment variables that name no triage setting: {named}\n"
    assert json.loads(result.stdout)["settings"][0]["key"] == "role"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("", ""),
        ("sqlite:////var/lib/triage/triage.db", "sqlite:////var/lib/triage/triage.db"),
        ("postgresql+psycopg://u:p%40ss@h:5432/t", "postgresql+psycopg://u:***@h:5432/t"),
        ("postgresql+psycopg://u@h/t?password=x&sslmode=require", "postgresql+psycopg://u@h/t?password=***&sslmode=require"),
    ],
)
def test_mask_db_url(url: str, shown: str) -> None:
    assert mask_db_url(url) == shown
