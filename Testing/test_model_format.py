"""Model files stay loadable by the oldest PyTorch Slicer users may have (README, Versions: >= 2.1).

Slicer 5.8's Python is 3.9, so the PyTorch extension installs at most a cp39 build there, and a
user may already have an older torch. No torch 2.1 CPU wheel is on PyPI for this machine, so
this checks the file against what `torch.load(weights_only=True)` in torch 2.1 reads: a zip whose
`version` record is at most 3 (what torch has written for plain tensors since 1.6), a pickle of
protocol 2 using only the opcodes and globals of torch's weights-only unpickler as it was in
1.13-2.1 (no numpy scalars, no custom classes). Extra zip records newer torch adds
(`byteorder`, `.data/serialization_id`, `.storage_alignment`, `.format_version`) are ignored by
older readers, which look records up by name.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "Resources" / "Models" / "default" / "model.pt"

OLD_LOADER_OPCODES = {
    "GLOBAL", "NEWOBJ", "REDUCE", "BUILD", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "MARK", "TUPLE", "TUPLE1",
    "TUPLE2", "TUPLE3", "NONE", "NEWFALSE", "NEWTRUE", "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET",
    "BININT", "BININT1", "BININT2", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING", "BINPERSID", "BINGET",
    "LONG_BINGET", "BINPUT", "LONG_BINPUT", "LONG1", "PROTO", "STOP",
}
OLD_LOADER_GLOBALS = {
    "collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_parameter",
    "torch.nn.parameter Parameter",
}
OLD_STORAGES = {f"torch {kind}Storage" for kind in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short",
                                                   "Char", "Byte", "Bool")}


def check_loadable_by_old_torch(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        prefix = names[0].split("/")[0]
        version = int(archive.read(f"{prefix}/version").decode().strip())
        assert 1 <= version <= 3, f"zip format version {version}"
        data = archive.read(f"{prefix}/data.pkl")
    assert data[:2] == b"\x80\x02", "pickle protocol 2 (torch's DEFAULT_PROTOCOL)"
    opcodes, globals_ = set(), set()
    for opcode, argument, _ in pickletools.genops(data):
        opcodes.add(opcode.name)
        if opcode.name == "GLOBAL":
            globals_.add(argument)
    assert opcodes <= OLD_LOADER_OPCODES, sorted(opcodes - OLD_LOADER_OPCODES)
    assert globals_ <= OLD_LOADER_GLOBALS | OLD_STORAGES, sorted(globals_ - OLD_LOADER_GLOBALS - OLD_STORAGES)


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="no shipped default model in this checkout")
def test_shipped_default_model_is_readable_by_torch_2_1():
    check_loadable_by_old_torch(DEFAULT_MODEL)


def test_models_written_now_are_readable_by_torch_2_1(tiny_model_dir):
    """What save_model writes today (the Retrain output), not only the shipped file."""
    check_loadable_by_old_torch(tiny_model_dir / "model.pt")


def test_the_check_rejects_what_old_torch_cannot_read(tmp_path):
    import numpy as np
    import torch

    path = tmp_path / "numpy.pt"
    torch.save({"format_version": 1, "threshold": np.float64(0.5)}, path)  # a numpy scalar: a numpy global
    with pytest.raises(AssertionError):
        check_loadable_by_old_torch(path)
