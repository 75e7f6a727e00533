"""Smoke test: ``triage worklist`` in a real terminal (tmux), on a small index;
the screen read back with ``capture-pane``."""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.support import REPO_ROOT, clean_env, require_binary, wait_for
from tests.tui.support import add_study
from triage.store.db import make_engine

pytestmark = [pytest.mark.slow, pytest.mark.external, pytest.mark.timeout(120)]

TMUX = "/usr/bin/tmux"


def _tmux(*args: str) -> str:
    return subprocess.run([TMUX, *args], capture_output=True, text=True, check=True, timeout=10).stdout


def test_the_worklist_runs_in_tmux(tmp_path: Path) -> None:
    require_binary(TMUX)
    data = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data / 'triage.db'}")
    add_study(engine, findings=(("bleed", 0.93, 0.1),), description="CT HEAD BLEED CASE")
    add_study(engine, findings=(("fracture", 0.02, 0.6),), modality="DX", description="XR WRIST")
    engine.dispose()

    session = f"triage-{uuid.uuid4().hex[:8]}"
    env = clean_env({"TERM": "xterm-256color"})
    # The reader is the OS account running the worklist, here mapped to the reader dr.tmux.
    config = tmp_path / "triage.toml"
    config.write_text(f'[readers."dr.tmux"]\nos_accounts = ["{pwd.getpwuid(os.geteuid()).pw_name}"]\n')
    worklist = ["worklist", "--config", str(config), "--data-dir", str(data), "--user", "dr.tmux"]
    command = shlex.join([sys.executable, "-m", "triage", *worklist])
    subprocess.run(
        [TMUX, "new-session", "-d", "-s", session, "-x", "140", "-y", "40", "-c", str(REPO_ROOT), command], check=True, env=env, timeout=10
    )
    try:

        def painted() -> str | None:
            text = _tmux("capture-pane", "-p", "-t", session)
            return text if "CT HEAD BLEED CASE" in text else None

        screen = wait_for(painted, timeout=60, what="the worklist on the tmux screen", interval=0.3)
        assert "dr.tmux" in screen  # the reader, in the header
        assert "not a diagnosis" in screen  # the banner
        assert "bleed 0.93" in screen
        lines = screen.splitlines()
        top = next(i for i, line in enumerate(lines) if "CT HEAD BLEED CASE" in line)
        assert top < next(i for i, line in enumerate(lines) if "XR WRIST" in line)  # urgency order

        _tmux("send-keys", "-t", session, "C-q")
        wait_for(lambda: _session_gone(session), timeout=20, what="the worklist to quit on ctrl+q")
    finally:
        subprocess.run([TMUX, "kill-session", "-t", session], capture_output=True, timeout=10)


def _session_gone(session: str) -> bool:
    """One look (the tmux server exits with its last session, so asking twice races it)."""
    done = subprocess.run([TMUX, "list-sessions", "-F", "#{session_name}"], capture_output=True, text=True, timeout=10)
    return done.returncode != 0 or session not in done.stdout.split()
