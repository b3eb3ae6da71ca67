"""The liver network's grid: RAS orientation, box-averaged resampling, patch placement.

The network was trained on arrays indexed (x, y, z) with x towards the patient's right, y
anterior, z superior (RAS), at 3 mm. `to_ras` / `from_ras` turn a Volume's (z, y, x) LPS array
into that order and back (axes swapped and flipped only: an oblique grid is taken at its nearest
axes, as the original's reader did). `zoom_axis` is the original's resampler (pymirc's zoom3d):
linear interpolation on a centred grid when enlarging, the mean over the overlapped fraction of
each input voxel when shrinking; the new size is ceil(n * zoom). The patch functions place the
network's fixed input box (voxels on the 3 mm grid) and say which voxels its output covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse

# LPS world axis -> sign that makes it RAS (x and y negated).
_RAS_SIGN = np.array([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class RasFrame:
    """How a Volume's array maps onto the RAS (x, y, z) array: `permutation[w]` is the index axis
    (0 = x, 1 = y, 2 = z of the Volume) that runs along RAS axis w; `flip[w]` whether it runs
    backwards. `spacing` (mm) is in RAS order."""

    permutation: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    spacing: tuple[float, float, float]


def ras_frame(volume) -> RasFrame:
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)  # column i: index axis i in LPS
    permutation, flip = [0, 0, 0], [False, False, False]
    used = set()
    for world in range(3):
        index_axis = int(np.argmax(np.abs(direction[world])))
        if index_axis in used:
            raise ValueError("the CT's axes are too oblique to tell left-right, front-back and head-feet apart")
        used.add(index_axis)
        permutation[world] = index_axis
        flip[world] = bool(direction[world, index_axis] * _RAS_SIGN[world] < 0)
    spacing = tuple(float(volume.spacing[i]) for i in permutation)
    return RasFrame(tuple(permutation), tuple(flip), spacing)


def to_ras(array_zyx: np.ndarray, frame: RasFrame) -> np.ndarray:
    """A (z, y, x) array of the Volume -> the (x, y, z) RAS array (a view where possible)."""
    out = np.transpose(array_zyx, (2, 1, 0)).transpose(frame.permutation)
    for axis, flipped in enumerate(frame.flip):
        if flipped:
            out = np.flip(out, axis)
    return out


def from_ras(array_ras: np.ndarray, frame: RasFrame) -> np.ndarray:
    """The inverse of `to_ras`: an (x, y, z) RAS array back to the Volume's (z, y, x) order."""
    out = array_ras
    for axis, flipped in enumerate(frame.flip):
        if flipped:
            out = np.flip(out, axis)
    return np.ascontiguousarray(out.transpose(np.argsort(frame.permutation)).transpose(2, 1, 0))


def zoom_matrix(n: int, zoom: float) -> sparse.csr_matrix:
    """The (ceil(n * zoom), n) matrix of the original's 1-D resampling by `zoom` (pymirc
    zoom3d): outside the input counts as 0. The arithmetic follows the original's order so that
    the weights agree to the last bit."""
    delta = 1.0 / zoom
    rows, cols, weights = [], [], []
    if zoom > 1:
        ns = math.ceil(n / delta)
        i = np.arange(ns, dtype=float)
        centre = delta * (i - 0.5 * ns + 0.5) + 0.5 * n - 0.5
        left = np.floor(centre)
        right = left + 1
        for index, weight in ((left, right - centre), (right, centre - left)):
            keep = (index >= 0) & (index < n)
            rows.append(np.arange(ns)[keep])
            cols.append(index[keep].astype(int))
            weights.append(weight[keep])
        shape = (ns, n)
    elif zoom < 1:
        nb = math.ceil(n / delta)
        i = np.arange(n, dtype=float)
        lo = (1.0 / delta) * (i - 0.5 * n) + 0.5 * nb
        hi = (1.0 / delta) * (i + 1 - 0.5 * n) + 0.5 * nb
        left = np.floor(lo).astype(int)
        right = np.ceil(hi).astype(int) - 1
        cut = np.ceil(lo)
        single = left == right
        rows += [left[single], left[~single], right[~single]]
        cols += [np.arange(n)[single], np.arange(n)[~single], np.arange(n)[~single]]
        weights += [np.full(int(single.sum()), 1.0 / delta), (cut - lo)[~single], (hi - cut)[~single]]
        shape = (nb, n)
    else:
        return sparse.identity(n, format="csr")
    rows, cols, weights = (np.concatenate(v) for v in (rows, cols, weights))
    keep = (rows >= 0) & (rows < shape[0])
    return sparse.csr_matrix((weights[keep], (rows[keep], cols[keep])), shape=shape)


def zoom_axis(array: np.ndarray, axis: int, zoom: float) -> np.ndarray:
    """`array` resampled along one axis by `zoom` (new size ceil(n * zoom)), float32."""
    if zoom == 1:
        return np.asarray(array, dtype=np.float32)
    matrix = zoom_matrix(array.shape[axis], zoom).astype(np.float32)
    moved = np.moveaxis(np.asarray(array, dtype=np.float32), axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    out = (matrix @ flat).reshape((matrix.shape[0],) + moved.shape[1:])
    return np.moveaxis(out, 0, axis)


def zoom3d(array: np.ndarray, zooms) -> np.ndarray:
    """Resampled along each axis in turn (axis 0 first, as the original)."""
    for axis, zoom in enumerate(zooms):
        array = zoom_axis(array, axis, float(zoom))
    return np.asarray(array, dtype=np.float32)


@dataclass(frozen=True)
class Patch:
    """One network input box on the 3 mm grid: `start` (x, y, z voxels, may be negative: the box
    reaches past the volume, zero-filled there) and `size`; its output covers `start + margin`
    to `start + size - margin`."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]
    margin: int

    @property
    def output_start(self) -> tuple[int, ...]:
        return tuple(s + self.margin for s in self.start)

    @property
    def output_size(self) -> tuple[int, ...]:
        return tuple(n - 2 * self.margin for n in self.size)


def centred_start(length: int, size: int) -> int:
    """Start of a `size`-voxel box centred on an axis of `length` voxels, the original's way:
    the centre voxel is ceil((length - 1) / 2) and sits at index size // 2 of the box."""
    return math.ceil((length - 1) / 2) - size // 2


def axis_starts(length: int, body: tuple[int, int], size: int, margin: int) -> list[int]:
    """Input starts of the boxes along one axis.

    The original's one centred box, unless its output (`size - 2 margin`) misses part of the body
    (`body` = first and last voxel above the body threshold): then the box moves just enough to
    cover the body, and a body longer than one output gets boxes spread evenly over it. (Moving
    the box further, e.g. centring it on the body, puts zero-filled voxels into a box that had
    none and changes the network's answer.)
    """
    out = size - 2 * margin
    start = centred_start(length, size)
    lo, hi = body
    if lo >= start + margin and hi < start + margin + out:
        return [start]
    extent = hi - lo + 1
    if extent <= out:
        return [lo - margin if lo < start + margin else hi + 1 - out - margin]
    count = math.ceil(extent / out)
    first, last = lo - margin, hi + 1 - out - margin
    return sorted({round(first + k * (last - first) / (count - 1)) for k in range(count)})


def fill_uncovered(values: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Voxels outside the covered box (the boxes' outputs; a box on every axis) take the value of
    the nearest covered voxel, as the original fills the rim its one box does not reach."""
    index = []
    for axis in range(values.ndim):
        hit = np.flatnonzero(covered.any(axis=tuple(a for a in range(values.ndim) if a != axis)))
        index.append(np.clip(np.arange(values.shape[axis]), hit[0], hit[-1]))
    return values[np.ix_(*index)]


# A face of the volume at least this much body is a field of view cut through the patient.
CUT_FACE_SHARE = 0.05
NOT_CONTINUED = ((False, False),) * 3


def cut_faces(body: np.ndarray, axes=(0, 1)) -> tuple[tuple[bool, bool], ...]:
    """(first end, last end) of each axis of `body` (bool, RAS) where the volume cuts through the
    patient: at least CUT_FACE_SHARE of that face is body. Only the in-plane axes (RAS x and y)
    are looked at: every CT ends in z, and the network learned those ends with zero beyond them,
    while a reconstruction whose field of view cuts the body in-plane is what it never saw."""
    faces = []
    for axis in range(body.ndim):
        if axis not in axes:
            faces.append((False, False))
            continue
        first, last = np.take(body, 0, axis=axis), np.take(body, body.shape[axis] - 1, axis=axis)
        faces.append((bool(first.mean() >= CUT_FACE_SHARE), bool(last.mean() >= CUT_FACE_SHARE)))
    return tuple(faces)


def cut_patch(array: np.ndarray, start, size, continued=NOT_CONTINUED) -> np.ndarray:
    """The box of `size` at `start`, float32. Where it reaches outside the array it is zero (water,
    as the original fills it), except past the ends marked in `continued` ((first, last) per axis,
    cut_faces), where the array's end slice is repeated: the body goes on there, and continuing it
    is closer to a whole patient than water is."""
    box = np.zeros(tuple(size), dtype=np.float32)
    source, target = [], []
    for s, n, length, (first, last) in zip(start, size, array.shape, continued):
        index = np.arange(s, s + n)
        keep = np.ones(n, dtype=bool)
        if not first:
            keep &= index >= 0
        if not last:
            keep &= index < length
        if not keep.any():
            return box
        source.append(np.clip(index[keep], 0, length - 1))
        target.append(np.flatnonzero(keep))
    box[np.ix_(*target)] = array[np.ix_(*source)]
    return box


def paste_output(total: np.ndarray, count: np.ndarray, output: np.ndarray, start) -> None:
    """Add a patch's output at `start` (x, y, z voxels) into `total`, counting the covered voxels."""
    src, dst = [], []
    for s, n, length in zip(start, output.shape, total.shape):
        a, b = max(s, 0), min(s + n, length)
        if b <= a:
            return
        dst.append(slice(a, b))
        src.append(slice(a - s, b - s))
    total[tuple(dst)] += output[tuple(src)]
    count[tuple(dst)] += 1
