"""Segment tumors in one CT with a trained model: prepare -> network over the liver box -> back to
the CT grid -> the spot pass (spots.py) -> the lesions of the model's floors that the network
left out (floor.py, relative_floor.py) -> each lesion out to its own edge (outline.py) -> threshold inside
the liver -> drop specks -> lesion table.

Why no sliding window: small windows at 50% overlap compute each voxel ~8 times, and one window
per forward pass wastes the CPU. The network is fully convolutional and uses frozen batch-norm
statistics, so it runs over the whole liver box in one pass when that fits in memory, else over
a few large tiles that overlap only by a context halo which is cut away (no blending needed).
Arrays are (z, y, x); probabilities float32 in [0, 1].
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage

from ..errors import InputError
from .lesions import drop_small_lesions, drop_surface_slivers, label_lesions, lesion_table
from .features import prepare_case
from .outline import grow_to_edges
from .relative_floor import floors_of
from .spots import detector_of
from ..volume import Volume

# One pass over at most this many working voxels (about 0.8 GB of activations for MHP-Net).
MAX_TILE_VOXELS = 160**3
# Context kept around each tile's core and then cut away (working voxels, multiple of 8).
TILE_HALO = 16


@dataclass
class SegmentResult:
    """probability: float32 on the CT grid (0 outside the liver); tumor: uint8 1 = tumor;
    lesions: lesions.Lesion list, largest first; timings: seconds per stage."""

    probability: Volume
    tumor: Volume
    lesions: list
    threshold: float
    timings: dict = field(default_factory=dict)


def segment(
    image: Volume,
    liver: np.ndarray | None,
    model,
    threshold: float | None = None,
    progress: Callable[[dict], None] | None = None,
    edges: bool = True,
) -> SegmentResult:
    """Tumor probability, mask and lesion table for a CT in HU. `liver` (bool, CT grid) confines the
    search and makes it fast; None searches the whole image. threshold None = the model's own.
    edges=False leaves the lesions as the network drew them (only to measure what outline.py does)."""
    threshold = float(model.threshold if threshold is None else threshold)
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold {threshold} is outside (0, 1); use e.g. 0.5")
    start = time.perf_counter()
    timings = {}

    def report(stage: str, step: int, total: int) -> None:
        if progress is not None:
            progress({"stage": stage, "step": step, "total": total, "elapsed_s": time.perf_counter() - start})

    report("prepare", 0, 1)
    prepared = prepare_case(image, liver, model.feature_settings)
    timings.update(prepared.timings)
    t = time.perf_counter()
    prob_work = predict_probability(model.network, prepared.features, progress=lambda i, n: report("network", i, n))
    timings["network_s"] = time.perf_counter() - t

    t = time.perf_counter()
    probability = prepared.to_input_grid(prob_work)
    del prob_work
    z0, z1, y0, y1, x0, x1 = prepared.box
    box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
    if liver is not None:
        probability[box] *= liver[box]
    # One voxel beyond the box on every side: the sliver test must see the liver's outside even
    # when the model's margin is 0 (the box is then the liver's own bounding box).
    rim = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(box, probability.shape))
    timings["to_input_grid_s"] = time.perf_counter() - t

    report("postprocess", 0, 1)
    detector = detector_of(model)
    if detector is not None and liver is not None:  # the 10-25 mm spots the network misses (spots.py)
        t = time.perf_counter()
        detector.add_to(probability, image, liver, float(model.threshold), within=box)
        timings["spots_s"] = time.perf_counter() - t
    floors = floors_of(model) if liver is not None else []
    t = time.perf_counter()
    for floor in floors:  # the lesions the network left out: the user's fitted floor, the relative one (floor.py)
        found = mask_from_probability(probability[rim], liver[rim], float(model.threshold), image.spacing_zyx,
                                      model.min_lesion_mm3)
        floor.add_missed_lesions(probability, image, liver, float(model.threshold), rim, found)
    if floors:
        timings["floor_s"] = time.perf_counter() - t
    if edges and liver is not None:  # each lesion out to its own edge in HU (outline.py)
        t = time.perf_counter()
        found = mask_from_probability(probability[rim], liver[rim], float(model.threshold), image.spacing_zyx,
                                      model.min_lesion_mm3)
        sub = Volume(np.asarray(image.array[rim]), image.spacing, image.origin, image.direction)
        grown = grow_to_edges(found, sub, liver[rim])
        local = probability[rim]
        local[grown] = np.maximum(local[grown], np.float32(model.threshold))
        timings["edges_s"] = time.perf_counter() - t
    t = time.perf_counter()
    # The probability is 0 outside the box (liver's or body's), and the threshold is above 0: threshold
    # and clean up around the box only.
    mask = np.zeros(probability.shape, dtype=bool)
    mask[rim] = mask_from_probability(probability[rim], None if liver is None else liver[rim], threshold, image.spacing_zyx,
                                      model.min_lesion_mm3)
    timings["threshold_s"] = time.perf_counter() - t
    t = time.perf_counter()
    lesions = lesions_in_box(mask, image, probability, prepared.box)
    timings["lesions_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - start
    report("done", 1, 1)
    tumor = image.with_array(mask.view(np.uint8))
    return SegmentResult(image.with_array(probability), tumor, lesions, threshold, timings)


def mask_from_probability(
    probability: np.ndarray,
    liver: np.ndarray | None,
    threshold: float,
    spacing_zyx,
    min_lesion_mm3: float,
    drop_slivers: bool = True,
) -> np.ndarray:
    """Tumor mask (bool, same grid): probability >= threshold, inside the liver, 26-connected
    components of at least min_lesion_mm3 kept, thin slivers along the liver surface dropped
    (drop_slivers=False only to measure what that step does).
    Cheap enough for a threshold slider: the component labelling runs only over the bounding
    box of the voxels above threshold, the sliver test on each component's own box."""
    mask = np.asarray(probability) >= threshold
    if liver is not None:
        liver = np.asarray(liver, dtype=bool)
        mask &= liver
    drop_small_lesions(mask, float(np.prod(spacing_zyx)), min_lesion_mm3)
    if liver is not None and drop_slivers:
        drop_surface_slivers(mask, liver, spacing_zyx)
    return mask


def lesions_in_box(mask: np.ndarray, image: Volume, probability: np.ndarray, box) -> list:
    """lesions.lesion_table run lesion by lesion on each one's own bounding box: the same table
    (largest first, ids 1..n), with work and memory that follow the lesions, not the image."""
    z0, z1, y0, y1, x0, x1 = box
    components, count = label_lesions(mask[z0:z1, y0:y1, x0:x1])
    lesions = []
    for i, local in enumerate(ndimage.find_objects(components)):
        sub = tuple(slice(o + s.start, o + s.stop) for o, s in zip((z0, y0, x0), local))
        origin = image.index_to_lps(np.array([[s.start for s in sub]], dtype=float))[0]
        sub_image = Volume(image.array[sub], image.spacing, tuple(origin), image.direction)
        lesions += lesion_table(components[local] == i + 1, sub_image, probability[sub])
    lesions.sort(key=lambda lesion: -lesion.voxels)
    for new_id, lesion in enumerate(lesions, start=1):
        lesion.id = new_id
    return lesions


def predict_probability(
    network,
    features: np.ndarray,
    max_tile_voxels: int = MAX_TILE_VOXELS,
    halo: int = TILE_HALO,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Sigmoid output of the network over a (C, z, y, x) working-grid volume, (z, y, x) float32."""
    import torch

    network.eval()
    multiple = int(getattr(network, "size_multiple", 8))
    shape = features.shape[1:]
    out = np.empty(shape, dtype=np.float32)
    tiles = plan_tiles(shape, max_tile_voxels, halo, multiple)
    with torch.inference_mode():
        fast = _inference_copy(network)
        for i, (core, region) in enumerate(tiles):
            if progress is not None:
                progress(i, len(tiles))
            block, placed = _padded_block(features, region, multiple)
            x = torch.from_numpy(block)[None].contiguous(memory_format=torch.channels_last_3d)
            logits = fast(x)[0, 0]
            prob = torch.sigmoid(logits[placed]).numpy()
            inner = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(core, region))
            out[core] = prob[inner]
    if progress is not None:
        progress(len(tiles), len(tiles))
    return out


def plan_tiles(shape, max_voxels: int, halo: int, multiple: int = 8) -> list:
    """Tiles as (core slices, region slices): cores partition the volume, regions add `halo`
    voxels of context. Picks the tile counts per axis that compute the fewest voxels in total."""
    shape = tuple(int(n) for n in shape)
    if halo % multiple:
        raise ValueError(f"halo {halo} must be a multiple of {multiple}")

    def padded(n):
        return -(-n // multiple) * multiple

    if padded(shape[0]) * padded(shape[1]) * padded(shape[2]) <= max_voxels:
        return [(tuple(slice(0, n) for n in shape), tuple(slice(0, n) for n in shape))]
    best = None
    for counts in itertools.product(range(1, 17), repeat=3):
        # Cores (and so regions, halo being a multiple too) start on the pooling grid, so a tile
        # computes exactly what one pass over the whole volume would.
        cores = [padded(-(-n // k)) for n, k in zip(shape, counts)]
        sizes = [padded(c + (2 * halo if k > 1 else 0)) for c, k in zip(cores, counts)]
        if np.prod(sizes, dtype=np.int64) > max_voxels:
            continue
        cost = int(np.prod(sizes, dtype=np.int64)) * int(np.prod(counts))
        if best is None or cost < best[0]:
            best = (cost, counts, cores)
    if best is None:
        raise InputError("the image is too large to tile; crop it to the liver region first")
    _, counts, cores = best
    per_axis = []
    for n, k, c in zip(shape, counts, cores):
        axis = []
        for j in range(k):
            lo, hi = j * c, min(n, (j + 1) * c)
            if lo < hi:
                axis.append((slice(lo, hi), slice(max(0, lo - halo), min(n, hi + halo))))
        per_axis.append(axis)
    return [tuple(zip(*combo)) for combo in itertools.product(*per_axis)]


def _padded_block(features: np.ndarray, region, multiple: int):
    """The region's features, edge-padded at the end of each axis to a multiple of `multiple`;
    returns the block and the slices where the region sits inside it."""
    block = features[(slice(None),) + tuple(region)]
    pad = [(0, 0)] + [(0, (-(r.stop - r.start)) % multiple) for r in region]
    if any(p[1] for p in pad):
        block = np.pad(block, pad, mode="edge")
    placed = tuple(slice(0, r.stop - r.start) for r in region)
    return np.ascontiguousarray(block, dtype=np.float32), placed


def _inference_copy(network):
    """A copy of the network for inference: batch norm folded into the convolutions and
    channels-last memory layout (about 1.3x faster on CPU); the trained network is untouched."""
    import copy

    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fast = copy.deepcopy(network).eval()
    for module in fast.modules():
        if isinstance(module, torch.nn.Sequential):
            layers = list(module)
            for i in range(len(layers) - 1):
                if isinstance(layers[i], torch.nn.Conv3d) and isinstance(layers[i + 1], torch.nn.BatchNorm3d):
                    module[i] = fuse_conv_bn_eval(layers[i], layers[i + 1])
                    module[i + 1] = torch.nn.Identity()
    return fast.to(memory_format=torch.channels_last_3d)
