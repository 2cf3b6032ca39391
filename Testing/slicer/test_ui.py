"""The panel's .ui file against the code that uses it (no Qt needed): it parses, every ``self.ui.X``
the widget uses exists, and every ``SlicerParameterName`` names a parameter-node field that the
widget type can show."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "SynergyPL"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SynergyPL.ui"
MODULE_FILE = MODULE_DIR / "SynergyPL.py"

# Which widget classes Slicer's parameterNodeWrapper can connect to which field types.
CONNECTABLE = {
    "QLineEdit": {"str"}, "QCheckBox": {"bool"}, "QSpinBox": {"int"}, "ctkSliderWidget": {"float"},
    "QDoubleSpinBox": {"float"}, "QComboBox": {"str"}, "ctkPathLineEdit": {"Path"},
    "qMRMLNodeComboBox": {"vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"},
}


@pytest.fixture(scope="module")
def ui_tree():
    return ET.parse(UI_FILE)


@pytest.fixture(scope="module")
def widgets(ui_tree) -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ui_tree.iter("widget")}


@pytest.fixture(scope="module")
def module_ast():
    return ast.parse(MODULE_FILE.read_text(), filename=str(MODULE_FILE))


def _parameter_fields(tree: ast.Module) -> dict[str, str]:
    """Annotated fields of the class decorated with @parameterNodeWrapper: {name: base type name}."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper"
                                                  for d in node.decorator_list):
            fields = {}
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign):
                    annotation = statement.annotation
                    if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", "") == "Annotated":
                        annotation = annotation.slice.elts[0]
                    fields[statement.target.id] = ast.unparse(annotation).split(".")[-1]
            return fields
    raise AssertionError("no @parameterNodeWrapper class in SynergyPL.py")


def test_ui_parses_and_names_are_unique(ui_tree):
    root = ui_tree.getroot()
    assert root.tag == "ui" and root.find("class").text == "SynergyPL"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "SynergyPL"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"
    layouts = [layout.get("name") for layout in root.iter("layout")]
    assert len(layouts) == len(set(layouts)), "duplicate layout names"


def test_every_custom_widget_class_is_declared(ui_tree, widgets):
    declared = {c.find("class").text for c in ui_tree.getroot().iter("customwidget")}
    used = {cls for cls in widgets.values() if not cls.startswith("Q")}
    assert used <= declared, f"declare {used - declared} in <customwidgets>"


def test_every_ui_name_used_in_code_exists(widgets, module_ast):
    def is_ui(node) -> bool:  # self.ui, or a local alias `ui = self.ui`
        return (isinstance(node, ast.Attribute) and node.attr == "ui" and isinstance(node.value, ast.Name)
                and node.value.id == "self") or (isinstance(node, ast.Name) and node.id == "ui")

    used = {node.attr for node in ast.walk(module_ast) if isinstance(node, ast.Attribute) and is_ui(node.value)}
    # widget names given as strings (BUTTONS_BY_ACTION) and looked up with getattr(ui, name)
    table = next(node for node in ast.walk(module_ast)
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "BUTTONS_BY_ACTION")
    used |= {c.value for c in ast.walk(table.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)
             and c.value[0].islower() and c.value.endswith("Button")}
    assert len(used) > 25  # sanity: the walk found the widget code
    missing = sorted(used - set(widgets))
    assert not missing, f"used in SynergyPL.py but not in SynergyPL.ui: {missing}"


def test_parameter_names_match_parameter_node_fields(ui_tree, module_ast):
    fields = _parameter_fields(module_ast)
    bound = {}
    for widget in ui_tree.getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    assert bound, "no widget is bound to the parameter node"
    for name, cls in bound.items():
        assert name in fields, f"{name} (a {cls}) is not a field of the parameter node"
        assert fields[name] in CONNECTABLE[cls], f"{cls} cannot show a {fields[name]} ({name})"
    # the fields the widget reads are there
    assert {"inputVolume", "segmentation", "heatmap", "confidenceThreshold", "heatmapOpacity"} <= set(fields)


def test_node_selectors_follow_the_scene(ui_tree, widgets):
    connections = {(c.find("receiver").text, c.find("slot").text) for c in ui_tree.getroot().iter("connection")}
    for name, cls in widgets.items():
        if cls == "qMRMLNodeComboBox":
            assert (name, "setMRMLScene(vtkMRMLScene*)") in connections, f"{name} is not given the scene"


def test_module_file_is_valid_python_for_slicer(module_ast):
    source = MODULE_FILE.read_text()
    compile(source, str(MODULE_FILE), "exec")
    classes = {node.name for node in module_ast.body if isinstance(node, ast.ClassDef)}
    assert {"SynergyPL", "SynergyPLWidget", "SynergyPLLogic", "SynergyPLTest", "SynergyPLParameterNode"} <= classes
    assert re.search(r"def _make_client_importable", source)


def test_button_slots_take_no_arguments(module_ast):
    """PythonQt passes clicked()'s `checked` flag to a slot that accepts an argument: slots connected to
    `clicked` must take none (else e.g. onSubmit(parentVersion=False) would submit against version 0)."""
    methods = {node.name: node for node in ast.walk(module_ast) if isinstance(node, ast.FunctionDef)}
    for node in ast.walk(module_ast):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect"
                and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "clicked"):
            slot = node.args[0]
            if isinstance(slot, ast.Attribute) and isinstance(slot.value, ast.Name) and slot.value.id == "self":
                arguments = methods[slot.attr].args
                assert len(arguments.args) == 1 and not arguments.defaults, f"{slot.attr} takes arguments"


# ------------------------------------------------------------------------------------------------
# What needs the Slicer application, checked on the source
# ------------------------------------------------------------------------------------------------
def _method(tree: ast.Module, class_name: str, name: str) -> ast.FunctionDef:
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _calls(node: ast.AST, attribute: str) -> list[ast.Call]:
    return [c for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
            and c.func.attr == attribute]


def test_module_depends_on_the_modules_it_uses(module_ast):
    init = _method(module_ast, "SynergyPL", "__init__")
    assigned = next(n for n in ast.walk(init) if isinstance(n, ast.Assign)
                    and ast.unparse(n.targets[0]) == "self.parent.dependencies")
    assert {"Segmentations", "SegmentEditor", "Colors"} <= set(ast.literal_eval(assigned.value))


def test_application_signal_connections_are_removed_in_cleanup(module_ast):
    """A connection to slicer.app outlives the widget: each reload would keep the old one alive."""
    connected = {(ast.dump(c.args[0]), ast.dump(c.args[1])) for c in _calls(module_ast, "connect")
                 if ast.unparse(c.func.value) == "slicer.app"}
    assert connected, "expected the aboutToQuit connection"
    cleanup = _method(module_ast, "SynergyPLWidget", "cleanup")
    disconnected = {(ast.dump(c.args[0]), ast.dump(c.args[1])) for c in _calls(cleanup, "disconnect")
                    if ast.unparse(c.func.value) == "slicer.app"}
    assert connected <= disconnected


def test_url_field_reconnects_when_editing_is_finished_not_per_keystroke(module_ast):
    setup = _method(module_ast, "SynergyPLWidget", "setup")
    assert any(ast.unparse(c) == "self.ui.serverUrlLineEdit.editingFinished.connect(self._configureServer)"
               for c in _calls(setup, "connect"))
    # The parameter node follows every keystroke; reacting to it would drop the connection each time.
    modified = _method(module_ast, "SynergyPLWidget", "_onParameterNodeModified")
    assert not _calls(modified, "_configureServer") and not _calls(modified, "configure")


def test_token_tooltip_says_what_the_code_does(ui_tree, module_ast):
    line_edit = next(w for w in ui_tree.getroot().iter("widget") if w.get("name") == "tokenLineEdit")
    tooltip = next(p for p in line_edit.findall("property") if p.get("name") == "toolTip").find("string").text
    source = MODULE_FILE.read_text()
    stored_in_settings = "QSettings" in source and re.search(r"setValue\([^)]*[Tt]oken", source)
    if not stored_in_settings:
        assert "session only" in tooltip and "never saved" in tooltip and "settings" in tooltip
    assert "token" not in {name.lower() for name in _parameter_fields(module_ast)}   # never in the scene
    assert "SYNERGYPL_TOKEN" in tooltip and 'os.environ.get("SYNERGYPL_TOKEN"' in source


def test_case_selector_hides_the_volumes_the_panel_made(module_ast):
    hide = _method(module_ast, "SynergyPLWidget", "_hideNonCaseVolumes")
    assert "inputVolumeSelector.sortFilterProxyModel().hiddenNodeIDs = ownership.non_case_volume_ids(" in ast.unparse(hide)
    setup = ast.unparse(_method(module_ast, "SynergyPLWidget", "setup"))
    assert "slicer.mrmlScene.NodeAddedEvent, self._hideNonCaseVolumes" in setup
    first = ast.unparse(_method(module_ast, "SynergyPLWidget", "initializeParameterNode"))
    assert "ownership.case_volumes(" in first


# ------------------------------------------------------------------------------------------------
# Slicer 5.8 (Python 3.9) and 5.10+ (Python 3.12): code that Slicer imports
# ------------------------------------------------------------------------------------------------
SLICER_IMPORTED = sorted([*MODULE_DIR.rglob("*.py"), *(MODULE_DIR.parent / "SynergyPLLib" / "client").rglob("*.py")])
# Methods that Slicer 5.8 does not have (added in 5.10); call them only through getattr(...) guards.
SLICER_5_10_ONLY = {"SetTerminology", "GetTerminology", "HasTerminology", "GetTerminologyAsString",
                    "SetTerminologyFromString"}


@pytest.mark.parametrize("path", SLICER_IMPORTED, ids=lambda p: p.relative_to(MODULE_DIR.parent).as_posix())
def test_slicer_imported_code_runs_on_python_3_9_and_slicer_5_8(path):
    source = path.read_text()
    tree = ast.parse(source, filename=str(path), feature_version=(3, 9))  # no match, no (with ...) groups
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        if isinstance(call.func, ast.Name) and call.func.id == "zip":
            assert not any(k.arg == "strict" for k in call.keywords), f"line {call.lineno}: zip(strict=) is 3.10+"
        if isinstance(call.func, ast.Attribute):
            assert call.func.attr not in SLICER_5_10_ONLY, \
                f"line {call.lineno}: {call.func.attr} does not exist in Slicer 5.8"


def _python39() -> str | None:
    """A Python 3.9 interpreter: on PATH, or one pyenv installed (its shim needs the version selected)."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which("python3.9"), *sorted(str(p) for p in root.glob("versions/3.9*/bin/python3.9"))]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    return None


def test_slicer_imported_code_compiles_with_python_3_9():
    python39 = _python39()
    if python39 is None:
        pytest.skip("no python3.9 on this machine (pyenv install 3.9)")
    script = "import sys\nfor f in sys.argv[1:]:\n    compile(open(f, encoding='utf-8').read(), f, 'exec')\n"
    result = subprocess.run([python39, "-c", script, *map(str, SLICER_IMPORTED)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_developer_reload_reloads_every_module_of_the_lib(module_ast):
    reload = _method(module_ast, "SynergyPLWidget", "onReload")
    names = {c.value for c in ast.walk(reload) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    lib = {p.stem for p in (MODULE_DIR / "SynergyPLModuleLib").glob("*.py") if p.stem != "__init__"}
    assert lib <= names, f"not reloaded: {sorted(lib - names)}"
