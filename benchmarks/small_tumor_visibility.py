"""Which small tumors can be seen at all, and which ones the models miss (issue 8 diagnosis).

For every tumor of the held-out small-tumor test set (evaluation/test_sets.py small_tumor_test_set, never
trained on) this measures what a reader has to go on: the tumor's local contrast (median HU
inside minus the median of a 2-6 mm ring of liver around it), the ring's noise (robust sigma),
their ratio (contrast-to-noise, CNR), the slice spacing and the distance to the first or last
slice of the scan; and whether the shipped default model and the two threshold floors (fitted on
the K = 7 training set of seed 0, as in method_changes.py) find it. Recall is then tabulated by
size and CNR band, so a miss can be told apart from a tumor nobody could see. Last, the same
table for the shipped model's own training phantoms (scripts/build_default_model.py, seeds
100-109; the ones it validated on are marked): does it even fit the small tumors it was trained on?

    python benchmarks/small_tumor_visibility.py            # ~2 min on 2 cores -> results/small_tumor_visibility.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

import benchcommon as bc
import small_data as sd
from LiverTumorSegLib.evaluation.test_sets import small_tumor_test_set

CNR_BANDS = ((0.0, 1.0, "CNR < 1"), (1.0, 2.0, "CNR 1-2"), (2.0, float("inf"), "CNR >= 2"))
RING_MM = (2.0, 6.0)


def tumor_visibility(image, labels) -> list[dict]:
    """Per tumor (26-connected component of label 2): size, local contrast, noise, CNR, edge distance."""
    from LiverTumorSegLib.core.lesions import equivalent_diameter_mm, label_lesions
    from LiverTumorSegLib.evaluation.metrics import size_bin

    lab = labels.array
    liver = lab > 0
    spacing = np.asarray(image.spacing_zyx, dtype=float)
    components, count = label_lesions(lab == 2)
    rows = []
    for i, box in enumerate(ndimage.find_objects(components)):
        grow = np.ceil(RING_MM[1] / spacing).astype(int) + 1
        region = tuple(slice(max(s.start - g, 0), s.stop + g) for s, g in zip(box, grow))
        inside = components[region] == i + 1
        distance = ndimage.distance_transform_edt(~inside, sampling=spacing)
        ring = (distance > RING_MM[0]) & (distance <= RING_MM[1]) & liver[region] & (lab[region] != 2)
        hu = image.array[region].astype(np.float32)
        ring_median = float(np.median(hu[ring])) if ring.any() else float("nan")
        contrast = float(np.median(hu[inside]) - ring_median)
        noise = float(1.4826 * np.median(np.abs(hu[ring] - ring_median))) if ring.any() else float("nan")
        diameter = equivalent_diameter_mm(float(inside.sum() * spacing.prod()))
        z = np.nonzero(inside.any(axis=(1, 2)))[0] + region[0].start
        edge_mm = float(min(z.min(), lab.shape[0] - 1 - z.max()) * spacing[0])
        rows.append({"component": i + 1, "diameter_mm": round(diameter, 2), "size_bin": size_bin(diameter),
                     "slice_mm": round(float(spacing[0]), 2), "contrast_hu": round(contrast, 1),
                     "noise_hu": round(noise, 1), "cnr": round(abs(contrast) / max(noise, 1.0), 2),
                     "polarity": "hyper" if contrast > 0 else "hypo", "scan_edge_mm": round(edge_mm, 1)})
    return rows, components


def found_by(pred: np.ndarray, components: np.ndarray, count: int) -> list[bool]:
    hit = np.unique(components[pred & (components > 0)])
    return [bool(i in hit) for i in range(1, count + 1)]


def band(cnr: float) -> str:
    return next(name for lo, hi, name in CNR_BANDS if lo <= cnr < hi)


def tabulate(tumors: list[dict], method: str) -> dict:
    """{size bin: {CNR band: [found, tumors]}} for one method."""
    from LiverTumorSegLib.evaluation.metrics import SIZE_BINS

    table = {b: {name: [0, 0] for _, _, name in CNR_BANDS} for b in SIZE_BINS}
    for t in tumors:
        cell = table[t["size_bin"]][band(t["cnr"])]
        cell[0] += int(t["found"][method])
        cell[1] += 1
    return table


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped default model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=bc.RESULTS_DIR / "small_tumor_visibility.json")
    p.add_argument("--data", type=Path, default=bc.REPO_DIR / "Testing" / "Data")
    args = p.parse_args(argv)
    from LiverTumorSegLib.core.inference import segment
    from LiverTumorSegLib.storage.modelstore import default_model_path, load_model

    bc.set_threads(args.threads)
    start = time.perf_counter()
    config = sd.PRESETS["full"]
    model_path = args.model or default_model_path()
    model = load_model(model_path)
    train = sd.training_sets(0, dict(config, ks=[7]))[7]
    floors = {kind: sd.fit_floor(kind, train)[1] for kind in sd.FLOORS}
    tumors = []
    for case_id, image, labels in small_tumor_test_set(config, args.data):
        liver = labels.array > 0
        rows, components = tumor_visibility(image, labels)
        result = segment(image, liver, model)
        found = {"default_model": found_by(result.tumor.array > 0, components, len(rows))}
        probability = result.probability.array
        for kind, predict in floors.items():
            found[kind] = found_by(predict(image, liver), components, len(rows))
        for j, row in enumerate(rows):
            inside = components == row["component"]
            row.update(case=case_id, max_probability=round(float(probability[inside].max()), 3),
                       found={name: f[j] for name, f in found.items()})
            tumors.append(row)
        print(case_id, [(r["size_bin"], r["cnr"], r["found"]["default_model"]) for r in rows], flush=True)
    fitted = []
    if args.model is None:  # the shipped model's own training phantoms
        from LiverTumorSegLib.data.phantom import PhantomSettings, make_phantom

        for seed in range(100, 110):
            case = make_phantom(seed, PhantomSettings.full(max_slices=96))
            rows, components = tumor_visibility(case.image, case.labels)
            probability = segment(case.image, case.labels.array > 0, model).probability.array
            held_out = f"phantom-{seed}" in model.meta.get("validation_cases", [])
            for row in rows:
                row.update(case=f"phantom-{seed}", role="validation" if held_out else "trained on", max_probability=round(float(probability[components == row["component"]].max()), 3))
                fitted.append(row)
    methods = ["default_model", *sd.FLOORS]
    summary = {m: tabulate(tumors, m) for m in methods}
    out = {**bc.result_header("small_tumor_visibility", "small_tumor_visibility.py", "full", {"threads": args.threads}), "machine": bc.machine(), "model": str(model_path), "model_threshold": model.threshold,
           "floors_fitted_on": [c[0] for c in train], "ring_mm": list(RING_MM),
           "cnr_bands": [name for _, _, name in CNR_BANDS], "recall_by_size_and_cnr": summary, "tumors": tumors,
           "training_phantoms_of_the_shipped_model": fitted,
           "wall_s": round(time.perf_counter() - start, 1)}
    bc.write_json(args.out, out)
    for m in methods:
        print(m, {b: {k: f"{v[0]}/{v[1]}" for k, v in cells.items()} for b, cells in summary[m].items() if any(v[1] for v in cells.values())})
    for row in fitted:
        if row["diameter_mm"] < 12:
            print(row["role"] + ":", row["case"], f"{row['diameter_mm']:.1f} mm, CNR {row['cnr']}, max probability {row['max_probability']}")
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
