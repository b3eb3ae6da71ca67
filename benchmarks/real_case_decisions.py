"""The decisions of Retrain's post-processing, measured on the same networks: inside half A of the
real case (`real_case.py --develop` must have run first: it trains the models), each Retrain
model is scored on the other half of A with its threshold as chosen and at 0.5, with and without
the intensity floor fitted on its training half, with its parent's spot pass or one refitted
on that half, and with each lesion grown out to its own edge (core/outline.py) or as the network
drew it; the shipped default model with and without the outline step beside them. B is never read.

    .venv/bin/python benchmarks/real_case_decisions.py [--work benchmarks/work/real_case/engineXXXX]

Writes results/real_case_decisions.json and prints a table (Dice, 5-10 mm found, false lesions).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import benchcommon as bc
import small_data as sd
from real_case import SIZES, fetch_case, score, splits

VARIANTS = ("as trained", "at 0.5", "at 0.5 + floor", "at 0.5 + floor, spot pass refitted", "at 0.5 + floor + edges")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=None, help="the engine folder of real_case.py's cached runs "
                   "(default: this engine's)")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    p.add_argument("--data", type=Path, default=None, help="folder holding the MRC pair (default: fetched)")
    p.add_argument("--edge-reach", type=float, nargs="*", default=None,
                   help="score the edges variants at each of these reaches (mm) instead of outline.REACH_MM")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def variant_meta(name: str, meta: dict, floor: dict, refitted: dict | None) -> tuple[dict, float | None]:
    """(model meta, threshold or None for the model's own) of one variant; only the last grows the
    lesions to their edges."""
    if name == "as trained":
        return {**meta, "intensity_floor": None}, None
    if name == "at 0.5":
        return {**meta, "intensity_floor": None}, 0.5
    if name in ("at 0.5 + floor", "at 0.5 + floor + edges"):
        return {**meta, "intensity_floor": floor}, 0.5
    return {**meta, "intensity_floor": floor, "spot_detector": refitted}, 0.5


def main(argv=None) -> dict:
    from LiverTumorSegLib.core.floor import fit_intensity_floor
    from LiverTumorSegLib.core.inference import segment
    from LiverTumorSegLib.evaluation.real_case import find_real_case, read_real_case
    from LiverTumorSegLib.storage.modelstore import default_model_path, load_model
    from LiverTumorSegLib.training.spot_fitting import fit_spot_detector, spot_fitting_cases

    from LiverTumorSegLib.core import outline

    args = parse_args(argv)
    bc.set_threads(1)
    reaches = args.edge_reach or [outline.REACH_MM]
    image, labels = read_real_case(*find_real_case(args.data or fetch_case(bc.WORK_DIR / "real_case_data")))
    work = args.work or bc.WORK_DIR / "real_case" / f"engine{sd.engine_hash()}"
    rows = {}
    for train_name, (image_tr, labels_tr), test_name, (image_te, labels_te) in splits(image, labels, develop=True):
        floor = fit_intensity_floor([(image_tr, labels_tr.array > 0, labels_tr.array == 2)])
        refitted = fit_spot_detector(spot_fitting_cases([(train_name, image_tr, labels_tr)], 0))
        default = load_model(default_model_path())
        for reach in [None] + reaches:
            outline.REACH_MM = reach or outline.REACH_MM
            row = score(segment(image_te, labels_te.array > 0, default, edges=bool(reach)).tumor.array > 0, labels_te)
            rows[f"default model, {test_name}: " + (f"edges {reach:g} mm" if reach else "as drawn")] = {**row, "threshold": default.threshold}
        for seed in args.seeds:
            folder = work / f"retrain_{train_name}_s{seed}_m5_stepsdefault" / "library" / "models" / "v001"
            if not (folder / "model.pt").is_file():
                raise SystemExit(f"no model in {folder}: run real_case.py --develop --seeds {' '.join(map(str, args.seeds))} first")
            model = load_model(folder)
            meta, chosen = dict(model.meta), model.threshold
            for name, reach in [(v, None) for v in VARIANTS[:-1]] + [(VARIANTS[-1], r) for r in reaches]:
                model.meta, threshold = variant_meta(name, meta, floor, None if refitted is None else refitted.to_dict())
                model.threshold = chosen if threshold is None else threshold
                outline.REACH_MM = reach or outline.REACH_MM
                row = score(segment(image_te, labels_te.array > 0, model, edges=bool(reach)).tumor.array > 0, labels_te)
                if reach and len(reaches) > 1:
                    name = f"{name} {reach:g} mm"
                rows[f"Retrain on {train_name} (seed {seed}), {test_name}: {name}"] = {**row, "threshold": model.threshold}
                bc.log(f"{train_name} seed {seed} {name}: Dice {row['dice']:.3f}, 5-10 mm {row['found']['5-10mm']}")
    result = {**bc.result_header("real_case_decisions", "real_case_decisions.py", "full", {"seeds": args.seeds, "edge_reach_mm": reaches}),
              "models": str(work), "engine_hash": sd.engine_hash(), "rows": rows}
    path = (args.out or bc.results_dir("full")) / "real_case_decisions.json"
    bc.write_json(path, result)
    print("| model, variant | threshold | Dice | " + " | ".join(SIZES) + " | false lesions |")
    print("|---|---|---|" + "---|" * len(SIZES) + "---|")
    for name, row in rows.items():
        print(f"| {name} | {row['threshold']:.2f} | {row['dice']:.3f} | "
              + " | ".join(f"{row['found'][s][0]} / {row['found'][s][1]}" for s in SIZES) + f" | {row['false_lesions']} |")
    print(f"written to {path}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
