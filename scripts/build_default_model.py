"""Rebuild the shipped default model, Resources/Models/default, reproducibly (`make model`).

Training data, all synthetic: full-size abdominal phantoms (phantom.py) and tumors synthesised
into the real abdominal CTs that the `totalsegmentator` source distribution ships
(Testing/Data/totalsegmentator; Hu et al. 2023 recipe). After training, the model is evaluated
on held-out phantoms and held-out synthetic tumors next to the threshold floor; all of it goes
into model.json. Fixed seeds: the same machine gives the same model.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LiverTumorSeg"))

from LiverTumorSegLib.baseline import fit_threshold_baseline  # noqa: E402
from LiverTumorSegLib.cli import make_progress_printer  # noqa: E402
from LiverTumorSegLib.inference import segment  # noqa: E402
from LiverTumorSegLib.metrics import evaluate_case, summarize  # noqa: E402
from LiverTumorSegLib.modelstore import default_model_path, save_model  # noqa: E402
from LiverTumorSegLib.phantom import PhantomSettings, make_phantom  # noqa: E402
from LiverTumorSegLib.synthesis import load_reference_cases, synthesize_tumors  # noqa: E402
from LiverTumorSegLib.training import TrainSettings, train_model  # noqa: E402

DATA = REPO / "Testing" / "Data" / "totalsegmentator"


def phantom_cases(seeds, settings):
    for seed in seeds:
        case = make_phantom(seed, settings)
        yield f"phantom-{seed}", case.image, case.labels


def synthetic_real_cases(seeds):
    for name, image, liver in load_reference_cases(DATA):
        for seed in seeds:
            img, labels, _ = synthesize_tumors(image, liver, seed=seed, n_tumors=(1, 3), radius_mm=(4.0, 20.0), hyper_fraction=0.15)
            yield f"{name}-synth{seed}", img, labels


def evaluate(model, cases, floor):
    rows, floor_rows = [], []
    for _, image, labels in cases:
        liver, truth = labels.array > 0, labels.array == 2
        rows.append(evaluate_case(segment(image, liver, model).tumor.array > 0, truth, image.spacing_zyx))
        floor_rows.append(evaluate_case(floor.segment(image, liver), truth, image.spacing_zyx))
    keep = ("n_cases", "dice_mean", "dice_std", "dice_global", "lesion_f1_mean", "lesion_recall_pooled", "hd95_mm_mean")
    return {"mhpnet": {k: summarize(rows)[k] for k in keep}, "threshold_floor": {k: summarize(floor_rows)[k] for k in keep}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget (default 8)")
    parser.add_argument("--phantoms", type=int, default=10, help="training phantoms (default 10)")
    parser.add_argument("--out", type=Path, default=default_model_path(), help="model folder to (re)write")
    args = parser.parse_args()

    full = PhantomSettings.full(max_slices=96)
    train = list(phantom_cases(range(100, 100 + args.phantoms), full)) + list(synthetic_real_cases((1, 2, 3)))
    settings = TrainSettings(seed=0, minutes=args.minutes, max_steps=100000)
    report, close = make_progress_printer(False)
    t0 = time.perf_counter()
    try:
        model = train_model(train, settings, progress=report)
    finally:
        close()
    print(f"trained in {time.perf_counter() - t0:.0f} s, validation {model.meta['validation']}")

    floor = fit_threshold_baseline([(img, lab.array > 0, lab.array == 2) for _, img, lab in train])
    held_out_phantoms = list(phantom_cases(range(900, 905), full))
    held_out_real = list(synthetic_real_cases((91, 92)))
    model.meta["training_data"] = {
        "phantoms": f"{args.phantoms} full-size phantoms (phantom.py, seeds 100-{99 + args.phantoms}, max 96 slices)",
        "synthetic_tumors_in_real_ct": "totalsegmentator 2.18.0 sdist tests/reference_files CTs (example_ct_sm, "
        "example_ct_dicom) with tumors synthesised by synthesis.synthesize_tumors, seeds 1-3",
        "real_tumors": 0,
    }
    model.meta["held_out_evaluation"] = {
        "phantoms (5, seeds 900-904)": evaluate(model, held_out_phantoms, floor),
        "synthetic tumors in real CT (2 CTs x seeds 91, 92)": evaluate(model, held_out_real, floor),
        "threshold_floor_hu": floor.threshold_hu,
    }
    model.meta["note"] = "Trained on synthetic data only: a starting point. Add your own corrected cases and retrain."

    staging = args.out.parent / f".{args.out.name}-new"
    shutil.rmtree(staging, ignore_errors=True)
    save_model(model, staging)
    if args.out.exists():
        old = args.out.parent / f".{args.out.name}-old"
        shutil.rmtree(old, ignore_errors=True)
        args.out.rename(old)
        staging.rename(args.out)
        shutil.rmtree(old)
    else:
        staging.rename(args.out)
    print(f"default model written to {args.out}")
    print(model.meta["held_out_evaluation"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
