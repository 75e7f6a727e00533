"""Settings: TOML, environment and CLI layering, and one-line errors naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT
from triage.config import load_settings
from triage.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "triage.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = load_settings(environ={})
    assert (s.listener.ae_title, s.listener.port, s.listener.max_associations) == ("TRIAGE", 11112, 32)
    assert s.db_url == f"sqlite:///{s.data_dir / 'triage.db'}"
    assert s.completeness.stable_after_for("CR") == 5.0
    assert s.completeness.stable_after_for("CT") == s.completeness.stable_after


def test_layering_toml_then_env_then_cli(tmp_path: Path) -> None:
    path = write(tmp_path, '[listener]\nport = 1000\nae_title = "FROMFILE"\n[completeness.per_modality]\nmr = 30\n')
    s = load_settings(path, environ={})
    assert (s.listener.port, s.listener.ae_title) == (1000, "FROMFILE")
    assert s.completeness.stable_after_for("MR") == 30
    s = load_settings(path, environ={"TRIAGE_LISTENER__PORT": "2000"})
    assert (s.listener.port, s.listener.ae_title) == (2000, "FROMFILE")
    s = load_settings(path, overrides={"listener.port": 3000, "listener.ae_title": None}, environ={"TRIAGE_LISTENER__PORT": "2000"})
    assert (s.listener.port, s.listener.ae_title) == (3000, "FROMFILE")


def test_detector_settings(tmp_path: Path) -> None:
    d = load_settings(environ={}).detectors
    assert (d.device, d.max_batch, d.max_wait_ms, d.workers, d.external) == ("auto", 8, 10.0, 2, [])
    path = write(tmp_path, "[detectors]\ndevice = 'CUDA:1'\nmax_batch = 32\nexternal = ['~/cards/my-bleed.toml']\n")
    d = load_settings(path, environ={"TRIAGE_DETECTORS__MAX_WAIT_MS": "2.5"}).detectors
    assert (d.device, d.max_batch, d.max_wait_ms) == ("cuda:1", 32, 2.5)
    assert d.external == [Path("~/cards/my-bleed.toml").expanduser()]
    assert load_settings(overrides={"detectors.device": "cpu"}, environ={}).detectors.device == "cpu"


def test_env_lists_as_json() -> None:
    s = load_settings(environ={"TRIAGE_LISTENER__ALLOWED_AE_TITLES": '["PACS1", "CT2"]'})
    assert s.listener.allowed_ae_titles == ["PACS1", "CT2"]


def test_default_file_in_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[listener]\nport = 4242\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}).listener.port == 4242


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[listener]\nprot = 1\n", {}, "config: unknown key 'listener.prot' (from "),
        ("[listener]\nport = 'abc'\n", {}, "config: listener.port: Input should be a valid integer"),
        ("[listener]\nport = 70000\n", {}, "config: listener.port:"),
        ("[listener]\nae_title = 'WAY_TOO_LONG_AE_TITLE'\n", {}, "config: listener.ae_title:"),
        ("", {"TRIAGE_LISTENER__ALLOWED_PEERS": '["not-an-ip"]'}, "(from TRIAGE_LISTENER__ALLOWED_PEERS)"),
        ("", {"TRIAGE_NOPE": "1"}, "config: unknown key 'nope' (from TRIAGE_NOPE)"),
        ("[completeness]\nstable_after = -1\n", {}, "config: completeness.stable_after:"),
        ("listener = [", {}, "is not valid TOML"),
        ("db = 'not a url'\n", {}, "config: db: not an SQLAlchemy database URL"),
        ("[detectors]\ndevice = 'gpu'\n", {}, 'config: detectors.device: must be "auto", "cpu", "cuda", "cuda:N" or "mps", got \'gpu\''),
        ("", {"TRIAGE_DETECTORS__DEVICE": "cuda:x"}, "config: detectors.device: must be"),
        ("[detectors]\nmax_batch = 0\n", {}, "config: detectors.max_batch: Input should be greater than or equal to 1"),
        ("[detectors]\nmax_wait_ms = -1\n", {}, "config: detectors.max_wait_ms: Input should be greater than or equal to 0"),
        ("[detectors]\nworkers = 0\n", {}, "config: detectors.workers:"),
        ("[detectors]\nexternal = 'card.toml'\n", {}, "config: detectors.external: Input should be a valid list"),
        ("[detectors]\nmodels = []\n", {}, "config: unknown key 'detectors.models'"),
    ],
)
def test_bad_key_or_value_is_one_line_naming_it(tmp_path: Path, toml: str, env: dict, message: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ=env)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[listener]\nport = 'x'\n")
    result = subprocess.run(
        [sys.executable, "-m", "triage", "serve", "--config", str(path), "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "listener.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_listener_options_are_the_settings_as_plain_values(tmp_path: Path) -> None:
    tls = {"listener.tls.cert": str(tmp_path / "c.pem"), "listener.tls.key": str(tmp_path / "k.pem")}
    settings = load_settings(overrides={"listener.ae_title": "SITE_AI", "listener.allowed_peers": ["10.0.0.0/8"], **tls})
    options = settings.listener.options()
    assert options.ae_title == "SITE_AI"
    assert options.allowed_peers == ("10.0.0.0/8",)
    assert options.tls.enabled and options.tls.cert == tmp_path / "c.pem"
    from triage import __version__

    assert options.implementation_version == f"TRIAGE_{__version__}"[:16]  # what peers and stored files see
