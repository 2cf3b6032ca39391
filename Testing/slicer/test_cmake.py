"""The Slicer extension's CMake files: nothing the module needs is left out of the build, and the
installed layout lets the module import its lib and the service's client without torch.

CI has no Slicer build tree, so the extension is configured against a stand-in Slicer CMake package
(``cmake_stub/``) whose macros check their arguments like Slicer's do and record what would be copied.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "SynergyPL"
STUB = Path(__file__).resolve().parent / "cmake_stub"
HEAVY = ("torch", "monai", "SimpleITK", "scipy", "fastapi", "sqlalchemy", "SynergyPLLib.engine",
         "SynergyPLLib.service")


def _cmake_list(text: str, variable: str, substitutions: dict[str, str]) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set"
    items = match.group(1).split()
    for key, value in substitutions.items():
        items = [item.replace("${" + key + "}", value) for item in items]
    return items


def _module_files() -> tuple[set[str], set[str]]:
    scripts = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    resources = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    return scripts, resources


def test_module_cmakelists_lists_every_script_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    name = re.search(r"set\(MODULE_NAME\s+(\w+)\)", text).group(1)
    assert name == "SynergyPL"
    listed_scripts = _cmake_list(text, "MODULE_PYTHON_SCRIPTS", {"MODULE_NAME": name})
    listed_resources = _cmake_list(text, "MODULE_PYTHON_RESOURCES", {"MODULE_NAME": name})
    scripts, resources = _module_files()
    assert set(listed_scripts) == scripts, (f"not listed: {sorted(scripts - set(listed_scripts))}; "
                                            f"listed but missing: {sorted(set(listed_scripts) - scripts)}")
    assert set(listed_resources) == resources, (f"not listed: {sorted(resources - set(listed_resources))}; "
                                                f"listed but missing: {sorted(set(listed_resources) - resources)}")
    assert "slicerMacroBuildScriptedModule(" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_extension_cmakelists_is_a_slicer_extension():
    text = (REPO / "CMakeLists.txt").read_text()
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf"set\({variable}\s", text), variable
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"NA"\)', text)
    assert "find_package(Slicer REQUIRED)" in text and "include(${Slicer_USE_FILE})" in text
    assert "add_subdirectory(SynergyPL)" in text
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text and "include(${Slicer_EXTENSION_CPACK})" in text
    assert "SynergyPLLib/__init__.py" in text and "SynergyPLLib/client/*.py" in text
    assert "SynergyPLLib/common/*.py" in text
    # screenshots and icon the extension advertises exist in the repository
    for relative in re.findall(r"\$\{_raw\}/([\w/.-]+\.png)", text):
        assert (REPO / relative).is_file(), relative


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    """Configure the extension against the stand-in Slicer; returns the manifest rows."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    build = tmp_path_factory.mktemp("build")
    result = subprocess.run([cmake, "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={STUB}", "-DBUILD_TESTING=ON", "-G", "Ninja"
                             if shutil.which("ninja") else "Unix Makefiles"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line.split("|") for line in (build / "manifest.txt").read_text().splitlines() if line]
    return build, rows


def test_configure_copies_module_lib_and_client_side_by_side(configured):
    _build, rows = configured
    destinations = {dest for target, kind, src, dest in rows if kind in ("script", "resource")}
    prefix = "lib/Slicer-5.11/qt-scripted-modules/"
    scripts, resources = _module_files()
    for relative in scripts | resources:
        assert prefix + relative in destinations, relative
    client = {p.relative_to(REPO).as_posix() for sub in ("client", "common")
              for p in (REPO / "SynergyPLLib" / sub).rglob("*.py") if "__pycache__" not in p.parts}
    assert client, "SynergyPLLib/client has no files"
    for relative in client | {"SynergyPLLib/__init__.py"}:
        assert prefix + relative in destinations, relative
    assert not any("/engine/" in d or "/service/" in d for d in destinations), "engine/service must not be installed"
    meta = {kind: src for target, kind, src, dest in rows if target == "meta"}
    assert meta["EXTENSION_DEPENDS"] == "NA"
    assert any(target == "cpack" for target, *_ in rows)
    assert any(target == "test" for target, *_ in rows)


def _run_python(code: str, path_entries: list[Path]) -> subprocess.CompletedProcess:
    site = [p for p in sys.path if "site-packages" in p]
    prelude = f"import sys; sys.path[:0] = {[str(p) for p in path_entries]!r}; sys.path += {site!r}\n"
    return subprocess.run([sys.executable, "-I", "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300)


def _client_path_function() -> str:
    tree = ast.parse((MODULE_DIR / "SynergyPL.py").read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_make_client_importable")
    return "import sys\nfrom pathlib import Path\n" + ast.unparse(function)


IMPORT_CHECK = """
import importlib
{function}
__file__ = {module_file!r}
_make_client_importable()
import SynergyPLLib.client, SynergyPLModuleLib.logic, SynergyPLModuleLib.scene.files
from SynergyPLModuleLib.logic import LabelingLogic
LabelingLogic(work_dir={work!r}).shutdown()
heavy = [m for m in {heavy!r} if m in sys.modules]
assert not heavy, f"the module pulled in {{heavy}}"
print("ok", SynergyPLLib.client.__file__)
"""


def test_installed_layout_imports_the_client_without_torch(configured, tmp_path):
    build, rows = configured
    install = tmp_path / "install"
    for _target, kind, src, dest in rows:
        if kind in ("script", "resource"):
            target = install / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    modules = install / "lib/Slicer-5.11/qt-scripted-modules"
    code = IMPORT_CHECK.format(function=_client_path_function(), module_file=str(modules / "SynergyPL.py"),
                               work=str(tmp_path / "w"), heavy=HEAVY)
    result = _run_python(code, [modules])  # Slicer puts the module's folder on sys.path
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(modules / "SynergyPLLib" / "client") in result.stdout


def test_module_path_from_source_finds_the_client(tmp_path):
    """Slicer's "additional module paths" pointing at <repo>/SynergyPL: the repo root goes on sys.path."""
    code = IMPORT_CHECK.format(function=_client_path_function(), module_file=str(MODULE_DIR / "SynergyPL.py"),
                               work=str(tmp_path / "w"), heavy=HEAVY)
    result = _run_python(code, [MODULE_DIR])
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(REPO / "SynergyPLLib" / "client") in result.stdout
