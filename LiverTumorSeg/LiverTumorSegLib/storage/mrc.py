"""MRC 2014 volume files (the electron-microscopy format some public CT crops ship in).

An MRC file is a 1024-byte header (plus an optional extended header) and one array. Only what a
CT or label crop needs is read: the three sizes, the value type and the tags that say the file
really is an MRC. No geometry is taken from the header: those crops do not carry one, so the
caller states orientation and spacing.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ..errors import InputError
from .fsutil import atomic_path

HEADER_BYTES = 1024
# MRC mode -> the array's value type (little-endian).
MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16}


def read_mrc(path: str | os.PathLike) -> np.ndarray:
    """The array of an MRC file in file order: shape (nz, ny, nx), the last axis fastest."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist; give an MRC volume file")
    with open(path, "rb") as handle:
        header = handle.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or header[208:212] != b"MAP ":
        raise InputError(f"{path} is not an MRC volume (no 'MAP ' tag in a 1024-byte header)")
    if header[212] != 0x44:
        raise InputError(f"{path} is a big-endian MRC file; only little-endian files are read")
    nx, ny, nz, mode = struct.unpack("<4i", header[:16])
    extended = struct.unpack("<i", header[92:96])[0]
    if mode not in MODES:
        raise InputError(f"{path} holds MRC mode {mode}; readable modes: {sorted(MODES)} (int8, int16, float32, uint16)")
    if min(nx, ny, nz) < 1 or extended < 0:
        raise InputError(f"{path} has an invalid MRC header (sizes {nx} x {ny} x {nz})")
    dtype = np.dtype(MODES[mode]).newbyteorder("<")
    expected = HEADER_BYTES + extended + nx * ny * nz * dtype.itemsize
    if path.stat().st_size != expected:
        raise InputError(f"{path} holds {path.stat().st_size} bytes, its header promises {expected}: the file is cut or damaged")
    data = np.fromfile(path, dtype=dtype, offset=HEADER_BYTES + extended)
    return data.reshape(nz, ny, nx).astype(dtype.newbyteorder("="), copy=False)


def write_mrc(path: str | os.PathLike, array: np.ndarray) -> None:
    """A minimal MRC file of a (nz, ny, nx) array (tests and fixtures: no cell, no statistics)."""
    array = np.ascontiguousarray(array)
    modes = {np.dtype(v): k for k, v in MODES.items()}
    if array.ndim != 3 or array.dtype not in modes:
        raise InputError(f"write_mrc takes a 3D array of {sorted(str(d) for d in modes)}, not {array.ndim}D {array.dtype}")
    nz, ny, nx = array.shape
    header = bytearray(HEADER_BYTES)
    struct.pack_into("<4i", header, 0, nx, ny, nz, modes[array.dtype])
    struct.pack_into("<3i", header, 28, nx, ny, nz)  # sampling along each axis
    struct.pack_into("<3i", header, 64, 1, 2, 3)  # columns, rows, sections = x, y, z
    header[208:212] = b"MAP "
    header[212:216] = bytes((0x44, 0x44, 0, 0))  # little-endian
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(bytes(header))
        handle.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
