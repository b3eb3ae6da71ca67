"""Abdominal CT phantoms with known truth, for tests, demos and benchmarks.

Each case is a portal-venous abdomen built in a body frame (mm; origin at the body centre, x to
the patient's left, y posterior, z superior: LPS) and sampled on a grid whose array axes are
(z, y, x). What it holds and why:

- body outline, subcutaneous fat, abdominal wall and back muscles, spine, ribs, lung bases;
- liver with per-case enhancement (90-130 HU) and a smooth texture, branching bright vessels
  (portal and hepatic trees, 150-250 HU), the IVC and gallbladder notched into it;
- distractors a naive HU rule confuses with tumors: gallbladder and hepatic cysts (0-20 HU, sharp;
  cysts lie INSIDE the liver and are labelled liver), kidneys, spleen, stomach and bowel with
  air and fluid, partial volume at the liver edge;
- tumors 5-80 mm, lobulated deformed ellipsoids with blurred edges: mostly hypodense (30-90 HU
  below the liver), some necrotic or rim-enhancing, some hyperdense;
- a Gaussian point-spread function and correlated noise (10-25 HU).

Labels: 0 background, 1 liver (vessels and cysts included), 2 tumor. Every tumor in `tumors` is
exactly one 26-connected component of label 2. Everything is drawn from one numpy Generator, so
a seed gives the same case bit for bit.

The parts: phantom_settings (the ranges), phantom_canvas (grid, image and labels being painted),
phantom_anatomy (the organs), phantom_lesions (tumors and cysts); this module puts them together,
adds the scanner's blur and noise and writes case folders.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..volume import Volume
from .phantom_anatomy import draw_grid_and_body, paint_anatomy
from .phantom_canvas import Canvas
from .phantom_lesions import liver_depth_map, place_cysts, place_tumors
from .phantom_settings import AIR_HU, HU_CLIP, PhantomSettings

# PhantomSettings: where callers import it from
__all__ = ["PhantomCase", "PhantomSettings", "case_seeds", "make_phantom", "write_phantom_cases"]


@dataclass
class PhantomCase:
    image: Volume  # int16 HU
    labels: Volume  # uint8: 0 background, 1 liver, 2 tumor
    tumors: list[dict] = field(default_factory=list)
    seed: int = 0


def make_phantom(seed: int, settings: PhantomSettings | None = None) -> PhantomCase:
    """One abdominal CT (int16 HU) with labels 0/1/2 and the list of tumors it holds.

    Tumor dicts: center (voxel index z, y, x), center_lps (mm), radius_mm (mean semi-axis before
    deformation), diameter_mm (equivalent sphere of the labelled voxels), kind, contrast_hu
    (tumor core minus liver, HU), voxels, volume_ml.
    """
    settings = settings or PhantomSettings()
    rng = np.random.default_rng(seed)
    grid, body = draw_grid_and_body(rng, settings)
    canvas = Canvas(
        grid,
        np.full(grid.shape, AIR_HU, np.float32),
        np.zeros(grid.shape, np.uint8),
        np.zeros(grid.shape, bool),
    )
    liver_hu = rng.uniform(*settings.liver_hu)
    vessel_hu = rng.uniform(*settings.vessel_hu)

    liver_box = paint_anatomy(rng, canvas, body, liver_hu, vessel_hu)
    depth_map = liver_depth_map(canvas, liver_box)
    tumors = place_tumors(rng, canvas, settings, liver_box, depth_map, liver_hu)
    place_cysts(rng, canvas, settings, liver_box, depth_map)

    hu = _image_formation(rng, canvas, settings)
    origin = (grid.start[2], grid.start[1], grid.start[0])
    spacing = (grid.spacing[2], grid.spacing[1], grid.spacing[0])
    image = Volume(hu, spacing, origin)
    labels = Volume(canvas.labels, spacing, origin)
    for t in tumors:
        t["center_lps"] = [round(float(v), 2) for v in image.index_to_lps(np.asarray([t["center"]]))[0]]
    return PhantomCase(image, labels, tumors, seed)


def _gaussian_kernel_norm(sigma: float) -> float:
    """sqrt(sum w^2) of scipy's discrete Gaussian: how much white noise std a 1D pass keeps."""
    if sigma <= 0:
        return 1.0
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    return float(np.sqrt(np.sum(w**2)))


def _image_formation(rng: np.random.Generator, c: Canvas, s: PhantomSettings) -> np.ndarray:
    """Scanner blur (Gaussian PSF, mm) applied to anatomy plus white noise: correlated noise, int16 HU."""
    psf = rng.uniform(*s.psf_mm)
    sigma = [0.4, psf / c.grid.spacing[1], psf / c.grid.spacing[2]]
    noise_hu = rng.uniform(*s.noise_hu)
    keep = float(np.prod([_gaussian_kernel_norm(v) for v in sigma]))
    img = c.img
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise_hu / keep)
    ndimage.gaussian_filter(img, sigma, output=img)
    np.clip(img, *HU_CLIP, out=img)
    return np.rint(img).astype(np.int16)


# ---- writing cases -----------------------------------------------------------------------------

def case_seeds(seed: int, n_cases: int) -> list[int]:
    """Independent per-case seeds: runs with different `seed` never share a case."""
    return [int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(n_cases)]


def write_phantom_cases(out_dir: str | os.PathLike, n_cases: int, seed: int, settings: PhantomSettings | None = None) -> list[Path]:
    """Write `n_cases` phantom case folders (image.nrrd, label.nrrd, case.json) under `out_dir`.

    Folders are named phantom-000, phantom-001, ...; an existing folder is never replaced.
    """
    from ..storage.library import case_summary, now_iso, write_case_folder

    settings = settings or PhantomSettings()
    out_dir = Path(out_dir)
    folders = []
    for i, case_seed in enumerate(case_seeds(seed, n_cases)):
        case = make_phantom(case_seed, settings)
        case_id = f"phantom-{i:03d}"
        meta = {
            "id": case_id,
            "source": f"phantom (seed {seed}, case {i}, case seed {case_seed})",
            "created": now_iso(),
            **case_summary(case.labels),
            "notes": "synthetic abdominal CT with known truth",
            "spacing_mm": list(case.image.spacing),
            "shape_zyx": list(case.image.shape),
            "seed": case_seed,
            "tumors": case.tumors,
            "settings": asdict(settings),
        }
        write_case_folder(out_dir / case_id, case.image, case.labels, meta)
        folders.append(out_dir / case_id)
    return folders
