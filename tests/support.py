"""Helpers the tests import: the repository root and pydicom's bundled files."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydicom.data import get_testdata_file

REPO_ROOT = Path(__file__).resolve().parent.parent


def bundled_file(name: str) -> Path:
    """A file bundled with pydicom (no download)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom test file {name} is not bundled"
    return Path(path)


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A throw-away certificate and key for localhost / 127.0.0.1 (``openssl`` must be installed)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subj = ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subj, "-keyout", str(key), "-out", str(cert)]
    subprocess.run(argv, check=True, capture_output=True)
    return cert, key
