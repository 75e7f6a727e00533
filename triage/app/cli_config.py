"""``triage config show|check``: the effective settings and where each came from; a file checked.

``show`` lists every key (dotted), its value and its origin: the file path, the
``TRIAGE_*`` variable, or "default". The password in ``db``'s URL is masked, so
the output can be pasted into a ticket. ``check FILE`` validates one file on its
own (defaults under it, no environment) and prints "ok", or the one-line error
and exits 2 like every configuration error.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from triage.config import LoadedSettings, load_settings, load_settings_with_origins
from triage.errors import ConfigError

MASK = "***"
# Query parameters of a database URL that carry a secret (libpq's password, tokens of cloud drivers).
_SECRET_QUERY = re.compile(r"pass|secret|token", re.IGNORECASE)


def mask_db_url(url: str) -> str:
    """``url`` with its password, and query parameters that look secret, replaced by ``***``."""
    if not url:
        return url
    from sqlalchemy.engine import make_url

    parsed = make_url(url)  # already validated by Settings
    query = {k: (MASK if _SECRET_QUERY.search(k) else v) for k, v in parsed.query.items()}
    shown = parsed.set(query=query).render_as_string(hide_password=True)
    return shown.replace("%2A%2A%2A", MASK)  # the query's mask comes back URL-quoted


def _leaves(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every key of ``model``: sections descended into; lists and tables of data kept whole."""
    dumped = model.model_dump(mode="json")
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", dumped[name]


def effective_values(loaded: LoadedSettings) -> list[dict[str, Any]]:
    """``[{"key": "listener.port", "value": 11112, "origin": "default"}, ...]`` in the settings' order, secrets masked."""
    rows = []
    for key, value in _leaves(loaded.settings):
        if key == "db":
            value = mask_db_url(value)
        rows.append({"key": key, "value": value, "origin": loaded.origin(key)})
    return rows


def format_text(loaded: LoadedSettings) -> str:
    """One ``key = value  # origin`` line per key, values in JSON, after the file read."""
    rows = effective_values(loaded)
    shown = [f"{r['key']} = {json.dumps(r['value'], ensure_ascii=False)}" for r in rows]
    width = min(max(len(s) for s in shown), 56)  # a long list does not push every origin off the screen
    head = f"# file: {loaded.file}" if loaded.file else "# file: none found (defaults, environment and flags only)"
    return "\n".join([head, *(f"{s:<{width}}  # {r['origin']}" for s, r in zip(shown, rows, strict=True))])


def _cmd_show(args: argparse.Namespace) -> int:
    loaded = load_settings_with_origins(args.config)
    if args.json:
        print(json.dumps({"file": str(loaded.file) if loaded.file else None, "settings": effective_values(loaded)}, indent=2))
    else:
        print(format_text(loaded))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise ConfigError(f"config: file {path} does not exist")
    # The file alone: a check run from a shell with TRIAGE_* set must judge the file, not the shell.
    load_settings(path, environ={}, search=[])
    print("ok")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``config show`` and ``config check`` to the CLI."""
    cfg = sub.add_parser("config", help="the effective settings and their origins; check a settings file")
    csub = cfg.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    p = csub.add_parser("show", help="every setting (dotted key), its value and where it came from; db password masked")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML settings file (default: $TRIAGE_CONFIG, ./triage.toml, the user's config directory, /etc/triage/triage.toml)",
    )
    p.add_argument("--json", action="store_true", help='JSON: {"file": ..., "settings": [{"key", "value", "origin"}, ...]}')
    p.set_defaults(func=_cmd_show)
    p = csub.add_parser("check", help='validate a settings file on its own: prints "ok", or the error (exit 2)')
    p.add_argument("file", metavar="FILE", help="the TOML file")
    p.set_defaults(func=_cmd_check)
