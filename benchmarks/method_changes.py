"""Method changes, one at a time, each paired against the one before it (issue 8: small tumors).

One training set (K tumors of the small-data protocol, one or more seeds), a fixed step count
(so machine load cannot change the result), and the three held-out test sets of small_data.py
(phantoms, tumors synthesised into the real CTs, the small-tumor set), never used to choose
anything. Each variant adds one change to the previous variant (CHAIN order), so the difference
between neighbours is the effect of that one change. Every variant is evaluated by lesion size:
recall and precision for < 5, 5-10, 10-20 and > 20 mm next to per-case Dice, and recall by
polarity (hypodense / hyperdense); the two threshold floors, fitted on the same training cases,
are reported beside them.

Resumable: each finished (variant, seed) is cached under benchmarks/work/method_changes/, keyed
by the preset, the steps and a hash of the engine's source. Writes <out>/method_changes.json.

    python benchmarks/method_changes.py                       # round 1, every variant, seed 0 (2-5 min each on 2 cores)
    python benchmarks/method_changes.py --chain grid --seeds 0 1     # -> method_changes_grid.json
    python benchmarks/method_changes.py --chain retrain --steps 600  # default model, then Retrain on K = 7
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
from LiverTumorSegLib.evaluation.test_sets import held_out_test_sets

# (name, what the step adds, FeatureSettings changes, PatchSettings changes, TrainSettings changes);
# each entry's changes are added to everything above it in its chain.
BASE = ("base", "the engine as of issue 8's start (commit 7c569e2): one synthetic copy per case, 2 mm grid", {}, {}, {})
# Only chains of settings the engine still has: settings measured and not adopted were removed
# from it (benchmarks/RESULTS.md, "Files moved or deleted in issue 22").
CHAINS = {
    # Round 1: the hypotheses that are still settings, in the order they were listed.
    "round1": [
        BASE,
        ("small_synthetic", "synthetic copies skewed to small tumors: 2-4 Hu-recipe tumors of 5-15 mm, 40-120 HU",
         {}, {}, {"synthetic_tumors": (2, 4), "synthetic_radius_mm": (2.5, 7.5), "synthetic_delta_hu": (40.0, 120.0)}),
        ("fine_grid", "1.5 mm working grid, 40^3 patches (same mm of context)",
         {"spacing_mm": 1.5}, {}, {"patch_size": 40}),
    ],
    # The one lever that moved 5-10 mm recall in round 1, alone on the base, on two seeds.
    "grid": [
        BASE,
        ("fine_grid_only", "1.5 mm working grid, 40^3 patches (same mm of context), nothing else changed",
         {"spacing_mm": 1.5}, {}, {"patch_size": 40}),
    ],
    # What a radiologist gets: the shipped default model as it is, then Retrain (fine-tuning it
    # with the engine's defaults: rehearsal phantoms replayed, parent and child scored).
    "retrain": [
        ("default_model", "the shipped default model, no training", {}, {}, {}),
        ("retrain_default", "Retrain: the default model fine-tuned on the K-tumor set with the engine's defaults",
         {}, {}, {}),
        ("retrain_small_synthetic", "the same Retrain with two synthetic copies per case, each with 3-6 sharp-edged "
         "Hu-recipe tumors of 5-15 mm, 40-120 HU (the default model finds none of the 17 clearly visible 5-10 mm tumors)",
         {}, {}, {}),
    ],
}
NO_TRAINING = "default_model"
SMALL_SYNTHETIC = {"synthetic_copies": 2, "synthetic_tumors": (3, 6), "synthetic_radius_mm": (2.5, 7.5),
                   "synthetic_delta_hu": (40.0, 120.0), "synthetic_edge_mm": (0.5, 1.0)}
FINE_TUNES = {"retrain_default": {}, "retrain_small_synthetic": SMALL_SYNTHETIC}
PRESETS = {
    "full": dict(phantom="medium", k=7, seeds=[0], steps=500, test_cases=10, test_min_tumors=30, patch_size=None,
                 ref_variants=2, small_phantoms=8, small_ref_variants=3),
    "tiny": dict(phantom="small", k=2, seeds=[0], steps=2, test_cases=1, test_min_tumors=1, patch_size=16,
                 ref_variants=1, small_phantoms=0, small_ref_variants=1),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="smoke-test version for Testing/test_benchmarks.py")
    p.add_argument("--chain", choices=sorted(CHAINS), default="round1", help="which chain of changes (default round1)")
    p.add_argument("--variants", nargs="+", help="which variants of the chain (default all, in chain order)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (training cases, initialisation, sampling); default 0")
    p.add_argument("--steps", type=int, help="training steps per variant (default 500)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results (results/tiny for --tiny)")
    p.add_argument("--work", type=Path, default=None, help="cache folder (default benchmarks/work/method_changes)")
    p.add_argument("--data", type=Path, default=bc.REPO_DIR / "Testing" / "Data", help="Testing/Data (TotalSegmentator CTs)")
    return p.parse_args(argv)


def variant_settings(chain: list, name: str, seed: int, config: dict):
    """TrainSettings of a chain entry: every change from the top of the chain down to it."""
    from LiverTumorSegLib.training.patches import PatchSettings
    from LiverTumorSegLib.core.features import FeatureSettings
    from LiverTumorSegLib.training.train import TrainSettings

    features, patches, train = {}, {}, {}
    for entry, _, f, p, t in chain:
        features.update(f)
        patches.update(p)
        train.update(t)
        if entry == name:
            break
    # "base" pins the pre-issue defaults, so later changes of the defaults do not move it.
    base_features = {"spacing_mm": 2.0}
    base_train = {"synthetic_copies": 1, "synthetic_tumors": (1, 2), "synthetic_radius_mm": (3.0, 20.0),
                  "synthetic_delta_hu": (65.0, 145.0), "synthetic_edge_mm": (1.0, 2.0),
                  "patch_size": 32, "rehearsal_cases": 4, "check_cases": 3}
    if config["patch_size"]:
        base_train["patch_size"] = config["patch_size"]
        train.pop("patch_size", None)
    settings = TrainSettings(seed=seed, minutes=600.0, max_steps=config["steps"],
                             features=FeatureSettings(**{**base_features, **features}), **{**base_train, **train})
    settings.patches = replace(PatchSettings(size=settings.patch_size), **patches)
    return settings


def polarity_recall(pred: np.ndarray, labels: np.ndarray, image) -> dict:
    """{hypodense|hyperdense: [found, tumors]} (a tumor is found when the prediction overlaps it)."""
    from scipy import ndimage

    from LiverTumorSegLib.core.lesions import label_lesions

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


SUMMARY_KEYS = ("dice_mean", "dice_global", "lesion_f1_mean", "lesion_precision_pooled", "lesion_recall_pooled",
                "recall_by_size", "precision_by_size", "lesions_by_size", "pred_lesions_by_size")


def evaluate_predictor(predict, tests: dict) -> dict:
    """{test set: summary by size and polarity, plus per-case Dice} for predict(image, liver) -> bool mask."""
    from LiverTumorSegLib.evaluation.metrics import evaluate_case, summarize

    out = {}
    for test, cases in tests.items():
        rows, polarity = [], {"hypodense": [0, 0], "hyperdense": [0, 0]}
        for case_id, image, labels in cases:
            liver, truth = labels.array > 0, labels.array == 2
            pred = predict(image, liver)
            rows.append({**evaluate_case(pred, truth, image.spacing_zyx), "case": case_id})
            for kind, (found, total) in polarity_recall(pred, labels.array, image).items():
                polarity[kind][0] += found
                polarity[kind][1] += total
        s = summarize(rows)
        out[test] = {**{k: s[k] for k in SUMMARY_KEYS},
                     "recall_by_polarity": {k: {"found": f, "tumors": n} for k, (f, n) in polarity.items()},
                     "per_case_dice": {r["case"]: round(r["dice"], 4) for r in rows}}
    return out


def run_variant(chain: list, name: str, seed: int, train_cases: list, tests: dict, config: dict) -> dict:
    from LiverTumorSegLib.core.inference import segment
    from LiverTumorSegLib.training.train import train_model

    from LiverTumorSegLib.storage.modelstore import default_model_path, load_model

    t = time.perf_counter()
    if name == NO_TRAINING:
        model = load_model(default_model_path())
        settings = None
    elif name in FINE_TUNES:  # the engine's own defaults, as Slicer's Retrain runs them, with the fixed steps
        from LiverTumorSegLib.training.train import TrainSettings

        settings = TrainSettings(seed=seed, minutes=600.0, max_steps=config["steps"], **FINE_TUNES[name])
        model = train_model([(cid, img, lab) for cid, img, lab, _ in train_cases], settings, init=load_model(default_model_path()))
    else:
        settings = variant_settings(chain, name, seed, config)
        model = train_model([(cid, img, lab) for cid, img, lab, _ in train_cases], settings)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    result = {"variant": name, "seed": seed, "steps": 0 if settings is None else model.meta["steps"], "threshold": model.threshold,
              "validation": {k: model.meta["validation"].get(k) for k in ("dice", "lesion_f1", "threshold_objective", "mode")},
              "parent_check": model.meta.get("parent_check") if settings is not None else None,
              "train_s": round(train_s, 1), "settings": None if settings is None else settings.to_dict(),
              **evaluate_predictor(lambda image, liver: segment(image, liver, model).tumor.array > 0, tests)}
    result["evaluate_s"] = round(time.perf_counter() - t, 1)
    return result


def run_floors(seed: int, train_cases: list, tests: dict) -> dict:
    out = {}
    for kind in sd.FLOORS:
        floor, predict = sd.fit_floor(kind, train_cases)
        out[kind] = {"variant": kind, "seed": seed, "threshold_hu": floor.threshold_hu, **evaluate_predictor(predict, tests)}
    return out


def log_line(result: dict, tests) -> str:
    parts = []
    for test in tests:
        r = result[test]
        small = r["recall_by_size"]["5-10mm"]
        prec = r["precision_by_size"]["5-10mm"]
        parts.append(f"{test} Dice {r['dice_mean']:.3f} 5-10mm R {_fmt(small)} P {_fmt(prec)}")
    return f"{result['variant']} s{result['seed']}: " + "; ".join(parts)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    preset = "tiny" if args.tiny else "full"
    config = dict(PRESETS[preset])
    if args.seeds:
        config["seeds"] = args.seeds
    if args.steps:
        config["steps"] = args.steps
    chain = CHAINS[args.chain]
    names = [c[0] for c in chain if c[0] in (args.variants or [c[0] for c in chain])]
    unknown = set(args.variants or []) - {c[0] for c in chain}
    if unknown:
        raise SystemExit(f"no variant {sorted(unknown)} in chain {args.chain}; it has {[c[0] for c in chain]}")
    threads = bc.set_threads(args.threads)
    out_dir = args.out or bc.results_dir(preset)
    cache_config = {k: v for k, v in config.items() if k != "seeds"}
    cache_config["chain"] = args.chain
    if args.chain == "retrain":  # its results depend on the shipped weights too
        import hashlib
        import json

        from LiverTumorSegLib.storage.modelstore import default_model_path, read_model_json

        meta, problem = read_model_json(default_model_path())
        if problem:
            raise SystemExit(f"the default model's model.json: {problem}")
        spots = meta.get("spot_detector")
        cache_config["default_model"] = hashlib.sha1((default_model_path() / "model.pt").read_bytes()).hexdigest()[:10]
        if spots:  # the shipped spot pass is part of what is measured (core/spots.py, scripts/fit_spot_pass.py)
            cache_config["default_spot_pass"] = hashlib.sha1(json.dumps(spots, sort_keys=True).encode()).hexdigest()[:10]
    work = (args.work or bc.WORK_DIR / "method_changes") / f"{preset}-{bc.config_key(cache_config)}-engine{sd.engine_hash()}"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    protocol = {**sd.PRESETS["full"], "phantom": config["phantom"], "ks": [config["k"]], "test_cases": config["test_cases"],
                "test_min_tumors": config["test_min_tumors"], "ref_variants": config["ref_variants"],
                "small_phantoms": config["small_phantoms"], "small_ref_variants": config["small_ref_variants"],
                "ref_names": sd.PRESETS[preset if preset == "tiny" else "full"]["ref_names"]}
    tests = held_out_test_sets(protocol, args.data)
    bc.log("test sets: " + ", ".join(f"{n} {len(c)} cases" for n, c in tests.items()))
    runs, floors, training = [], {}, {}
    for seed in config["seeds"]:
        train_cases = sd.training_sets(seed, protocol)[config["k"]]
        training[str(seed)] = [c[0] for c in train_cases]
        path = work / f"floors_s{seed}.json"
        if not path.exists():
            bc.write_json(path, run_floors(seed, train_cases, tests))
        floors[str(seed)] = bc.read_json(path)
        for name in names:
            path = work / f"{name}_s{seed}.json"
            if not path.exists():
                result = run_variant(chain, name, seed, train_cases, tests, config)
                bc.write_json(path, result)
                bc.log(log_line(result, tests))
            runs.append(bc.read_json(path))
    result = {**bc.result_header("method_changes", "method_changes.py", preset, config),
              "torch_threads": threads, "machine": bc.machine(), "engine_hash": sd.engine_hash(),
              "test_sets": {n: sd.describe_set(c) for n, c in tests.items()},
              "chain_name": args.chain,
              "chain": [{"variant": n, "adds": what, "features": f, "patches": p, "train": t} for n, what, f, p, t in chain],
              "training_cases": training, "floors": floors, "variants": runs,
              "wall_s": round(time.perf_counter() - start, 1)}
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "method_changes.json" if args.chain == "round1" else f"method_changes_{args.chain}.json"
    bc.write_json(out_dir / name, result)
    bc.log(f"wrote {out_dir / name}")
    return result


if __name__ == "__main__":
    main()
