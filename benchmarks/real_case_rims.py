"""Where the real case's truth draws a tumor's edge, half A against half B: for each tumor of at
least 500 mm3, the median smoothed HU of its outermost voxel shell and of the first liver voxels
outside it, placed between the tumor's core (its 25th HU percentile: 0) and the parenchyma (the
median HU of the liver away from tumors: 1). The outline step (core/outline.py) grows lesions to
EDGE_FRACTION of that way; this says how far each half's annotation went. Reports only: nothing is
chosen from it.

    .venv/bin/python benchmarks/real_case_rims.py [--models M ...]   # seconds; results/real_case_rims.json

--models: Retrain model folders (e.g. real_case.py's cached benchmarks/work/real_case/engine*/
retrain_s0_m5_stepsdefault/library/models/v001): for each, how much of B's tumor volume it covers
and how deep inside the truth the voxels it leaves out lie.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
    if not volumes:
        return {"parenchyma_hu": round(parenchyma, 1), "tumors": 0}
    shells, outsides = np.array(shells), np.array(outsides)
    return {"parenchyma_hu": round(parenchyma, 1), "tumors": len(volumes),
            "shell_median": round(float(np.median(shells)), 3),
            "shell_quartiles": [round(float(q), 3) for q in np.percentile(shells, [25, 75])],
            "shell_volume_weighted": round(float(np.average(shells, weights=volumes)), 3),
            "first_outside_median": round(float(np.nanmedian(outsides)), 3)}


def missed_depths(image, labels, model_folder: Path) -> dict:
    """A model's coverage of the tumor volume and the share of what it misses within r mm of the
    truth's edge."""
    from LiverTumorSegLib.core.inference import segment
    from LiverTumorSegLib.storage.modelstore import load_model

    truth = labels.array == 2
    depth = ndimage.distance_transform_edt(truth, sampling=image.spacing_zyx)
    predicted = segment(image, labels.array > 0, load_model(model_folder)).tumor.array > 0
    missed = depth[truth & ~predicted]
    return {"model": str(model_folder), "covered": round(float((truth & predicted).sum() / truth.sum()), 3),
            "missed_within_mm": {f"{r:g}": round(float((missed <= r).mean()), 3) for r in (1.5, 3.0, 4.5, 6.0)},
            "truth_within_3mm": round(float((depth[truth] <= 3.0).mean()), 3)}


def main(argv=None) -> dict:
    from LiverTumorSegLib.evaluation.real_case import find_real_case, read_real_case, split_halves

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, nargs="*", default=[])
    args = parser.parse_args(argv)
    bc.set_threads(1)
    image, labels = read_real_case(*find_real_case(fetch_case(bc.WORK_DIR / "real_case_data")))
    halves = split_halves(image, labels)
    result = {"halves": {name: rims(*half) for name, half in halves.items()},
              "missed_on_B": [missed_depths(*halves["B"], folder) for folder in args.models]}
    for name, row in result["halves"].items():
        print(name, row)
    for row in result["missed_on_B"]:
        print("B", row)
    bc.write_json(bc.RESULTS_DIR / "real_case_rims.json",
                  {**bc.result_header("real_case_rims", "real_case_rims.py", "full", {"min_tumor_mm3": MIN_TUMOR_MM3}), **result})
    return result


if __name__ == "__main__":
    main()
