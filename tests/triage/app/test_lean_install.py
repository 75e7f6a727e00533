"""A listener-only install (``pip install triage-worklist``, no ``[ai]``) imports no torch.

Each command runs in a subprocess whose ``sitecustomize`` makes ``import torch``,
``torchvision`` and ``matplotlib`` fail as they would where the AI extra is not
installed; the listener's spawned processes inherit it through ``PYTHONPATH``.
The listener-host commands must work; the scoring ones must say, in one line,
which extra they need.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pynetdicom import AE

from tests.support import REPO_ROOT
from triage.errors import EXTRA_OF_MODULE

BLOCKER = '''
import sys

BLOCKED = {blocked}

class _NoAIExtra:
    """Finds nothing for the packages of the extras: their import fails as if not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoAIExtra())
'''


AI_LINE = "triage: error: needs the AI extra: pip install 'triage-worklist[ai]'"


@pytest.fixture
def lean_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a host without the AI extra, on a throw-away data directory and no site settings."""
    (tmp_path / "blocker").mkdir()
    # Every package only an extra installs (torch, torchvision, matplotlib, scipy, tomlkit, psycopg): the base does without.
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER.replace("{blocked}", repr(sorted(EXTRA_OF_MODULE))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(tmp_path / "blocker"), str(REPO_ROOT)]),
        TRIAGE_DATA_DIR=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_DATA_HOME=str(tmp_path / "share"),
        # One listener process and no grace on SIGTERM: the test's time goes to the commands, not to waiting.
        TRIAGE_LISTENER__PROCESSES="1",
        TRIAGE_LISTENER__SHUTDOWN_GRACE="0",
    )
    return env


def side_by_side(env: dict[str, str], *commands: list[str]) -> list[tuple[int, str]]:
    """(exit status, stderr) of each ``triage`` command, run at once: seconds each, mostly imports."""
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "triage.app.cli", *argv],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in commands
    ]
    errors = [run.communicate(timeout=60)[1] for run in runs]
    return [(run.returncode, err) for run, err in zip(runs, errors, strict=True)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_blocker_blocks(lean_env: dict[str, str]) -> None:
    """Guards the test itself: without it every check below would pass on a full install too."""
    done = subprocess.run([sys.executable, "-c", "import torch"], cwd=REPO_ROOT, env=lean_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "No module named 'torch'" in done.stderr


def test_the_worklist_and_results_sender_import_without_the_extras(lean_env: dict[str, str]) -> None:
    """`triage worklist` needs a terminal, so its modules are imported instead; the sender of signed reports too."""
    code = "import tui.app, tui.preview, triage.outbox.service, triage.reading.signing, triage.app.server"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=lean_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_listener_host_runs_without_the_ai_extra(lean_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "triage.app.cli", "serve", "--role", "listener", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        env=lean_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ae = AE(ae_title="LEANTEST")
        ae.add_requested_context("1.2.840.10008.1.1")  # Verification
        deadline = time.monotonic() + 60
        status = None
        while status is None and server.poll() is None and time.monotonic() < deadline:
            assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
            if assoc.is_established:
                answer = assoc.send_c_echo()
                status = int(answer.Status) if answer else None
                assoc.release()
            else:
                time.sleep(0.2)
        assert status == 0, f"no C-ECHO answer; server said:\n{server.stderr.read() if server.poll() is not None else ''}"
        # What a listener host's users run, side by side (seconds each, mostly imports) against the live server.
        readers = [
            ["echo", f"127.0.0.1:{port}", "--called-ae", "TRIAGE"],
            ["studies"],
            ["config", "show"],
            ["retention", "--dry-run"],
            ["audit", "verify"],
        ]
        for argv, (code, run_err) in zip(readers, side_by_side(lean_env, *readers), strict=True):
            assert code == 0 and "Traceback" not in run_err, (argv, run_err)
        # And what needs the AI extra there (an index to plot from exists now) says so.
        [(code, run_err)] = side_by_side(lean_env, ["monitor", "--plots", str(tmp_path / "plots")])
        assert (code, run_err.splitlines()[-1:]) == (1, [AI_LINE]) and "Traceback" not in run_err
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, err
    assert "ModuleNotFoundError" not in err and "Traceback" not in err


def test_commands_that_need_an_extra_say_which_in_one_line(lean_env: dict[str, str], tmp_path: Path) -> None:
    ai = AI_LINE
    pg = "triage: error: needs the PostgreSQL extra: pip install 'triage-worklist[pg]'"
    expected = {
        ("score", str(REPO_ROOT / "sample_studies" / "00_head_ct")): ai,
        # Scoring on (role all): refused before it listens, not when the worker loads torch.
        ("serve", "--role", "all", "--host", "127.0.0.1", "--port", "0"): ai,
        ("studies", "--db", "postgresql+psycopg://triage@127.0.0.1:1/triage"): pg,
        ("train", "bleed", "--device", "cpu", "--no-progress"): ai,
    }
    for argv, (code, err) in zip(expected, side_by_side(lean_env, *map(list, expected)), strict=True):
        # serve logs its start (INFO) first; the error is the last line, alone.
        assert code == 1 and err.splitlines()[-1:] == [expected[argv]] and "Traceback" not in err, (argv, err)
        assert "listening as" not in err and not (tmp_path / "share" / "triage" / "models").exists()


def test_only_the_extras_own_modules_are_reported_as_a_missing_extra() -> None:
    """Any other missing module is a bug (or a broken install) and keeps its traceback."""
    from triage.errors import missing_extra

    found = missing_extra(ModuleNotFoundError("No module named 'torch.nn'", name="torch.nn"))
    assert found is not None and (found.extra, str(found)) == ("ai", "needs the AI extra: pip install 'triage-worklist[ai]'")
    assert missing_extra(ModuleNotFoundError("No module named 'torchaudio'", name="torchaudio")) is None
    assert missing_extra(ModuleNotFoundError("No module named 'pydicom'", name="pydicom")) is None
