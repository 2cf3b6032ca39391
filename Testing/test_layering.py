"""The layering rule of docs/architecture.md, pinned: every import in the library (module level and
inside functions, absolute and relative) is parsed with ``ast`` and checked against who may import
whom. A failure names the file, the line and the import.

    engine  <- service <- (nothing)        common <- everyone (stdlib + numpy only)
    client  imports stdlib, numpy and common only
    harness imports engine/service/common; only SynergyPLLib/cli.py imports it
    service: api -> domain -> store; jobs -> domain/store; domain never imports api;
             store imports neither api, domain nor jobs; only service/server.py imports service/app.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "SynergyPLLib"
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``; ``from X import a`` gives ``X.a`` too, so
    ``from SynergyPLLib.service import app`` counts as an import of ``SynergyPLLib.service.app``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            out.extend((node.lineno, f"{target}.{a.name}") for a in node.names if a.name != "*")
    return out


def library_files() -> list[Path]:
    return sorted(p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts)


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def top(name: str) -> str:
    return name.split(".")[0]


# (who: module prefix, rule: (importer, imported) -> why it is refused or None)
def _engine(_who: str, imp: str) -> str | None:
    for bad in ("SynergyPLLib.service", "SynergyPLLib.client", "SynergyPLLib.harness"):
        if under(imp, bad):
            return f"the engine imports {bad.rsplit('.', 1)[1]}"
    return None


def _common(who: str, imp: str) -> str | None:
    if top(imp) in STDLIB or top(imp) == "numpy" or under(imp, "SynergyPLLib.common") or imp == "SynergyPLLib":
        return None
    # regions.py uses scipy's component labelling when present and its own numpy version otherwise
    # (Testing/slicer/test_regions.py runs both, also on Python 3.9 without scipy)
    if top(imp) == "scipy" and who == "SynergyPLLib.common.regions":
        return None
    return "common imports only the standard library, numpy and common"


def _client(_who: str, imp: str) -> str | None:
    if top(imp) in STDLIB or top(imp) == "numpy" or imp == "SynergyPLLib":
        return None
    if under(imp, "SynergyPLLib.common") or under(imp, "SynergyPLLib.client"):
        return None
    return "the client imports only the standard library, numpy and common"


def _domain(_who: str, imp: str) -> str | None:
    return "service/domain imports service/api" if under(imp, "SynergyPLLib.service.api") else None


def _store(_who: str, imp: str) -> str | None:
    for bad in ("api", "domain", "jobs"):
        if under(imp, f"SynergyPLLib.service.{bad}"):
            return f"service/store imports service/{bad}"
    return None


RULES = [("SynergyPLLib.engine", _engine), ("SynergyPLLib.common", _common), ("SynergyPLLib.client", _client),
         ("SynergyPLLib.service.domain", _domain), ("SynergyPLLib.service.store", _store)]


def _everyone(who: str, imp: str) -> str | None:
    if under(imp, "SynergyPLLib.service.app") and who != "SynergyPLLib.service.server":
        return "only service/server.py imports service/app.py (the app factory)"
    if under(imp, "SynergyPLLib.harness") and who != "SynergyPLLib.cli" and not under(who, "SynergyPLLib.harness"):
        return "only SynergyPLLib/cli.py imports SynergyPLLib.harness"
    return None


def violations(files: list[Path]) -> list[str]:
    """One line per import statement that breaks a rule: ``file:line: imports module (why)``."""
    found: dict[tuple[str, int, str], str] = {}
    for path in files:
        who = module_name(path)
        rules = [rule for prefix, rule in RULES if under(who, prefix)] + [_everyone]
        for line, imp in imports_of(path):
            for rule in rules:
                why = rule(who, imp)
                if why:
                    found.setdefault((str(path.relative_to(REPO)), line, why), imp)  # the statement's module
    return [f"{f}:{line}: imports {imp} ({why})" for (f, line, why), imp in sorted(found.items())]


def test_the_library_keeps_its_layers():
    bad = violations(library_files())
    assert not bad, "layering broken:\n" + "\n".join(bad)


@pytest.mark.parametrize(("rel", "source", "expected"), [
    ("SynergyPLLib/engine/x.py", "def f():\n    from SynergyPLLib.service.store import db\n", "the engine imports service"),
    ("SynergyPLLib/engine/x.py", "from ..client import api\n", "the engine imports client"),
    ("SynergyPLLib/common/x.py", "import torch\n", "common imports only"),
    ("SynergyPLLib/client/x.py", "from ..engine.io import read_volume\n", "the client imports only"),
    ("SynergyPLLib/service/domain/x.py", "from ..api.deps import get_state\n", "service/domain imports service/api"),
    ("SynergyPLLib/service/store/x.py", "from ..domain.errors import NotFound\n", "service/store imports service/domain"),
    ("SynergyPLLib/service/store/x.py", "def f():\n    from ..jobs import faults\n", "service/store imports service/jobs"),
    ("SynergyPLLib/service/api/routes/x.py", "from ... import app\n", "only service/server.py imports"),
    ("SynergyPLLib/service/x.py", "from SynergyPLLib.harness.demo import run_demo\n", "only SynergyPLLib/cli.py"),
])
def test_a_broken_rule_names_the_file_and_the_import(tmp_path, monkeypatch, rel, source, expected):
    """Each rule can fail, and says where: a file written into a copy of the layout breaks it."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    bad = violations([path])
    assert len(bad) == 1 and bad[0].startswith(f"{rel}:") and expected in bad[0], bad


def test_allowed_imports_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    files = {"SynergyPLLib/service/server.py": "from .app import create_app\n",
             "SynergyPLLib/cli.py": "from .harness import demo\n",
             "SynergyPLLib/client/x.py": "import json\nimport numpy as np\nfrom ..common.job_status import JobStatus\n",
             "SynergyPLLib/service/jobs/x.py": "from ..domain.cases import get_case_row\nfrom ..store.db import Job\n"}
    paths = []
    for rel, source in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(source)
        paths.append(tmp_path / rel)
    assert violations(paths) == []
