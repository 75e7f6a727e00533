"""Logging setup shared by the CLI and the listener processes."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str, pynetdicom_level: str = "ERROR") -> None:
    """Log to stderr at ``level``; pynetdicom (which logs every PDU at INFO) at ``pynetdicom_level``."""
    logging.basicConfig(
        level=getattr(logging, level), format="%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("pynetdicom").setLevel("DEBUG" if level == "DEBUG" else pynetdicom_level)
