"""DESIGN.md's arrows, held by reading every import of the package (function-level ones too).

The engine is layered so that each folder builds only on the folders below it:

    errors, volume  <-  core  <-  storage  <-  data  <-  evaluation  <-  training  <-  slicer  <-  cli, cli_outputs, demo

`core` (arrays in, arrays out) imports no other engine folder; nothing imports upward or in a
circle; the engine never imports Slicer or Qt, and the Qt-free Slicer side imports `slicer` only
inside functions (it runs under slicer-core and in the command line without it); only the
command line's `web` command imports the web package.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "LiverTumorSeg" / "LiverTumorSegLib"
PACKAGE = "LiverTumorSegLib"
WEB = "LiverTumorSegWeb"

# The rank of each place in the package: an import may only go to the same rank or lower.
RANKS = {"errors": 0, "volume": 0, "protocol": 0, "core": 1, "storage": 2, "data": 3, "evaluation": 4, "training": 5, "slicer": 6,
         "cli": 7, "cli_outputs": 7, "batch": 7, "demo": 7, "__main__": 8, "__init__": 0}
ENGINE_FOLDERS = ("core", "storage", "data", "evaluation", "training")
GUI_PACKAGES = ("qt", "ctk", "PythonQt", "slicer", "vtk", "mrml", "trame", "trame_slicer")


@dataclass(frozen=True)
class Import:
    source: str  # module that imports, e.g. LiverTumorSegLib.core.inference
    target: str  # module imported, resolved to an absolute dotted name
    line: int
    function: str | None  # the enclosing function, None at module level


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE_DIR.parent).parent.parts)


def _existing_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    base = PACKAGE_DIR / relative
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path) -> list[Import]:
    """Every import statement in the file, wherever it stands, with its target made absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    source, package = module_name(path), _package_of(path)
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Import):
                found.extend(Import(source, alias.name, child.lineno, function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    stem = ".".join(base + ([child.module] if child.module else []))
                else:
                    stem = child.module
                for alias in child.names:
                    candidate = f"{stem}.{alias.name}"
                    target = candidate if candidate.startswith(PACKAGE) and _existing_module(candidate) else stem
                    found.append(Import(source, target, child.lineno, function))
            visit(child, inner)

    visit(tree, None)
    return found


def place(module: str) -> str:
    """The layer a package module belongs to: its folder, or its own name at the top level."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def all_imports() -> list[Import]:
    return [imp for path in sorted(PACKAGE_DIR.rglob("*.py")) for imp in imports_of(path)]


def test_every_file_has_a_layer():
    places = {place(module_name(p)) for p in PACKAGE_DIR.rglob("*.py")}
    assert places <= set(RANKS), f"files outside the known layers: {sorted(places - set(RANKS))}; add them to RANKS"


def test_imports_only_go_down_the_layers():
    upward = [f"{i.source}:{i.line} -> {i.target}" + (f" (in {i.function})" if i.function else "")
              for i in all_imports()
              if i.target.startswith(PACKAGE + ".") and RANKS[place(i.target)] > RANKS[place(i.source)]]
    assert not upward, "imports that go up the layers:\n" + "\n".join(upward)


def test_core_imports_no_other_engine_folder():
    outside = [f"{i.source}:{i.line} -> {i.target}" for i in all_imports()
               if place(i.source) == "core" and i.target.startswith(PACKAGE + ".")
               and place(i.target) not in ("core", "errors", "volume")]
    assert not outside, "\n".join(outside)


def test_the_engine_never_imports_slicer_or_qt_and_the_slicer_side_only_lazily():
    wrong = []
    for i in all_imports():
        top = i.target.split(".")[0]
        if top not in GUI_PACKAGES:
            continue
        if place(i.source) in ENGINE_FOLDERS or place(i.source) in ("errors", "volume", "__init__"):
            wrong.append(f"{i.source}:{i.line} imports {i.target} (the engine runs without Slicer)")
        elif top in ("qt", "ctk", "PythonQt"):
            wrong.append(f"{i.source}:{i.line} imports {i.target} (the package is Qt-free)")
        elif i.function is None:
            wrong.append(f"{i.source}:{i.line} imports {i.target} at module level (import it inside the function)")
    assert not wrong, "\n".join(wrong)


def test_the_command_line_needs_no_mrml():
    """The Logic runs the command line as its background process: the command line must not need
    the Slicer side (and its MRML) in return."""
    back = [f"{i.source}:{i.line} -> {i.target}" for i in all_imports()
            if place(i.source) in ("cli", "cli_outputs", "demo") and i.target.startswith(f"{PACKAGE}.slicer")]
    assert not back, "\n".join(back)


def test_only_the_web_command_imports_the_web_package():
    web = [i for i in all_imports() if i.target.split(".")[0] == WEB]
    assert web, "the command line's web command should import the web package"
    elsewhere = [f"{i.source}:{i.line} (in {i.function})" for i in web
                 if (i.source, i.function) != (f"{PACKAGE}.cli", "cmd_web")]
    assert not elsewhere, "the web package is imported outside cli.cmd_web:\n" + "\n".join(elsewhere)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A list of modules that import each other in a circle, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles_between_modules_or_folders():
    graph, folders = {}, {}
    for i in all_imports():
        if i.target.startswith(PACKAGE + ".") and i.target != i.source:
            graph.setdefault(i.source, set()).add(i.target)
            if place(i.source) != place(i.target):
                folders.setdefault(place(i.source), set()).add(place(i.target))
    assert find_cycle(graph) is None, "modules import each other in a circle: " + " -> ".join(find_cycle(graph))
    assert find_cycle(folders) is None, "folders import each other in a circle: " + " -> ".join(find_cycle(folders))


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"a"}}, ["a", "a"]),
])
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert find_cycle(graph) == expected


def test_the_import_reader_sees_function_level_and_relative_imports():
    """The walker itself: a relative import inside a function resolves to the absolute module."""
    path = PACKAGE_DIR / "core" / "inference.py"
    found = imports_of(path)
    assert any(i.target == f"{PACKAGE}.core.features" and i.function is None for i in found), found
    cli = imports_of(PACKAGE_DIR / "cli.py")
    assert any(i.function == "cmd_web" and i.target.startswith(WEB) for i in cli)
    assert all(i.target and not i.target.startswith(".") for i in cli)
