"""Where the real case's truth draws a tumor's edge, half A against half B: for each tumor of at
least 500 mm3, the median smoothed HU of its outermost voxel shell and of the first liver voxels
outside it, placed between the tumor's core (its 25th HU percentile: 0) and the parenchyma (the
median HU of the liver away from tumors: 1). The outline step (core/outline.py) grows lesions to
EDGE_FRACTION of that way; this says how far each half's annotation went. Reports only: nothing is
chosen from it.

    .venv/bin/python benchmarks/real_case_rims.py       # seconds; writes results/real_case_rims.json
"""

from __future__ import annotations

import sys

import numpy as np
from scipy import ndimage

import benchcommon as bc
from real_case import fetch_case

MIN_TUMOR_MM3 = 500.0
SMOOTH_MM = 1.0


def rims(image, labels) -> dict:
    from LiverTumorSegLib.core.lesions import label_lesions

    hu = ndimage.gaussian_filter(image.array.astype(np.float32), [SMOOTH_MM / s for s in image.spacing_zyx])
    liver, tumor = labels.array > 0, labels.array == 2
    parenchyma = float(np.median(hu[liver & ~ndimage.binary_dilation(tumor, iterations=3)]))
    components, count = label_lesions(tumor)
    volumes, shells, outsides = [], [], []
    for i in range(1, count + 1):
        mask = components == i
        volume = float(mask.sum()) * image.voxel_volume_mm3
        if volume < MIN_TUMOR_MM3:
            continue
        core = float(np.percentile(hu[mask], 25))
        shell = mask & ~ndimage.binary_erosion(mask)
        outside = ndimage.binary_dilation(mask) & ~mask & liver
        volumes.append(volume)
        shells.append((float(np.median(hu[shell])) - core) / (parenchyma - core))
        outsides.append((float(np.median(hu[outside])) - core) / (parenchyma - core) if outside.any() else np.nan)
    shells, outsides = np.array(shells), np.array(outsides)
    return {"parenchyma_hu": round(parenchyma, 1), "tumors": len(volumes),
            "shell_median": round(float(np.median(shells)), 3),
            "shell_quartiles": [round(float(q), 3) for q in np.percentile(shells, [25, 75])],
            "shell_volume_weighted": round(float(np.average(shells, weights=volumes)), 3),
            "first_outside_median": round(float(np.nanmedian(outsides)), 3)}


def main() -> dict:
    from LiverTumorSegLib.evaluation.real_case import find_real_case, read_real_case, split_halves

    image, labels = read_real_case(*find_real_case(fetch_case(bc.WORK_DIR / "real_case_data")))
    result = {name: rims(*half) for name, half in split_halves(image, labels).items()}
    for name, row in result.items():
        print(name, row)
    bc.write_json(bc.RESULTS_DIR / "real_case_rims.json",
                  {**bc.result_header("real_case_rims", "real_case_rims.py", "full", {"min_tumor_mm3": MIN_TUMOR_MM3}), "halves": result})
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
