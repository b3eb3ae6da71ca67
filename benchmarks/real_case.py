"""The real case: Retrain on half A of a real CT with 70 tumors, judged on half B by lesion size.

LiverTumorSegLib/evaluation/real_case.py describes the case (LiTS 117, a 128^3 crop at an assumed
1.5 mm; A = the inferior half, 28 tumors, B = the dome, 51 tumors). This script runs what a user
runs and scores it inside the true liver:

- the shipped default model on B and on the whole case;
- the HU floor (Gaussian-smoothed absolute HU threshold, specks and surface slivers removed)
  fitted on A, on B;
- Retrain: A added to a fresh case library as the user's one annotated case, then
  `livertumorseg train LIBRARY --init <default> --minutes M --seed S` (the command the Slicer
  panel's Retrain runs), and the new model on B.

Each row gives per-case Dice, tumors found / tumors of each size (5-10, 10-20, > 20 mm; lesion
recall) and lesion precision per size, and the false lesions. Nothing is tuned on B: it reports.
`--develop` is where settings are chosen: the same rows inside A (Retrain on A's inferior half A1,
scored on its superior half A2, and the other way), B never read. `--train-args` measures a
variant of Retrain (options of `livertumorseg train`) beside the default.

The case is fetched once with `pip download --no-deps liver-ct-segmentation-package==1.6.0` into
benchmarks/work/real_case_data (CC BY-NC-SA 4.0: never committed). Every run is cached in
benchmarks/work/real_case/ under the engine's source hash, so an interrupted run resumes.

    OMP_NUM_THREADS=1 python benchmarks/real_case.py --seeds 0 1 2 --threads 1
    OMP_NUM_THREADS=1 python benchmarks/real_case.py --develop --seeds 0 1 --threads 1 [--train-args "--synthesis off"]
    python benchmarks/real_case.py --tiny --data DIR --out /tmp/real   # a check that it runs
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import benchcommon as bc
import small_data as sd
from LiverTumorSegLib.errors import InputError
from LiverTumorSegLib.evaluation.real_case import ASSUMED_SPACING_MM, PACKAGE, find_real_case, read_real_case, split_halves
from LiverTumorSegLib.protocol import train_command

SIZES = ("5-10mm", "10-20mm", ">20mm")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None,
                   help="folder holding img_117.mrc and lab_117.mrc (default: fetched into benchmarks/work/real_case_data)")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="Retrain seeds (default 0 1 2; none: only the default model and the floor)")
    p.add_argument("--minutes", type=float, default=5.0, help="Retrain's time cap (the panel's default: 5)")
    p.add_argument("--max-steps", type=int, default=None, help="Retrain's planned steps (default: the product's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads here and in the Retrain process")
    p.add_argument("--develop", action="store_true",
                   help="choose settings inside A: Retrain on one half of A, score the other, both ways (B is never read)")
    p.add_argument("--train-args", default="", help="extra options for `livertumorseg train` (a variant to measure)")
    p.add_argument("--tiny", action="store_true", help="a check that the script runs: seed 0, 2 steps")
    p.add_argument("--out", type=Path, default=None, help="folder for real_case.json (default benchmarks/results)")
    p.add_argument("--work", type=Path, default=bc.WORK_DIR / "real_case")
    args = p.parse_args(argv)
    args.preset = "tiny" if args.tiny else "full"
    if args.tiny:
        args.seeds, args.max_steps = args.seeds[:1] or [0], args.max_steps or 2
    args.out = args.out or bc.results_dir(args.preset)
    return args


# ---- the case -------------------------------------------------------------------------------------

def fetch_case(cache: Path) -> Path:
    """The folder holding the MRC pair, downloading the package's wheel on first use."""
    try:
        find_real_case(cache)
        return cache
    except InputError:
        pass
    cache.mkdir(parents=True, exist_ok=True)
    bc.log(f"fetching {PACKAGE} into {cache}")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                           PACKAGE, "-d", str(cache)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"could not download {PACKAGE} ({done.stderr.strip()[-300:]}); give --data DIR with the two MRC files")
    find_real_case(cache)  # unpacks the wheel
    return cache


def lesion_sizes(labels) -> dict:
    """Tumors per size bin (equivalent-sphere diameter at the assumed spacing)."""
    described = sd.describe_set([("", labels, labels)])
    return {"tumors": described["n_tumors"], "by_size": described["tumors_by_size"]}


# ---- scoring -------------------------------------------------------------------------------------

def score(pred: np.ndarray, labels) -> dict:
    """Scores inside the true liver: Dice, lesion recall and precision by size, false lesions."""
    from LiverTumorSegLib.evaluation.metrics import evaluate_case

    row = evaluate_case(pred & (labels.array > 0), labels.array == 2, labels.spacing_zyx)
    return {
        "dice": row["dice"],
        "found": {k: row["lesions_by_size"][k] for k in SIZES},  # [found, of]
        "recall": {k: row["recall_by_size"][k] for k in SIZES},
        "precision": {k: row["precision_by_size"][k] for k in SIZES},
        "predicted": {k: row["pred_lesions_by_size"][k] for k in SIZES},  # [true lesions among them, predicted]
        "lesion_precision": row["lesion_precision"], "lesion_recall": row["lesion_recall"],
        "false_lesions": int(row["n_pred_lesions"] - row["pred_lesions_matched"]),
    }


def segment_with(model_path: Path, image, labels) -> tuple[np.ndarray, dict]:
    from LiverTumorSegLib.core.inference import segment
    from LiverTumorSegLib.storage.modelstore import load_model

    model = load_model(model_path)
    t = time.perf_counter()
    result = segment(image, labels.array > 0, model)
    return result.tumor.array > 0, {"threshold": result.threshold, "segment_s": round(time.perf_counter() - t, 2)}


def cached(path: Path, engine: str, compute) -> dict:
    """Reuse a run scored with the same engine sources; otherwise compute and store it."""
    if path.exists():
        stored = bc.read_json(path)
        if stored.get("engine_hash") == engine:
            return stored
    result = {**compute(), "engine_hash": engine, "finished": bc.now()}
    bc.write_json(path, result)
    return result


def retrain(train: tuple, name: str, default_model: Path, seed: int, args, work: Path) -> Path:
    """A fresh library holding the training half as the user's one annotated case, and the product's
    Retrain on it (a subprocess, as the panel runs it). Returns the new model's folder."""
    from LiverTumorSegLib.storage.library import CaseLibrary

    library_dir = work / "library"
    if library_dir.exists():
        import shutil

        shutil.rmtree(library_dir)
    library = CaseLibrary(library_dir)
    library.add_case(*train, source=f"LiTS 117 half {name} (real_case.py)", case_id=f"lits117_{name}")
    out = library.new_version_path()
    command = train_command(sys.executable, library_dir, out, args.minutes, seed, args.threads or None,
                            init=default_model, max_steps=args.max_steps) + shlex.split(args.train_args)
    bc.log("Retrain: " + " ".join(command[1:]))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"Retrain failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return out


# ---- the runs -------------------------------------------------------------------------------------

def splits(image, labels, develop: bool) -> list[tuple[str, tuple, str, tuple]]:
    """(train name, train half, test name, test half): A -> B, or for development the two halves of
    A each way (A1 = A's inferior half, A2 = its superior half): choosing settings never sees B."""
    halves = split_halves(image, labels)
    if not develop:
        return [("A", halves["A"], "B", halves["B"])]
    inner = split_halves(*halves["A"])
    return [("A1", inner["A"], "A2", inner["B"]), ("A2", inner["B"], "A1", inner["A"])]


def run_all(args) -> dict:
    from LiverTumorSegLib.core.floor import fit_threshold_baseline
    from LiverTumorSegLib.storage.modelstore import default_model_path, read_model_json

    threads = bc.set_threads(args.threads)
    image_path, labels_path = find_real_case(args.data or fetch_case(bc.WORK_DIR / "real_case_data"))
    image, labels = read_real_case(image_path, labels_path)
    engine = sd.engine_hash()
    work = args.work / f"engine{engine}"
    default = default_model_path()
    variant = ("_" + bc.config_key({"train_args": args.train_args})) if args.train_args else ""
    rows, sizes = {}, {"whole": lesion_sizes(labels)}

    def default_on(name, img, lab):
        def compute():
            pred, info = segment_with(default, img, lab)
            return {**score(pred, lab), **info}
        return cached(work / f"default_{name}.json", engine, compute)

    for train_name, (image_tr, labels_tr), test_name, (image_te, labels_te) in splits(image, labels, args.develop):
        sizes[train_name], sizes[test_name] = lesion_sizes(labels_tr), lesion_sizes(labels_te)
        rows[f"default model, {test_name}"] = default_on(test_name, image_te, labels_te)

        def floor(image_tr=image_tr, labels_tr=labels_tr, image_te=image_te, labels_te=labels_te):
            baseline = fit_threshold_baseline([(image_tr, labels_tr.array > 0, labels_tr.array == 2)])
            return {**score(baseline.segment(image_te, labels_te.array > 0), labels_te), "threshold_hu": baseline.threshold_hu}

        rows[f"HU floor fitted on {train_name}, {test_name}"] = cached(
            work / f"floor_{test_name}.json" if train_name == "A" else work / f"floor_{train_name}_{test_name}.json", engine, floor)

        for seed in args.seeds:
            where = "" if train_name == "A" else f"_{train_name}"
            key = f"retrain{where}_s{seed}_m{args.minutes:g}_steps{args.max_steps or 'default'}{variant}"

            def compute(seed=seed, key=key, train=(image_tr, labels_tr), test=(image_te, labels_te), name=train_name):
                t = time.perf_counter()
                model = retrain(train, name, default, seed, args, work / key)
                seconds = round(time.perf_counter() - t, 1)
                meta, _ = read_model_json(model)
                pred, info = segment_with(model, *test)
                check = (meta.get("parent_check") or {}).get("check_set") or {}
                return {**score(pred, test[1]), **info, "retrain_s": seconds, "steps": meta.get("steps"),
                        "stopped_by": meta.get("stopped_by"), "validation": meta.get("validation", {}).get("dice"),
                        "parent_check_dice": {who: (v or {}).get("dice_mean") for who, v in check.items()},
                        "worse_than_parent": (meta.get("parent_check") or {}).get("worse_than_parent")}

            rows[f"Retrain on {train_name} (seed {seed}), {test_name}"] = cached(work / f"{key}.json", engine, compute)
    if not args.develop:
        rows["default model, whole case"] = default_on("full", image, labels)

    return {
        **bc.result_header("real_case", "real_case.py", args.preset, {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}),
        "case": {"source": PACKAGE, "assumed_spacing_mm": ASSUMED_SPACING_MM, "shape_zyx": list(image.shape), **sizes},
        "engine_hash": engine, "torch_threads": threads, "machine": bc.machine(),
        "rows": rows,
        "retrain_mean": mean_of([r for name, r in rows.items() if name.startswith("Retrain")]),
    }


def mean_of(runs: list) -> dict | None:
    """Dice and recall/precision per size averaged over the Retrain seeds."""
    if not runs:
        return None

    def avg(values):
        values = [v for v in values if v is not None]
        return round(float(np.mean(values)), 4) if values else None

    return {"n": len(runs), "dice": avg(r["dice"] for r in runs),
            "recall": {k: avg(r["recall"][k] for r in runs) for k in SIZES},
            "precision": {k: avg(r["precision"][k] for r in runs) for k in SIZES},
            "false_lesions": avg(r["false_lesions"] for r in runs)}


def table(result: dict) -> str:
    """The markdown table of RESULTS.md: per row Dice, then found/of (precision) per size."""
    def cell(row, size):
        found, of = row["found"][size]
        precision = row["precision"][size]
        return f"{found} / {of} ({'-' if precision is None else f'{precision:.2f}'})"

    lines = ["| run (scored inside the true liver) | Dice | 5-10 mm | 10-20 mm | > 20 mm | false lesions |",
             "|---|---|---|---|---|---|"]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | {row['dice']:.3f} | " + " | ".join(cell(row, s) for s in SIZES) + f" | {row['false_lesions']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        result = run_all(args)
    except InputError as exc:
        raise SystemExit(f"error: {exc}") from None
    name = "real_case" + ("_development" if args.develop else "") + (
        "_" + bc.config_key({"train_args": args.train_args}) if args.train_args else "")
    path = args.out / f"{name}.json"
    bc.write_json(path, result)
    print(table(result))
    print(f"written to {path}")
    return result


if __name__ == "__main__":
    main()
