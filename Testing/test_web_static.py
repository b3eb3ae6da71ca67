"""The web front end's place in the layers, and what needs no browser: nothing in the engine, the
Logic or the Slicer module imports it (or trame); the package imports without trame;
`livertumorseg web` refuses a non-loopback host without --allow-remote, warns with it, and says in
one line when trame is missing; uploads are written safely (names, zips)."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from LiverTumorSegLib import cli
from LiverTumorSegLib.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
LIB_DIR = ROOT / "LiverTumorSeg" / "LiverTumorSegLib"
MODULE_FILE = ROOT / "LiverTumorSeg" / "LiverTumorSeg.py"
WEB_DIR = ROOT / "LiverTumorSeg" / "LiverTumorSegWeb"


def imports(path: Path) -> list[tuple[str, str | None]]:
    """(module imported, enclosing function name or None at module level) of a source file."""
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Import):
                found.extend((alias.name, function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, function))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), None)
    return found


def test_only_the_web_command_imports_the_web_front_end():
    """The engine, Logic and Slicer module never import trame or LiverTumorSegWeb; cli.py does only
    inside cmd_web (so `livertumorseg segment` and Slicer never load it)."""
    offenders = []
    for path in [MODULE_FILE, *sorted(LIB_DIR.glob("*.py"))]:
        for module, function in imports(path):
            top = module.split(".")[0]
            if top.startswith("trame") or top == "LiverTumorSegWeb":
                if not (path.name == "cli.py" and function == "cmd_web"):
                    offenders.append(f"{path.name}: {module} ({function or 'module level'})")
    assert not offenders, offenders
    assert ("LiverTumorSegWeb", "cmd_web") in imports(LIB_DIR / "cli.py")


def test_web_front_end_imports_no_engine_internals():
    """The page calls the Logic and the shared action rules: no engine module (inference, training,
    io...) and no MRML bridge."""
    allowed = {"LiverTumorSegLib", "LiverTumorSegLib.slicer", "LiverTumorSegLib.slicer.logic", "LiverTumorSegLib.slicer.rules",
               "LiverTumorSegLib.errors"}
    used = {module for path in WEB_DIR.glob("*.py") for module, _ in imports(path) if module.startswith("LiverTumorSegLib")}
    assert used <= allowed, used - allowed
    for path in WEB_DIR.glob("*.py"):  # nor the bridge reached through the Logic's module, nor scene edits
        source = path.read_text(encoding="utf-8")
        assert ".mrml" not in source and "RemoveNode" not in source and "AddNewNode" not in source, path.name


def test_package_and_command_line_import_without_trame():
    """With trame made unimportable, the Lib, the command line and LiverTumorSegWeb/__init__ still import."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0].startswith('trame'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import LiverTumorSegLib.cli, LiverTumorSegLib.slicer.logic, LiverTumorSegWeb\n"
        "print(sorted(m for m in sys.modules if m.startswith('trame')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "LiverTumorSeg",
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_web_without_trame_says_so_in_one_line(monkeypatch, capsys):
    import LiverTumorSegWeb

    monkeypatch.setattr(LiverTumorSegWeb, "REQUIRED_MODULES", ("trame_slicer_not_installed_here",))
    assert cli.main(["web", "--port", "0"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the web front end needs trame_slicer_not_installed_here"), err
    assert "make venv" in err[0]


def test_remote_host_needs_an_explicit_flag_and_warns(monkeypatch, capsys):
    import LiverTumorSegWeb

    assert cli.main(["web", "--host", "0.0.0.0"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: --host 0.0.0.0 would serve the app") and "--allow-remote" in err
    # With the flag: a warning, then (trame made missing here, so nothing is served) the next check.
    monkeypatch.setattr(LiverTumorSegWeb, "REQUIRED_MODULES", ("trame_slicer_not_installed_here",))
    assert cli.main(["web", "--host", "0.0.0.0", "--allow-remote"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: serving on 0.0.0.0: anyone who can reach port 8080"), err
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert cli.is_loopback(host)
    assert not cli.is_loopback("192.168.1.5") and not cli.is_loopback("example.org")
    assert cli.main(["web", "--port", "70000"]) == cli.EXIT_BAD_INPUT


@pytest.fixture
def uploads():
    pytest.importorskip("trame")
    from LiverTumorSegWeb import uploads

    return uploads


def client_file(name: str, content: bytes) -> dict:
    return {"name": name, "size": len(content), "type": "application/octet-stream", "content": content}


def test_uploads_land_in_the_folder_by_their_own_names(uploads, tmp_path):
    one = uploads.save_uploads([client_file("../../etc/ct.nrrd", b"x")], tmp_path / "a")
    assert one == tmp_path / "a" / "ct.nrrd" and one.read_bytes() == b"x"
    series = uploads.save_uploads([client_file("1.dcm", b"1"), client_file("2.dcm", b"2")], tmp_path / "b")
    assert series.is_dir() and sorted(p.name for p in series.iterdir()) == ["1.dcm", "2.dcm"]
    with pytest.raises(InputError, match="no file was uploaded"):
        uploads.save_uploads([], tmp_path / "c")
    with pytest.raises(InputError, match="cannot use the file name"):
        uploads.save_uploads([client_file("..", b"")], tmp_path / "d")


def test_zipped_series_is_unpacked_safely(uploads, tmp_path):
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("patient/ct/1.dcm", b"1")
        z.writestr("patient/ct/2.dcm", b"2")
        z.writestr("__MACOSX/patient/._1.dcm", b"junk")
    folder = uploads.save_uploads([client_file("series.zip", archive.read_bytes())], tmp_path / "up")
    assert folder.name == "ct" and sorted(p.name for p in folder.iterdir()) == ["1.dcm", "2.dcm"]
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../outside.dcm", b"x")
    with pytest.raises(InputError, match="outside its folder"):
        uploads.save_uploads([client_file("evil.zip", evil.read_bytes())], tmp_path / "up2")
    assert not (tmp_path / "outside.dcm").exists()
    with pytest.raises(InputError, match="not a readable zip"):
        uploads.save_uploads([client_file("bad.zip", b"not a zip")], tmp_path / "up3")
