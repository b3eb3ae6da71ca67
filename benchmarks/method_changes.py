"""Method changes, one at a time: what each did to the held-out numbers (issue 4 asks for this).

One training set (K tumors of the small-data protocol, one seed), a fixed step count (so the
comparison does not depend on machine load), one held-out phantom test set; each variant is
trained once and evaluated with and without each post-processing step. Variants:

    plain               the engine's defaults without synthetic copies (training on the given cases only)
    polarity_flip_0.25  plain, with patches mirrored about the liver level with probability 0.25
    synthetic_copies_1  one synthetic variant per training case (synthesis.synthetic_copy): the default

Post-processing evaluated for each: the model's own threshold (chosen on validation) with and
without dropping thin liver-surface slivers (lesions.drop_surface_slivers). Recall is also split
by tumor polarity (hypodense: darker than the liver median; hyperdense: brighter).
Writes <out>/method_changes.json.

    python benchmarks/method_changes.py                  # about 5 min on 2 cores
    python benchmarks/method_changes.py --tiny --out /tmp/x   # seconds, for the test suite
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import benchcommon as bc
import small_data as sd

# name: (PatchSettings changes, TrainSettings changes)
VARIANTS = {
    "plain": ({}, {"synthetic_copies": 0}),
    "polarity_flip_0.25": ({"polarity_flip": 0.25}, {"synthetic_copies": 0}),
    "synthetic_copies_1": ({}, {"synthetic_copies": 1}),
}
PRESETS = {
    "full": dict(phantom="medium", k=7, seed=0, steps=500, test_cases=10, test_min_tumors=30, patch_size=None),
    "tiny": dict(phantom="small", k=2, seed=0, steps=2, test_cases=1, test_min_tumors=1, patch_size=16),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="smoke-test version for Testing/test_benchmarks.py")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results (results/tiny for --tiny)")
    p.add_argument("--work", type=Path, default=None, help="unused; accepted like the other scripts")
    return p.parse_args(argv)


def polarity_recall(pred: np.ndarray, labels: np.ndarray, image) -> dict:
    """Found / total tumors by polarity (a tumor is found when the prediction overlaps it)."""
    from scipy import ndimage

    from LiverTumorSegLib.lesions import label_lesions

    liver = labels > 0
    components, count = label_lesions(labels == 2)
    median = float(np.median(image.array[liver & (labels != 2)]))
    out = {"hypodense": [0, 0], "hyperdense": [0, 0]}
    means = ndimage.mean(image.array, components, range(1, count + 1)) if count else []
    hits = ndimage.maximum(pred, components, range(1, count + 1)) if count else []
    for mean, hit in zip(means, hits):
        kind = "hyperdense" if mean > median else "hypodense"
        out[kind][0] += int(bool(hit))
        out[kind][1] += 1
    return out


def run_variant(name: str, changes: tuple, train_cases: list, tests: list, config: dict) -> dict:
    from LiverTumorSegLib.inference import mask_from_probability, segment
    from LiverTumorSegLib.metrics import evaluate_case, summarize
    from LiverTumorSegLib.patches import PatchSettings
    from LiverTumorSegLib.training import TrainSettings, train_model

    extra = {"patch_size": config["patch_size"]} if config["patch_size"] else {}
    patch_changes, train_changes = changes
    settings = TrainSettings(seed=config["seed"], minutes=600.0, max_steps=config["steps"], **extra, **train_changes)
    settings.patches = replace(PatchSettings(size=settings.patch_size), **patch_changes)
    t = time.perf_counter()
    model = train_model([(cid, img, lab) for cid, img, lab, _ in train_cases], settings)
    out = {"variant": name, "patch_changes": patch_changes, "train_changes": train_changes, "steps": model.meta["steps"], "threshold": model.threshold,
           "validation_dice": model.meta["validation"].get("dice"), "train_s": round(time.perf_counter() - t, 1)}
    rows = {True: [], False: []}
    polarity = {True: {"hypodense": [0, 0], "hyperdense": [0, 0]}, False: {"hypodense": [0, 0], "hyperdense": [0, 0]}}
    for case_id, image, labels in tests:
        liver, truth = labels.array > 0, labels.array == 2
        probability = segment(image, liver, model).probability.array
        for slivers in (True, False):
            pred = mask_from_probability(probability, liver, model.threshold, image.spacing_zyx, model.min_lesion_mm3,
                                         drop_slivers=slivers)
            rows[slivers].append(evaluate_case(pred, truth, image.spacing_zyx))
            for kind, (found, total) in polarity_recall(pred, labels.array, image).items():
                polarity[slivers][kind][0] += found
                polarity[slivers][kind][1] += total
    for slivers in (True, False):
        s = summarize(rows[slivers])
        out["drop_slivers" if slivers else "keep_slivers"] = {
            **{k: s[k] for k in ("dice_mean", "dice_global", "lesion_f1_mean", "lesion_precision_pooled",
                                 "lesion_recall_pooled", "hd95_mm_mean", "recall_by_size")},
            "recall_by_polarity": {k: {"found": f, "tumors": n} for k, (f, n) in polarity[slivers].items()},
        }
    bc.log(f"{name}: threshold {model.threshold}, " + ", ".join(
        f"{key} Dice {out[key]['dice_mean']:.3f} F1 {out[key]['lesion_f1_mean']:.3f}" for key in ("drop_slivers", "keep_slivers")))
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    preset = "tiny" if args.tiny else "full"
    config = dict(PRESETS[preset])
    threads = bc.set_threads(args.threads)
    out_dir = args.out or bc.results_dir(preset)
    start = time.perf_counter()
    protocol = {**sd.PRESETS["full"], "phantom": config["phantom"], "ks": [config["k"]],
                "test_cases": config["test_cases"], "test_min_tumors": config["test_min_tumors"]}
    train_cases = sd.training_sets(config["seed"], protocol)[config["k"]]
    tests = sd.phantom_test_set(protocol)
    variants = [run_variant(name, changes, train_cases, tests, config) for name, changes in VARIANTS.items()]
    result = {**bc.result_header("method_changes", "method_changes.py", preset, config),
              "torch_threads": threads, "machine": bc.machine(), "test_set": sd.describe_set(tests),
              "training_cases": [c[0] for c in train_cases], "variants": variants,
              "wall_s": round(time.perf_counter() - start, 1)}
    out_dir.mkdir(parents=True, exist_ok=True)
    bc.write_json(out_dir / "method_changes.json", result)
    bc.log(f"wrote {out_dir / 'method_changes.json'}")
    return result


if __name__ == "__main__":
    main()
