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
        ("", {"TRIAGE_LISTENER__NOPE": "1"}, "config: unknown key 'listener.nope' (from TRIAGE_LISTENER__NOPE)"),
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


# -- environment variables that are not settings; every error names its origin ---------


@pytest.fixture
def warned(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """A fresh record of warned variables, so each test sees its own warning."""
    fresh: set[str] = set()
    monkeypatch.setattr("triage.config._warned_env", fresh)
    return fresh


def test_kubernetes_service_variables_are_ignored_with_one_warning(warned: set[str], caplog: pytest.LogCaptureFixture) -> None:
    # What Kubernetes puts in every pod beside a Service named "triage" (and one named "triage-db").
    env = {
        "TRIAGE_PORT": "tcp://10.0.0.1:11112",
        "TRIAGE_SERVICE_HOST": "10.0.0.1",
        "TRIAGE_SERVICE_PORT": "11112",
        "TRIAGE_PORT_11112_TCP_ADDR": "10.0.0.1",
        "TRIAGE_DB_PORT": "tcp://10.0.0.2:5432",
        "TRIAGE_LISTENER__PORT": "2000",
        "TRIAGE_CONFIG": "",
        "TRIAGE_USER": "alice",
        "TRIAGE_REALDATA": "/cache",
    }
    with caplog.at_level("WARNING", logger="triage.config"):
        s = load_settings(environ=env, search=[])
        assert s.listener.port == 2000 and s.db == ""
        load_settings(environ=env, search=[])  # once per process, not once per load
    [record] = caplog.records
    named = "TRIAGE_DB_PORT, TRIAGE_PORT, TRIAGE_PORT_11112_TCP_ADDR, TRIAGE_SERVICE_HOST, TRIAGE_SERVICE_PORT"
    assert record.getMessage().endswith(named)
    assert "TRIAGE_USER" not in record.getMessage() and "TRIAGE_REALDATA" not in record.getMessage()


def test_known_variables_draw_no_warning(warned: set[str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="triage.config"):
        s = load_settings(environ={"TRIAGE_USER": "alice", "TRIAGE_DB": "sqlite:///x.db", "TRIAGE_LOG_LEVEL": "debug"}, search=[])
    assert (s.db, s.log_level) == ("sqlite:///x.db", "DEBUG")
    assert caplog.records == []


def test_misspelt_key_under_a_known_section_is_an_error_naming_the_variable(warned: set[str]) -> None:
    # Chosen over ignoring: the double underscore shows it was meant as a setting, and running
    # without it (a misspelt allowed_peers leaves the listener open) is worse than not starting.
    with pytest.raises(ConfigError, match=r"^config: unknown key 'listener.prot' \(from TRIAGE_LISTENER__PROT\)$"):
        load_settings(environ={"TRIAGE_LISTENER__PROT": "1"}, search=[])
    with pytest.raises(ConfigError, match=r"unknown key 'listener.tls.certt' \(from TRIAGE_LISTENER__TLS__CERTT\)$"):
        load_settings(environ={"TRIAGE_LISTENER__TLS__CERTT": "c.pem"}, search=[])


def test_bad_value_in_a_nested_variable_names_it(warned: set[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"TRIAGE_LISTENER__TLS__REQUIRE_CLIENT_CERT": "perhaps"}, search=[])
    assert str(err.value).startswith("config: listener.tls.require_client_cert: Input should be a valid boolean")
    assert str(err.value).endswith("got 'perhaps' (from TRIAGE_LISTENER__TLS__REQUIRE_CLIENT_CERT)")


def test_a_rule_over_a_section_names_the_keys_that_were_set(tmp_path: Path) -> None:
    path = write(tmp_path, "[policy]\ncritical_at = 30\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={"TRIAGE_POLICY__URGENT_AT": "35"})
    assert str(err.value) == (
        f"config: policy: critical_at must be greater than urgent_at "
        f"(from policy.critical_at in {path}, policy.urgent_at in TRIAGE_POLICY__URGENT_AT)"
    )


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[readers.alice]\nauthh = 'pam'\n", {}, "config: unknown key 'readers.alice.authh' (from {path})"),
        ("[[listener.peers]]\nae_title = 'CT1'\nhosts = ['nope']\n", {}, "listener.peers.0.hosts: 'nope' is not an IP"),
        ("", {"TRIAGE_LISTENER": '{"prot": 1}'}, "config: unknown key 'listener.prot' (from TRIAGE_LISTENER)"),
        (
            "listener = 5\n",
            {"TRIAGE_LISTENER__PORT": "1"},
            "listener.port (from TRIAGE_LISTENER__PORT): listener is not a section (from {path})",
        ),
    ],
)
def test_nested_and_table_errors_name_their_origin(tmp_path: Path, toml: str, env: dict, message: str, warned: set[str]) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ=env)
    assert message.format(path=path) in str(err.value)
    assert "(from default)" not in str(err.value)


def test_flag_overrides_name_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"config: listener.port: .* \(from --port\)$"):
        load_settings(overrides={"listener.port": 70000}, environ={}, flags={"listener.port": "--port"}, search=[])
    with pytest.raises(ConfigError, match=r"\(from command line\)$"):
        load_settings(overrides={"listener.port": 70000}, environ={}, search=[])


# -- where the file is looked for ---------------------------------------------------------


def lookup_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A working directory, a user config home and a system file, all empty; returns the three file paths."""
    work, home, etc = tmp_path / "work", tmp_path / "home", tmp_path / "etc"
    for d in (work, home / "triage", etc):
        d.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.setattr("triage.config.SYSTEM_CONFIG_FILE", etc / "triage.toml")
    return {"cwd": work / "triage.toml", "user": home / "triage" / "triage.toml", "system": etc / "triage.toml"}


def test_lookup_order_first_found_wins_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from triage.config import load_settings_with_origins

    files = lookup_dirs(tmp_path, monkeypatch)
    assert load_settings_with_origins(environ={}).file is None
    files["system"].write_text("[listener]\nport = 3001\nae_title = 'SYSTEM'\n")
    loaded = load_settings_with_origins(environ={})
    assert (loaded.file, loaded.settings.listener.port) == (files["system"], 3001)
    assert loaded.origin("listener.port") == str(files["system"])
    files["user"].write_text("[listener]\nport = 3002\n")
    s = load_settings(environ={})
    assert (s.listener.port, s.listener.ae_title) == (3002, "TRIAGE")  # not merged: SYSTEM is not inherited
    files["cwd"].write_text("[listener]\nport = 3003\n")
    assert load_settings(environ={}).listener.port == 3003
    named = tmp_path / "named.toml"
    named.write_text("[listener]\nport = 3004\n")
    assert load_settings(environ={"TRIAGE_CONFIG": str(named)}).listener.port == 3004
    flag = tmp_path / "flag.toml"
    flag.write_text("[listener]\nport = 3005\n")
    assert load_settings(flag, environ={"TRIAGE_CONFIG": str(named)}).listener.port == 3005


def test_named_files_must_exist_and_say_who_named_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = lookup_dirs(tmp_path, monkeypatch)
    files["cwd"].write_text("[listener]\nport = 3003\n")  # not a fallback for a named file that is missing
    with pytest.raises(ConfigError, match=r"does not exist \(from TRIAGE_CONFIG\)$"):
        load_settings(environ={"TRIAGE_CONFIG": str(tmp_path / "gone.toml")})
    with pytest.raises(ConfigError, match=r"does not exist \(from --config\)$"):
        load_settings(tmp_path / "gone.toml", environ={})


def test_injected_system_file(tmp_path: Path) -> None:
    from triage.config import config_search_path

    system = write(tmp_path, "[listener]\nport = 3006\n")
    search = config_search_path(system_file=system)
    assert search[-1] == system and search[0] == Path("triage.toml")
    assert load_settings(environ={}, search=[tmp_path / "absent.toml", system]).listener.port == 3006


def test_unreadable_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[listener]\nport = 1\n")

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        # chmod 0 would not stop root (the test machines run as root): refuse the read itself.
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ConfigError, match=r"^config: cannot read .*triage.toml: Permission denied$"):
        load_settings(path, environ={})


def test_site_operating_points_go_to_the_file_that_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from triage.research.site_operating_points import site_config_path

    files = lookup_dirs(tmp_path, monkeypatch)
    assert site_config_path(None, {}) == Path("triage.toml")  # none anywhere: created here
    files["system"].write_text("[listener]\nport = 3001\n")
    # Not a new ./triage.toml, which would hide the whole system file.
    assert site_config_path(None, {}) == files["system"]
    assert site_config_path(None, {"TRIAGE_CONFIG": str(tmp_path / "new.toml")}) == tmp_path / "new.toml"
