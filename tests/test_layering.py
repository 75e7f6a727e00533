"""Dependencies point one way: tui -> triage -> {dicom_io, detectors}, detectors -> dicom_io.pixels.

Every import statement of the four packages is read (module level, inside
functions and under ``TYPE_CHECKING`` alike), so a lazy import cannot hide an
upward dependency. The terminal worklist plugs into the CLI through entry
points (``triage.app.plugins``), not an import.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

PACKAGES = ("dicom_io", "detectors", "triage", "tui")
# What each package may import of the project (prefixes: a package, or a module of one).
ALLOWED: dict[str, tuple[str, ...]] = {
    "dicom_io": ("dicom_io",),
    "detectors": ("detectors", "dicom_io.pixels"),
    "triage": ("triage", "dicom_io", "detectors"),
    "tui": ("tui", "triage"),
}


def _project_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, candidate names) of each import of a project package in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, [a.name]) for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] in PACKAGES:
            # `from dicom_io import pixels` imports dicom_io.pixels: either name may be the allowed one.
            out.append((node.lineno, node.module, [node.module] + [f"{node.module}.{a.name}" for a in node.names]))
    return out


def _allowed(package: str, names: list[str]) -> bool:
    prefixes = ALLOWED[package]
    return any(n == p or n.startswith(p + ".") for n in names for p in prefixes)


def violations(root: Path = REPO_ROOT) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for line, module, names in _project_imports(path):
                if names[0].split(".")[0] == package:
                    continue
                if not _allowed(package, names if names[0] == module else [module, *names[1:]]):
                    found.append(f"{path.relative_to(root)}:{line}: {package} imports {module}")
    return found


def test_dependencies_point_one_way() -> None:
    assert violations() == []


KERNEL = (
    "triage.errors",
    "triage.clock",
    "triage.config",
    "triage.logs",
    "triage.names",
    "triage.progress",
    "triage.vocabulary",
    "triage.__version__",
)
# Inside triage: what each stage may import of triage (its own subpackage always; dicom_io and detectors as above).
STAGES: dict[str, tuple[str, ...]] = {
    "store": KERNEL,
    "flow": (*KERNEL, "triage.store"),
    "outbox": (*KERNEL, "triage.store", "triage.flow"),
    "reading": (*KERNEL, "triage.store", "triage.flow", "triage.outbox"),
    "monitor": (*KERNEL, "triage.store"),
    "samples": KERNEL,
    "research": (*KERNEL, "triage.flow", "triage.monitor", "triage.samples"),
    "bench": tuple(f"triage.{s}" for s in ("store", "flow", "outbox", "reading", "monitor", "samples", "research")) + KERNEL,
    "app": ("triage",),
}


def stage_violations(root: Path = REPO_ROOT) -> list[str]:
    found = []
    for path in sorted((root / "triage").rglob("*.py")):
        parts = path.relative_to(root / "triage").parts
        stage = parts[0] if len(parts) > 1 else None  # None: a kernel module
        if path.name == "__main__.py" and stage is None:
            continue  # `python -m triage` runs the CLI: the entry point, not the kernel
        allowed = STAGES[stage] if stage else KERNEL
        for line, module, names in _project_imports(path):
            if not module.startswith("triage"):
                continue
            own = f"triage.{stage}" if stage else None
            if any(n == own or (own and n.startswith(own + ".")) for n in names):
                continue
            if not any(n == p or n.startswith(p + ".") for n in names for p in allowed):
                found.append(f"{path.relative_to(root)}:{line}: {stage or 'kernel'} imports {module}")
    return found


def test_the_stages_of_triage_import_downward_only() -> None:
    assert stage_violations() == []


def test_the_rule_sees_lazy_and_upward_imports(tmp_path: Path) -> None:
    # The check itself: an upward import inside a function is caught; the allowed ones are not.
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "dicom_io" / "bad.py").write_text("def f():\n    from triage.errors import TriageError\n")
    (tmp_path / "detectors" / "ok.py").write_text("from dicom_io.pixels import load_volume\nfrom dicom_io import pixels\n")
    (tmp_path / "detectors" / "bad.py").write_text("from dicom_io.writer import StudyMeta\nimport dicom_io.send\n")
    (tmp_path / "triage" / "bad.py").write_text("if True:\n    import tui.app\n")
    (tmp_path / "tui" / "bad.py").write_text("from dicom_io.pixels import load_volume\nfrom triage.errors import USER_ERRORS\n")
    assert violations(tmp_path) == [
        "dicom_io/bad.py:2: dicom_io imports triage.errors",
        "detectors/bad.py:1: detectors imports dicom_io.writer",
        "detectors/bad.py:2: detectors imports dicom_io.send",
        "triage/bad.py:2: triage imports tui.app",
        "tui/bad.py:1: tui imports dicom_io.pixels",
    ]


# What the application loads of the lower layers (the static rule above covers every module; importing
# all of detectors, training and plotting included, would cost most of a minute).
LOADED = {
    "dicom_io": ["dicom_io.listener", "dicom_io.send", "dicom_io.pixels", "dicom_io.results.ai_sr"],
    "detectors": ["detectors.registry", "detectors.engine", "detectors.routing", "detectors.heatmap"],
}


@pytest.mark.parametrize("package", sorted(LOADED))
def test_the_lower_layers_import_without_triage(package: str) -> None:
    # Loaded on their own, they pull in nothing above them.
    code = (
        "import importlib, json, sys\n"
        f"for m in {LOADED[package]!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'triage', 'tui'})))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_the_tui_imports_no_torch_and_no_pynetdicom() -> None:
    code = (
        "import json, sys; import tui.app, tui.screens.worklist, tui.screens.study, tui.preview, tui.dialogs; "
        "print(json.dumps(sorted(m for m in ('torch', 'pynetdicom', 'detectors.engine') if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_the_worklist_plugs_into_the_cli() -> None:
    # triage finds the terminal worklist and `bench tui` through entry points, without importing tui.
    from triage.app.plugins import worklist_runner
    from tui.app import run_worklist

    assert worklist_runner() is run_worklist
    done = subprocess.run(
        [sys.executable, "-m", "triage", "bench", "tui", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "--studies" in done.stdout, done.stderr


def test_the_stage_rule_sees_a_stage_importing_upward(tmp_path: Path) -> None:
    (tmp_path / "triage" / "store").mkdir(parents=True)
    (tmp_path / "triage" / "flow").mkdir()
    store = "from triage.flow.policy import P\nfrom triage.errors import E\nfrom triage.store import models\n"
    (tmp_path / "triage" / "store" / "x.py").write_text(store)
    (tmp_path / "triage" / "config.py").write_text("def f():\n    from triage.store.models import Study\n")
    (tmp_path / "triage" / "flow" / "y.py").write_text("from triage.store import audit\nfrom triage.reading.service import S\n")
    assert stage_violations(tmp_path) == [
        "triage/config.py:2: kernel imports triage.store.models",
        "triage/flow/y.py:2: flow imports triage.reading.service",
        "triage/store/x.py:1: store imports triage.flow.policy",
    ]


def import_cycles(root: Path = REPO_ROOT) -> list[list[str]]:
    """Groups of project modules that import each other, directly or through others (lazy imports count)."""
    modules = {
        p.relative_to(root).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__"): p
        for package in PACKAGES
        for p in (root / package).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for _, module, names in _project_imports(path):
            deps |= {n for n in (module, *names) if n in modules and n != name and not name.startswith(n + ".")}
        graph[name] = deps
    # Strongly connected components (Tarjan), iteratively deep enough for this tree.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles() -> None:
    assert import_cycles() == []


def test_the_cycle_check_finds_a_lazy_cycle(tmp_path: Path) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "tui" / "app.py").write_text("from tui.screen import Screen\n")
    (tmp_path / "tui" / "screen.py").write_text("def f():\n    from tui.app import App\n")
    (tmp_path / "tui" / "other.py").write_text("from tui.app import App\n")
    assert import_cycles(tmp_path) == [["tui.app", "tui.screen"]]
