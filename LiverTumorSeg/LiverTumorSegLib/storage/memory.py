"""Will a segmentation fit in memory? An up-front estimate against what the machine has free, so a
huge CT is refused with a clear line instead of the operating system killing the process.

The estimate is linear in the CT's voxels (input, probability map, masks and the copies made
while writing them) and in the working-grid voxels of the region the network sees (features,
resampling and one tile's activations): coefficients measured with benchmarks/big_volume.py
(benchmarks/results/big_volume.json) and rounded up.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# Peak bytes per CT voxel (int16 input), per working voxel of the searched box, and fixed. The
# measured peaks (benchmarks/results/big_volume.json) fit about 7.4, 95 and 0.5e9; these are
# rounded up: 512x512x1000 with a liver mask measured 2.5 GB, estimated 3.1; 512x512x2000
# without one measured 7.9 GB, estimated 9.1.
BYTES_PER_CT_VOXEL = 8.5
BYTES_PER_WORK_VOXEL = 105.0
FIXED_BYTES = 0.8e9
# Keep this share of the free memory for everything else.
HEADROOM = 0.85


# Environment variable: at most this many GB for one segmentation (a shared server, a small VM).
LIMIT_VARIABLE = "LIVERTUMORSEG_MAX_MEMORY_GB"


def available_bytes() -> int | None:
    """Memory this process can still use: the smallest of the system's available memory, the
    room left under a cgroup (container) limit and LIVERTUMORSEG_MAX_MEMORY_GB; None when it
    cannot be told."""
    found = []
    try:
        if os.environ.get(LIMIT_VARIABLE):
            found.append(int(float(os.environ[LIMIT_VARIABLE]) * 1e9))
    except ValueError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")))
        except (ValueError, OSError):
            pass
    return min(found) if found else None


def segment_peak_bytes(shape_zyx, spacing_zyx, box_shape_zyx=None, work_mm: float = 2.0) -> float:
    """Estimated peak memory (bytes) of segmenting a CT of `shape_zyx` voxels when the network
    searches a box of `box_shape_zyx` CT voxels (None: the whole CT, as without a liver mask)."""
    box = shape_zyx if box_shape_zyx is None else box_shape_zyx
    work = float(np.prod([max(1.0, n * s / work_mm) for n, s in zip(box, spacing_zyx)]))
    return BYTES_PER_CT_VOXEL * float(np.prod(shape_zyx)) + BYTES_PER_WORK_VOXEL * work + FIXED_BYTES


def segment_memory_problem(image, liver, margin_mm: float, work_mm: float) -> str | None:
    """`memory_problem` of segmenting `image` (a Volume) where the network searches the box of
    `liver` (a bool (z, y, x) mask on its grid; None: the whole CT) plus `margin_mm`, resampled to
    `work_mm`. InputError for an empty liver mask (nothing to search)."""
    from ..core.features import liver_box

    box = None
    if liver is not None:
        z0, z1, y0, y1, x0, x1 = liver_box(liver, image.shape, image.spacing_zyx, margin_mm)
        box = (z1 - z0, y1 - y0, x1 - x0)
    return memory_problem(image.shape, image.spacing_zyx, box, work_mm=work_mm)


def memory_problem(shape_zyx, spacing_zyx, box_shape_zyx=None, available: int | None = None,
                   work_mm: float = 2.0) -> str | None:
    """None when the estimate fits in HEADROOM of `available` (default: what is free now, and no
    check when that is unknown); else the one-line reason with the fix."""
    available = available_bytes() if available is None else available
    if available is None:
        return None
    need = segment_peak_bytes(shape_zyx, spacing_zyx, box_shape_zyx, work_mm)
    if need <= HEADROOM * available:
        return None
    z, y, x = (int(n) for n in shape_zyx)
    where = "the whole CT (no liver mask)" if box_shape_zyx is None else "the liver region"
    fix = ("give a liver mask (--liver), which confines the search to the liver" if box_shape_zyx is None
           else "crop the CT to the liver region")
    return (f"segmenting {where} of this {x}x{y}x{z} CT needs about {need / 1e9:.1f} GB of memory and "
            f"{available / 1e9:.1f} GB are free; {fix}, or close other programs")


def liver_memory_problem(shape_zyx, spacing_zyx, fix: str) -> str | None:
    """`memory_problem_of` the automatic liver search (core.liver.peak_bytes) on a CT of this shape
    and spacing (mm); `fix` is the front end's way to give the liver instead."""
    from ..core.liver import peak_bytes

    return memory_problem_of(peak_bytes(shape_zyx, spacing_zyx), shape_zyx, "finding the liver in", fix)


def memory_problem_of(need: float, shape_zyx, what: str, fix: str, available: int | None = None) -> str | None:
    """The one-line refusal when `need` bytes do not fit in HEADROOM of the free memory, else None
    (also when the free memory is unknown). `what` names the step ("finding the liver in")."""
    available = available_bytes() if available is None else available
    if available is None or need <= HEADROOM * available:
        return None
    z, y, x = (int(n) for n in shape_zyx)
    return (f"{what} this {x}x{y}x{z} CT needs about {need / 1e9:.1f} GB of memory and "
            f"{available / 1e9:.1f} GB are free; {fix}, or close other programs")
