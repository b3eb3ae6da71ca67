"""Checks of the Slicer module that need no Slicer: .ui <-> module file, CMake lists, import purity."""

from __future__ import annotations

import ast
import py_compile
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULE_DIR = ROOT / "LiverTumorSeg"
MODULE_FILE = MODULE_DIR / "LiverTumorSeg.py"
LIB_DIR = MODULE_DIR / "LiverTumorSegLib"
UI_FILE = ROOT / "Resources" / "UI" / "LiverTumorSeg.ui"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"


@pytest.fixture(scope="module")
def ui_tree() -> ET.ElementTree:
    return ET.parse(UI_FILE)


def ui_widget_names(tree) -> set[str]:
    return {w.get("name") for w in tree.iter("widget")}


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set in {MODULE_CMAKE}"
    return [item.replace("${MODULE_NAME}", "LiverTumorSeg") for item in match.group(1).split()]


def test_module_file_compiles(tmp_path):
    py_compile.compile(str(MODULE_FILE), cfile=str(tmp_path / "module.pyc"), doraise=True)


def test_every_ui_name_used_by_the_module_exists_in_the_ui(ui_tree):
    used = set(re.findall(r"\bui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used, "the module file uses no ui widgets: the pattern is wrong"
    missing = used - ui_widget_names(ui_tree)
    assert not missing, f"widgets used in LiverTumorSeg.py but absent from the .ui: {sorted(missing)}"


def parameter_fields() -> dict[str, str]:
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "LiverTumorSegParameterNode":
            return {
                item.target.id: ast.unparse(item.annotation)
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    raise AssertionError("LiverTumorSegParameterNode not found")


def test_every_slicer_parameter_name_is_a_parameter_node_field(ui_tree):
    fields = parameter_fields()
    bound = {}
    for widget in ui_tree.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    assert bound, "no SlicerParameterName in the .ui"
    assert set(bound) <= set(fields), f"unknown parameters in the .ui: {sorted(set(bound) - set(fields))}"
    # The parameter node wrapper can only connect these widget/type pairs.
    for name, widget_class in bound.items():
        annotation = fields[name]
        if widget_class == "qMRMLNodeComboBox":
            assert annotation.startswith("vtkMRML"), (name, annotation)
        elif widget_class in ("QCheckBox",):
            assert annotation == "bool", (name, annotation)
        elif widget_class in ("ctkSliderWidget",):
            assert "float" in annotation, (name, annotation)
        elif widget_class in ("QSpinBox",):
            assert "int" in annotation, (name, annotation)
        elif widget_class in ("QLineEdit",):
            assert annotation == "str", (name, annotation)
        elif widget_class in ("QComboBox",):  # QComboBoxToStringableConnector needs the Choice validator
            assert annotation.startswith("Annotated[str, Choice("), (name, annotation)
        else:
            pytest.fail(f"{name}: no parameter node connector for {widget_class}")


def test_mrml_widgets_receive_the_scene(ui_tree):
    """A qMRML widget not connected to mrmlSceneChanged stays empty inside Slicer."""
    mrml_widgets = {w.get("name") for w in ui_tree.iter("widget") if w.get("class", "").startswith("qMRML")}
    mrml_widgets.discard(ui_tree.getroot().find("widget").get("name"))
    connected = {
        c.findtext("receiver")
        for c in ui_tree.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)" and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert mrml_widgets and mrml_widgets <= connected, sorted(mrml_widgets - connected)


def test_every_custom_widget_class_is_declared(ui_tree):
    standard = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QCheckBox", "QLineEdit", "QSpinBox",
                "QListWidget", "QProgressBar"}
    declared = {c.findtext("class") for c in ui_tree.iter("customwidget")}
    used = {w.get("class") for w in ui_tree.iter("widget")}
    assert used - standard <= declared, sorted(used - standard - declared)


def test_cmake_lists_every_package_file_and_nothing_else():
    listed = cmake_list(MODULE_CMAKE.read_text(encoding="utf-8"), "MODULE_PYTHON_SCRIPTS")
    on_disk = {"LiverTumorSeg.py"} | {p.relative_to(MODULE_DIR).as_posix() for p in LIB_DIR.rglob("*.py")}
    assert len(listed) == len(set(listed)), "duplicates in MODULE_PYTHON_SCRIPTS"
    assert set(listed) == on_disk, {
        "missing from CMakeLists.txt": sorted(on_disk - set(listed)),
        "listed but absent": sorted(set(listed) - on_disk),
    }


def test_cmake_resources_exist_and_the_extension_is_described():
    listed = cmake_list(MODULE_CMAKE.read_text(encoding="utf-8"), "MODULE_PYTHON_RESOURCES")
    assert "Resources/UI/LiverTumorSeg.ui" in listed and "Resources/Icons/LiverTumorSeg.png" in listed
    for resource in listed:
        assert (ROOT / resource).is_file(), resource
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({variable}\s", top), variable
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in top
    assert "add_subdirectory(LiverTumorSeg)" in top
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in MODULE_CMAKE.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", [ROOT / "LiverTumorSeg.png", ROOT / "Resources" / "Icons" / "LiverTumorSeg.png"])
def test_icons_are_128_pixel_pngs(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)


def test_logic_and_bridge_import_without_qt_slicer_or_torch():
    """The Slicer side (logic, mrml, jobs, rules) runs under bare slicer-core; importing it loads no GUI, slicer or torch."""
    code = (
        "import sys\n"
        "import LiverTumorSegLib.slicer.logic, LiverTumorSegLib.slicer.mrml, LiverTumorSegLib.slicer.rules\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qt', 'ctk', 'PythonQt', 'slicer', 'torch', 'vtk'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_module_file_imports_nothing_heavy_at_module_level():
    """Nothing installs or loads torch when Slicer starts: only the module file's own imports run."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module.split(".")[0])
    assert not top_level & {"torch", "numpy", "scipy", "SimpleITK"}, top_level
    calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert "pip_install" in calls  # installing exists, but only inside functions:
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            # The one allowed call only drops cached Lib modules (developer-mode Reload).
            if ast.unparse(node.value) == "_forgetStaleLib()":
                continue
            pytest.fail(f"module-level call at line {node.lineno}")


def test_stale_lib_is_dropped_before_the_lib_is_imported():
    """Reload re-executes only the module file: the Lib must be dropped before it is imported again."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    lines = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and ast.unparse(node.value) == "_forgetStaleLib()":
            lines["forget"] = node.lineno
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("LiverTumorSegLib"):
            lines.setdefault("import", node.lineno)
    assert lines.get("forget") and lines.get("import") and lines["forget"] < lines["import"], lines
    source = ast.get_source_segment(MODULE_FILE.read_text(encoding="utf-8"),
                                    next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_forgetStaleLib"))
    assert "DeveloperMode" in source and "import" not in source.split('"""')[-1]


def test_no_api_newer_than_slicer_5_8_is_called():
    """APIs that arrived after 5.8 (checked against Slicer's sources) must not be called directly."""
    newer = {"SetTerminology": "vtkSegment, Slicer 5.10", "GetTerminology": "vtkSegment, Slicer 5.10",
             "HasTerminology": "vtkSegment, Slicer 5.10", "GetConverterRules": "wrapping unverified before 5.10"}
    for path in [MODULE_FILE, *LIB_DIR.rglob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in newer:
                pytest.fail(f"{path.name}:{node.lineno} calls {node.func.attr} ({newer[node.func.attr]})")
