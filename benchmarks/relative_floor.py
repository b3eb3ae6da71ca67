"""The floor relative to each CT's liver (core/relative_floor.py): how its settings were chosen and
what it does where the real case cannot show it.

`--part choice` (seconds): the shipped default model, each CT segmented once, then the floor's
untouched lesions added for a grid of offsets (HU below the liver) and elongation caps, on the
tumor-free real CTs of Testing/Data (true liver) and on the real case's half A and its two halves
A1 and A2. The rule, fixed before looking: of the settings that add no lesion in the
tumor-free contrast CT (example_ct_dicom; example_ct_sm is unenhanced, where the floor is off:
its row shows what the floor would add without that gate), the best lesion recall on A at lesion
precision >= 0.8, ties to the fewer false lesions on A. B and the whole case are
never read here: benchmarks/real_case.py reports them.

`--part retrain` (a minute): the development Retrains of `real_case.py --develop` (A1 -> A2 and
A2 -> A1), each scored with its fitted floor only and as the product runs it (then the relative
floor). The rule, fixed before looking: keep the relative floor after the fitted one if the 5-10 mm
tumors found on A2 rise in both seeds, false lesions rise by at most one per run and no run loses
more than 0.01 Dice.

`--part synthetic` (about 2 minutes): the default model with and without the floor on the full
protocol's held-out synthetic test sets (phantoms, tumors synthesised into the two real tumor-free
CTs, the small-tumor set), per-case and global Dice, found and lesion precision by size.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/relative_floor.py --part choice retrain synthetic
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np

import benchcommon as bc

SIZES = ("5-10mm", "10-20mm", ">20mm")
OFFSETS_HU = (25.0, 30.0, 35.0, 40.0)
ELONGATIONS = (2.0, 2.5, 3.0, 4.0, None)  # None: no shape rule
DATA = bc.REPO_DIR / "Testing" / "Data" / "totalsegmentator"


def without_floor(model):
    plain = copy.copy(model)
    plain.meta = {k: v for k, v in model.meta.items() if k != "relative_floor"}
    return plain


def choice_cases(real_case: Path):
    """(name, CT, liver, labels or None, gated): the tumor-free real CTs, then A, A1 and A2 (never B).
    gated False: the floor's enhanced-liver gate is switched off (the unenhanced CT, to show what
    the other tests leave there)."""
    from LiverTumorSegLib.evaluation.real_case import find_real_case, read_real_case, split_halves
    from LiverTumorSegLib.storage import images

    for name, ct_name, liver_name, gated in (
            ("tumor-free, unenhanced (example_ct_sm)", "example_ct_sm.nii.gz", "example_ct_sm_liver.nii.gz", False),
            ("tumor-free, contrast (example_ct_dicom)", "example_ct_dicom", "example_ct_dicom_liver.nii.gz", True)):
        ct = images.read_image(DATA / ct_name, keep_integer=True)
        yield name, ct, images.read_liver_mask(DATA / liver_name, reference=ct), None, gated
    halves = split_halves(*read_real_case(*find_real_case(real_case)))
    inner = split_halves(*halves["A"])
    for name, (ct, labels) in (("A", halves["A"]), ("A1", inner["A"]), ("A2", inner["B"])):
        yield name, ct, labels.array > 0, labels, True


def measure_choice(real_case: Path) -> dict:
    from real_case import score
    from LiverTumorSegLib.core.inference import segment
    from LiverTumorSegLib.core.lesions import label_lesions
    from LiverTumorSegLib.core.relative_floor import RelativeFloor
    from LiverTumorSegLib.storage.modelstore import default_model_path, load_model

    plain = without_floor(load_model(default_model_path()))
    rows = {}
    for name, ct, liver, labels, gated in choice_cases(real_case):
        ct = ct.with_array(ct.array.astype(np.float32))
        found = segment(ct, liver, plain).tumor.array > 0
        row = {"network": _scored(found, labels, score)}
        for offset in OFFSETS_HU:
            for cap in ELONGATIONS:
                floor = RelativeFloor(below_liver_hu=offset, max_elongation=cap or 1e9,
                                      min_liver_hu=RelativeFloor.min_liver_hu if gated else -1e9)
                added = floor.lesions(ct, liver, found)
                row[f"{offset:g} HU, elongation {cap or 'any'}"] = {"added": label_lesions(added)[1],
                                                                   **_scored(found | added, labels, score)}
        rows[name] = row
        bc.log(f"{name}: network {row['network']}")
    return rows


def _scored(mask, labels, score) -> dict:
    if labels is None:
        from LiverTumorSegLib.core.lesions import label_lesions

        return {"lesions": label_lesions(mask)[1]}
    s = score(mask, labels)
    return {"dice": round(s["dice"], 4), "found": s["found"], "false_lesions": s["false_lesions"],
            "lesion_recall": round(s["lesion_recall"], 4), "lesion_precision": s["lesion_precision"] and round(s["lesion_precision"], 4)}


def measure_synthetic() -> dict:
    from LiverTumorSegLib.core.inference import segment
    from LiverTumorSegLib.evaluation.metrics import evaluate_case, summarize
    from LiverTumorSegLib.evaluation.test_sets import FULL_TEST_SETS, held_out_test_sets
    from LiverTumorSegLib.storage.modelstore import default_model_path, load_model

    model = load_model(default_model_path())
    models = {"without the floor": without_floor(model), "with the floor": model}
    rows = {}
    for set_name, cases in held_out_test_sets(FULL_TEST_SETS, DATA).items():
        scored = {key: [] for key in models}
        for case_id, image, labels in cases:
            liver, truth = labels.array > 0, labels.array == 2
            for key, m in models.items():
                scored[key].append(evaluate_case(segment(image, liver, m).tumor.array > 0, truth, labels.spacing_zyx))
        for key, done in scored.items():
            s = summarize(done)
            rows[f"{set_name}: {key}"] = {"dice_mean": s["dice_mean"], "dice_global": s["dice_global"], "n_cases": s["n_cases"],
                                          "found": {k: s["lesions_by_size"][k] for k in SIZES},
                                          "precision": {k: s["precision_by_size"][k] for k in SIZES},
                                          "false_lesions": int(sum(r["n_pred_lesions"] - r["pred_lesions_matched"] for r in done))}
            bc.log(f"{set_name}, {key}: {rows[f'{set_name}: {key}']}")
    return rows


def measure_retrain(work: Path, real_case: Path) -> dict:
    """Development Retrains (real_case.py --develop) scored on the other half of A with their
    fitted floor only, and as the product runs them (fitted floor, then the relative floor)."""
    from real_case import score
    from LiverTumorSegLib.core import inference
    from LiverTumorSegLib.core.floor import floor_of
    from LiverTumorSegLib.core.relative_floor import floors_of
    from LiverTumorSegLib.evaluation.real_case import find_real_case, read_real_case, split_halves
    from LiverTumorSegLib.storage.modelstore import default_model_path, load_model

    relative = load_model(default_model_path()).meta["relative_floor"]
    halves = split_halves(*split_halves(*read_real_case(*find_real_case(real_case)))["A"])
    rows = {}
    for train, test in (("A1", halves["B"]), ("A2", halves["A"])):
        for folder in sorted(work.glob(f"retrain_{train}_s*_m5_stepsdefault")):
            model = load_model(folder / "library" / "models" / "v001")
            model.meta["relative_floor"] = relative  # models trained before it existed
            for name, floors in (("fitted floor only", lambda m: [floor_of(m)]), ("product", floors_of)):
                inference.floors_of = floors
                try:
                    pred = inference.segment(test[0], test[1].array > 0, model).tumor.array > 0
                finally:
                    inference.floors_of = floors_of
                key = f"{folder.name}: {name}"
                rows[key] = _scored(pred, test[1], score)
                bc.log(f"{key}: {rows[key]}")
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", nargs="+", choices=("choice", "retrain", "synthetic"), default=["choice"])
    p.add_argument("--work", type=Path, default=bc.WORK_DIR / "real_case" / "engine7c3bbb40df",
                   help="for --part retrain: a real_case.py --develop work folder holding retrain_A1_* and retrain_A2_*")
    p.add_argument("--real-case", type=Path, default=bc.REPO_DIR / "build" / "real_case",
                   help="folder with the MRC pair or the package wheel (benchmarks/real_case.py fetches it)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    bc.set_threads(1)
    path = (args.out or bc.results_dir("full")) / "relative_floor.json"
    result = bc.read_json(path) if path.exists() else {}
    result.update(bc.result_header("relative_floor", "relative_floor.py", "full", {"parts": args.part}))
    result["machine"] = bc.machine()
    if "choice" in args.part:
        result["choice"] = measure_choice(args.real_case)
    if "retrain" in args.part:
        result["retrain"] = measure_retrain(args.work, args.real_case)
    if "synthetic" in args.part:
        result["synthetic"] = measure_synthetic()
    bc.write_json(path, result)
    print(f"written to {path}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
