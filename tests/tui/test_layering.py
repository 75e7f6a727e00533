"""The terminal worklist talks to the worklist service, never to torch or the DICOM network."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_the_tui_imports_no_torch_and_no_pynetdicom() -> None:
    code = (
        "import json, sys; import tui.app, tui.screens.worklist, tui.screens.study, tui.preview, tui.dialogs; "
        "print(json.dumps(sorted(m for m in ('torch', 'pynetdicom', 'detectors.engine') if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
