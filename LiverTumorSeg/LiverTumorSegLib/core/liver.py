"""Finding the liver in a CT with the bundled liver network (liver_network.py), the original's
pipeline (pyliverlesionseg 0.3) less its body-crop step, which cut the liver dome on real CTs:

1. the CT in HU resampled to 1.5 mm (box-averaged, liver_grid.zoom3d), median-filtered over
   3 x 3 x 3 voxels, resampled to 3 mm, turned into a RAS (x, y, z) array, then
   clip(HU / 1000, -0.2, 0.2) * 2.5;
2. the network on a 189 x 162 x 162 box (zero outside the CT, except past a side where the
   field of view cuts through the body in-plane: the body's edge goes on there) whose 163 x 136 x 136 output is
   centred on the volume, as the original places it; moved, or repeated, only where its output
   would miss part of the body (liver_grid.axis_starts); the rim no box reaches takes the nearest
   value, as in the original;
3. probability > 0.5, eroded once (3 x 3 x 3 less corners), the largest 6-connected component,
   dilated back; nothing left after the erosion = no liver;
4. back to the CT's grid by linear interpolation with the corner voxels aligned, >= 0.5.

`find_liver` does not judge the result: liver_checks.find_plausible_liver checks it and refuses
an implausible one (InputError).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage, sparse

from ..volume import Volume
from . import liver_grid
from .median3 import median3

NETWORK_MM = 3.0  # the grid the network was trained on (the HDF5 header's voxel_size)
MEDIAN_MM = 1.5  # the grid of the median filter
INPUT_SIZE = (189, 162, 162)  # network input box, RAS (x, y, z) voxels at 3 mm
MARGIN = 13  # voxels at each end of an axis that the output lacks
THRESHOLD = 0.5
# Above this is body (covering a CT longer than one output box; sides that cut through the body):
# the network input is clipped at -200 HU, the lowest level it can tell from air.
BODY_HU = -200.0
# Peak memory: the network's activations on one box, float32 copies on the 1.5 mm grid, bytes per
# CT voxel; rounded up from benchmarks/liver.py (2.72 GB process peak on 512 x 512 x 200: estimated 3.3).
NETWORK_BYTES = 2.8e9
BYTES_PER_FINE_VOXEL = 16.0
BYTES_PER_CT_VOXEL = 6.0


@dataclass
class LiverFound:
    """A liver found by `find_liver`.

    mask: uint8 Volume on the CT's grid (1 = liver). probability: the network's output on the
    3 mm RAS (x, y, z) grid (float32). grid_mask: the post-processed mask
    on that grid. seconds: time per stage.
    """

    mask: Volume
    probability: np.ndarray
    grid_mask: np.ndarray
    seconds: dict = field(default_factory=dict)

    @property
    def volume_ml(self) -> float:
        return float(np.count_nonzero(self.mask.array)) * self.mask.voxel_volume_mm3 / 1000.0


def peak_bytes(shape_zyx, spacing_zyx) -> float:
    """Estimated peak memory (bytes) of `find_liver` on a CT of this shape and spacing (mm)."""
    fine = float(np.prod([max(1.0, n * s / MEDIAN_MM) for n, s in zip(shape_zyx, spacing_zyx)]))
    return NETWORK_BYTES + BYTES_PER_FINE_VOXEL * fine + BYTES_PER_CT_VOXEL * float(np.prod(shape_zyx))


def network_input(ct: Volume, workers: int = 1) -> tuple[np.ndarray, liver_grid.RasFrame]:
    """The CT (HU) as the network sees it: RAS (x, y, z) at 3 mm, values in [-0.5, 0.5].
    `workers`: threads for the median filter (core.median3: scipy's median_filter, exactly)."""
    frame = liver_grid.ras_frame(ct)
    # Resampling and the median treat every axis alike and either direction alike, so they run on
    # the CT's own (z, y, x) array (contiguous: fast) and only the 3 mm result is reoriented.
    fine = liver_grid.zoom3d(ct.array, np.asarray(ct.spacing_zyx) / MEDIAN_MM)
    fine = median3(fine, workers)
    coarse = liver_grid.zoom3d(fine, [MEDIAN_MM / NETWORK_MM] * 3)
    image = np.ascontiguousarray(liver_grid.to_ras(coarse, frame))
    return np.clip(image / 1000.0, -0.2, 0.2) * 2.5, frame


def body_extent(image: np.ndarray, axis: int) -> tuple[int, int]:
    """First and last voxel along `axis` where any voxel is body (input value above BODY_HU);
    the whole axis when none is."""
    other = tuple(a for a in range(3) if a != axis)
    hit = np.flatnonzero(body_of(image).any(axis=other))
    return (int(hit[0]), int(hit[-1])) if hit.size else (0, image.shape[axis] - 1)


def body_of(image: np.ndarray) -> np.ndarray:
    """Body voxels (above BODY_HU) of a network input (RAS, 3 mm)."""
    return image > np.clip(BODY_HU / 1000.0, -0.2, 0.2) * 2.5


def patches(image: np.ndarray) -> list[liver_grid.Patch]:
    """The network boxes that cover `image` (RAS, 3 mm): one for a CT that fits in an output."""
    starts = [
        liver_grid.axis_starts(image.shape[a], body_extent(image, a), INPUT_SIZE[a], MARGIN) for a in range(3)
    ]
    return [liver_grid.Patch((x, y, z), INPUT_SIZE, MARGIN) for x in starts[0] for y in starts[1] for z in starts[2]]


def liver_probability(network, image: np.ndarray, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The network's liver probability over `image` (RAS, 3 mm): boxes averaged where they
    overlap, the nearest value where none looked. Past a side where the CT's field of view cuts
    through the body the boxes continue the body instead of filling water (liver_grid.cut_faces)."""
    import torch

    boxes = patches(image)
    continued = liver_grid.cut_faces(body_of(image))
    total = np.zeros(image.shape, dtype=np.float32)
    count = np.zeros(image.shape, dtype=np.uint8)
    for i, box in enumerate(boxes):
        if progress is not None:
            progress(i, len(boxes))
        x = torch.from_numpy(liver_grid.cut_patch(image, box.start, box.size, continued))[None, None]
        with torch.inference_mode():
            out = network(x)[0, 0].numpy()
        liver_grid.paste_output(total, count, out, box.output_start)
    if progress is not None:
        progress(len(boxes), len(boxes))
    return liver_grid.fill_uncovered(np.divide(total, count, out=np.zeros_like(total), where=count > 0), count > 0)


def clean_mask(probability: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Threshold, erode once, keep the largest 6-connected part, dilate once (bool, same grid).
    Empty when nothing survives the erosion (the original then kept the background)."""
    ball = ndimage.generate_binary_structure(3, 2)
    eroded = ndimage.binary_erosion(probability > threshold, structure=ball)
    labels, count = ndimage.label(eroded, structure=ndimage.generate_binary_structure(3, 1))
    if count == 0:
        return np.zeros(probability.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_dilation(labels == int(np.argmax(sizes)), structure=ball)


def corner_aligned_matrix(n_out: int, n_in: int) -> sparse.csr_matrix:
    """(n_out, n_in) linear interpolation with the first and last voxels aligned
    (scipy.ndimage.zoom's default grid): output o reads input o * (n_in - 1) / (n_out - 1)."""
    if n_in == 1 or n_out == 1:
        return sparse.csr_matrix(np.ones((n_out, n_in)) / n_in)
    position = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
    left = np.minimum(np.floor(position).astype(int), n_in - 2)
    frac = position - left
    rows = np.concatenate([np.arange(n_out), np.arange(n_out)])
    cols = np.concatenate([left, left + 1])
    return sparse.csr_matrix((np.concatenate([1 - frac, frac]), (rows, cols)), shape=(n_out, n_in))


def to_ct_grid(grid_mask: np.ndarray, shape_ras: tuple[int, int, int]) -> np.ndarray:
    """The 3 mm mask (RAS) on the CT's RAS array shape: linear interpolation, corners aligned,
    >= 0.5 (the original's ndimage.zoom(order=1) into int16 and > 0). Only the output rows that
    can reach the mask are computed."""
    out = np.zeros(shape_ras, dtype=bool)
    if not grid_mask.any():
        return out
    box = ndimage.find_objects(grid_mask.astype(np.uint8))[0]
    part = grid_mask.astype(np.float64)
    regions = []
    for axis, (n_in, n_out) in enumerate(zip(grid_mask.shape, shape_ras)):
        matrix = corner_aligned_matrix(n_out, n_in)
        lo, hi = max(box[axis].start - 1, 0), min(box[axis].stop + 1, n_in)
        reach = np.flatnonzero(np.asarray(matrix[:, lo:hi].sum(axis=1)).ravel() > 0)
        rows = slice(int(reach[0]), int(reach[-1]) + 1)
        regions.append(rows)
        sub = matrix[rows]
        moved = np.moveaxis(part, axis, 0)
        flat = moved.reshape(moved.shape[0], -1)
        part = np.moveaxis((sub @ flat).reshape((sub.shape[0],) + moved.shape[1:]), 0, axis)
    out[tuple(regions)] = part >= 0.5
    return out


def find_liver(
    ct: Volume,
    network,
    progress: Callable[[dict], None] | None = None,
) -> LiverFound:
    """The liver in a CT (HU): network input, probability, cleaned mask on the CT's grid.

    `network` is core.liver_network.LiverUNet (load_liver_network). No plausibility checks here:
    see liver_checks.check_liver. `progress` gets {"stage": "liver", "step", "total"}.
    """
    seconds = {}
    start = time.perf_counter()
    import torch

    image, frame = network_input(ct, workers=torch.get_num_threads())
    seconds["preprocess"] = time.perf_counter() - start

    def report(i, n):
        if progress is not None:
            progress({"stage": "liver", "step": i, "total": n, "elapsed_s": time.perf_counter() - start})

    t = time.perf_counter()
    probability = liver_probability(network, image, report)
    seconds["network"] = time.perf_counter() - t
    t = time.perf_counter()
    grid_mask = clean_mask(probability)
    shape_ras = liver_grid.to_ras(ct.array, frame).shape
    mask = liver_grid.from_ras(to_ct_grid(grid_mask, shape_ras).astype(np.uint8), frame)
    seconds["postprocess"] = time.perf_counter() - t
    return LiverFound(ct.with_array(mask), probability, grid_mask, seconds)
