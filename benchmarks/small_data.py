"""Small-data benchmark: Dice vs number of training tumors.

Training sets hold exactly K tumors (K = 7, 14, 28; a tumor is a 26-connected component of label
2), built from phantoms generated with a chosen tumor count, so no unlabelled tumor is ever shown
as background. The sets are nested per seed (the 14-tumor set holds the 7-tumor set's cases).
Models, all trained with the same wall-time budget (`--minutes`), or with the fixed step counts
that budget buys each network (`--steps mhpnet=450 unet3d=250`: the same command twice gives the
same numbers whatever the machine's load), on the given cases only (synthetic_copies=0) except
mhpnet_synthetic:

    mhpnet              MHP-Net with the multi-scale Hessian channels
    mhpnet_no_hessian   the same network without Hessian channels
    mhpnet_single_scale the same with one Hessian scale (the middle default scale)
    unet3d              plain 3D U-Net on the CT channel
    mhpnet_synthetic    MHP-Net plus one synthetic variant of each training case (synthesis.synthetic_copy:
                        its own tumors pasted elsewhere, Hu-recipe tumors added): the product's default
    threshold           the classical floor (floor.fit_threshold_baseline), fitted on the same cases
    threshold_relative  the same floor on HU relative to each case's liver median ("darker than this
                        liver"): a stronger floor where liver enhancement differs between cases

Three fixed held-out test sets (LiverTumorSegLib/evaluation/test_sets.py, shared with the model
build), never trained on and never used to choose anything: phantoms
(>= 20 cases, >= 60 tumors), tumors synthesised (Hu et al. 2023 recipe) into the real
TotalSegmentator reference CTs in Testing/Data, and the small-tumor set (`small_tumor_test_set`:
mostly 5-15 mm tumors, 20-60 HU from the liver, some hyperdense, several per liver, 1-5 mm slices).

Resumable: each finished (model, K, seed) run is cached as JSON under
benchmarks/work/small_data/<preset>-<config hash>-engine<source hash>/, so an interrupted run
continues where it stopped (as long as the engine's code is unchanged), and
`--report-only` rebuilds the results from the cache. Writes (atomically)
<out>/small_data.json and <out>/small_data.png.

    python benchmarks/small_data.py                 # full protocol (make bench), several hours
    python benchmarks/small_data.py --quick         # a few minutes
    python benchmarks/small_data.py --tiny --out /tmp/x   # seconds, for the test suite
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np

import benchcommon as bc
from LiverTumorSegLib.core.lesions import count_lesions
from LiverTumorSegLib.evaluation.test_sets import FULL_TEST_SETS, held_out_test_sets, phantom_settings

MODELS = ("mhpnet", "mhpnet_no_hessian", "mhpnet_single_scale", "unet3d", "mhpnet_synthetic")
# The protocol's four networks, all trained on the given cases only; mhpnet_synthetic is the
# product's default training (one synthetic copy per case) and joins them in the full preset.
PROTOCOL_MODELS = MODELS[:4]
FLOOR = "threshold"
FLOORS = (FLOOR, "threshold_relative")
TEST_SETS = ("phantom", "reference_synth", "small_tumor")
METRICS = ("dice_mean", "dice_global", "lesion_f1_mean", "lesion_recall_pooled", "lesion_precision_pooled",
           "hd95_mm_mean", "assd_mm_mean")

PRESETS = {
    # The full protocol: 5 networks x 3 K x 3 seeds = 45 trainings of 5 min, plus evaluation.
    "full": dict(ks=[7, 14, 28], seeds=[0, 1, 2], models=list(MODELS), minutes=5.0, max_steps=1_000_000, patch_size=None,
                 batch_size=None, **FULL_TEST_SETS),
    "quick": dict(phantom="small", ks=[7], seeds=[0], models=list(PROTOCOL_MODELS), minutes=0.5, max_steps=12,
                  patch_size=32, batch_size=None, test_cases=4, test_min_tumors=8, test_tumors=[2, 3],
                  ref_variants=1, ref_tumors=[2, 3], ref_names=None, small_phantoms=1, small_ref_variants=1),
    "tiny": dict(phantom="small", ks=[2], seeds=[0], models=list(PROTOCOL_MODELS), minutes=0.3, max_steps=2,
                 patch_size=16, batch_size=2, test_cases=1, test_min_tumors=1, test_tumors=[1, 2],
                 ref_variants=1, ref_tumors=[1, 2], ref_names=["example_ct_sm"], small_phantoms=0, small_ref_variants=1),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small version (a few minutes on 2 cores)")
    size.add_argument("--tiny", action="store_true", help="smoke-test version (seconds) for Testing/test_benchmarks.py")
    p.add_argument("--phantom", choices=("small", "medium", "full"), help="phantom preset for training and test cases")
    p.add_argument("--ks", type=int, nargs="+", help="training-set tumor counts (default 7 14 28)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (training cases, initialisation, sampling)")
    p.add_argument("--models", nargs="+", choices=MODELS, help="networks to train (the threshold floor always runs)")
    p.add_argument("--minutes", type=float, help="training wall-time budget per network (same for all)")
    p.add_argument("--max-steps", type=int, help="step cap per training (default: effectively none)")
    p.add_argument("--steps", nargs="+", metavar="MODEL=N", default=None,
                   help="fixed steps per network, e.g. mhpnet=450 unet3d=250 (what the time budget buys each on one "
                        "core, fixed so that machine load cannot change the result; --minutes is then only a cap)")
    p.add_argument("--test-cases", type=int, help="held-out phantom test cases (at least)")
    p.add_argument("--test-min-tumors", type=int, help="tumors in the phantom test set (at least)")
    p.add_argument("--ref-variants", type=int, help="synthetic-tumor variants per TotalSegmentator CT (0: none)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's; use 1 on a busy shared machine)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for small_data.json and small_data.png (default benchmarks/results, or results/<preset> for --quick/--tiny)")
    p.add_argument("--work", type=Path, default=None, help="cache folder (default benchmarks/work/small_data)")
    p.add_argument("--report-only", action="store_true", help="only rebuild JSON and plot from cached runs")
    p.add_argument("--cache", type=Path, default=None, help="exact cache folder to use (e.g. one made by an older engine)")
    p.add_argument("--data", type=Path, default=bc.REPO_DIR / "Testing" / "Data", help="Testing/Data (TotalSegmentator CTs)")
    return p.parse_args(argv)


def resolve_config(args) -> tuple[str, dict]:
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    config = dict(PRESETS[preset])
    for key in ("phantom", "ks", "seeds", "models", "minutes", "max_steps", "test_cases", "test_min_tumors", "ref_variants"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    config["ks"] = sorted(set(config["ks"]))
    if args.steps:
        config["steps_by_model"] = steps_by_model(args.steps)
    config["threads"] = args.threads
    return preset, config


def steps_by_model(items: list[str]) -> dict:
    """{"mhpnet": 450, ...} from ["mhpnet=450", ...]; an unknown network or a bad count is refused."""
    out = {}
    for item in items:
        name, _, count = item.partition("=")
        if name not in MODELS or not count.isdigit() or int(count) < 1:
            raise SystemExit(f"--steps {item!r}: expected MODEL=N with MODEL one of {', '.join(MODELS)} and N >= 1")
        out[name] = int(count)
    return out


def engine_hash() -> str:
    """Hash of the engine's sources: says whether every cached run used the same code."""
    import LiverTumorSegLib

    h = hashlib.sha1()
    root = Path(LiverTumorSegLib.__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:10]


# ---- data -------------------------------------------------------------------------------------

def exact_phantom(first_seed: int, n: int, preset: str):
    """The first phantom from seed `first_seed` on that holds exactly n tumors; (case, seed used)."""
    from LiverTumorSegLib.data.phantom import make_phantom

    settings = phantom_settings(preset, n_tumors=(n, n))
    for seed in range(first_seed, first_seed + 200):
        case = make_phantom(seed, settings)
        if len(case.tumors) == n and count_lesions(case.labels.array == 2) == n:
            return case, seed
    raise RuntimeError(f"no phantom with exactly {n} tumors in 200 seeds from {first_seed}")


def per_case_counts(ks: list[int]) -> list[tuple[int, int]]:
    """(tumors in the case, smallest K whose set holds it): nested sets of 2-3 tumors per case."""
    plan, have = [], 0
    for k in ks:
        remaining = k - have
        while remaining > 0:
            c = 3 if remaining >= 5 or remaining == 3 else 2 if remaining >= 2 else 1
            plan.append((c, k))
            remaining -= c
        have = k
    return plan


def training_sets(seed: int, config: dict) -> dict[int, list]:
    """{K: [(case_id, image, labels, n_tumors)]}, nested, exactly K tumors each."""
    cases, next_seed = [], 1_000_000 + 10_000 * seed
    for j, (n, _k) in enumerate(per_case_counts(config["ks"])):
        case, used = exact_phantom(next_seed, n, config["phantom"])
        next_seed = used + 1
        cases.append((f"train_s{seed}_{j:02d}_phantom{used}", case.image, case.labels, n, _k))
    sets = {}
    for k in config["ks"]:
        chosen = [(cid, img, lab, n) for cid, img, lab, n, kk in cases if kk <= k]
        assert sum(c[3] for c in chosen) == k, (k, [c[3] for c in chosen])
        sets[k] = chosen
    return sets


def describe_set(cases: list) -> dict:
    from LiverTumorSegLib.core.lesions import equivalent_diameter_mm, label_lesions
    from LiverTumorSegLib.evaluation.metrics import SIZE_BINS, size_bin

    diameters = []
    for _, image, labels in cases:
        components, n = label_lesions(labels.array == 2)
        sizes = np.bincount(components.ravel(), minlength=n + 1)[1:] * image.voxel_volume_mm3
        diameters += [equivalent_diameter_mm(v) for v in sizes]
    d = np.asarray(diameters)
    return {
        "n_cases": len(cases),
        "n_tumors": len(diameters),
        "tumor_diameter_mm": {"min": float(d.min()), "median": float(np.median(d)), "max": float(d.max())} if len(d) else None,
        "tumors_by_size": {b: sum(size_bin(x) == b for x in d) for b in SIZE_BINS},
        "slice_mm": sorted({round(float(image.spacing_zyx[0]), 2) for _, image, _ in cases}),
        "shapes": sorted({str(tuple(image.shape)) for _, image, _ in cases}),
        "cases": [c[0] for c in cases],
    }


# ---- one run ----------------------------------------------------------------------------------

def train_settings(model: str, seed: int, config: dict):
    from LiverTumorSegLib.core.features import FeatureSettings
    from LiverTumorSegLib.training.train import TrainSettings

    extra = {}
    if config.get("patch_size"):
        extra["patch_size"] = config["patch_size"]
    if config.get("batch_size"):
        extra["batch_size"] = config["batch_size"]
    max_steps = config.get("steps_by_model", {}).get(model, config["max_steps"])
    common = dict(seed=seed, minutes=config["minutes"], max_steps=max_steps, synthetic_copies=0, **extra)
    if model == "mhpnet":
        return TrainSettings(arch="mhpnet", use_hessian=True, **common)
    if model == "mhpnet_no_hessian":
        return TrainSettings(arch="mhpnet", use_hessian=False, **common)
    if model == "mhpnet_single_scale":
        scales = FeatureSettings().hessian_scales_mm
        middle = (float(sorted(scales)[len(scales) // 2]),)
        return TrainSettings(arch="mhpnet", use_hessian=True, features=FeatureSettings(hessian_scales_mm=middle), **common)
    if model == "unet3d":
        return TrainSettings(arch="unet3d", use_hessian=False, **common)
    if model == "mhpnet_synthetic":
        return TrainSettings(arch="mhpnet", use_hessian=True, **{**common, "synthetic_copies": 1})
    raise ValueError(model)


def evaluate(predict, cases: list) -> list[dict]:
    """Per-case metrics (metrics.evaluate_case) plus the case id and seconds per case."""
    from LiverTumorSegLib.evaluation.metrics import evaluate_case

    rows = []
    for case_id, image, labels in cases:
        liver, truth = labels.array > 0, labels.array == 2
        t = time.perf_counter()
        pred = predict(image, liver)
        seconds = time.perf_counter() - t
        row = evaluate_case(pred, truth, image.spacing_zyx)
        row.update(case=case_id, seconds=round(seconds, 3))
        rows.append(row)
    return rows


def run_network(model_name: str, k: int, seed: int, train_cases: list, tests: dict, config: dict) -> dict:
    from LiverTumorSegLib.core.inference import segment
    from LiverTumorSegLib.training.train import train_model

    settings = train_settings(model_name, seed, config)
    t = time.perf_counter()
    model = train_model([(cid, img, lab) for cid, img, lab, _ in train_cases], settings)
    wall = time.perf_counter() - t
    meta = model.meta
    out = {
        "model": model_name, "k": k, "seed": seed,
        "train": {
            "wall_s": round(wall, 1), "train_seconds": meta.get("train_seconds"), "steps": meta.get("steps"),
            "n_parameters": meta.get("n_parameters"), "n_tumors_sampled": meta.get("n_tumors"),
            "validation_mode": meta.get("validation", {}).get("mode"),
            "validation_dice": meta.get("validation", {}).get("dice"),
            "validation_cases": meta.get("validation_cases"), "threshold": model.threshold,
            "channels": model.feature_settings.channel_names, "training_cases": [c[0] for c in train_cases],
        },
    }
    for name, cases in tests.items():
        out[name] = evaluate(lambda image, liver: segment(image, liver, model).tumor.array > 0, cases)
    return out


def liver_relative(image, liver: np.ndarray):
    """HU minus the case's liver median (float32 Volume): what "darker than this liver" thresholds."""
    return image.with_array(image.array.astype(np.float32) - np.float32(np.median(image.array[liver])))


def fit_floor(kind: str, train_cases: list):
    """One of the FLOORS fitted on [(case_id, image, labels, ...)]: (ThresholdBaseline,
    predict(image, liver) -> bool mask); "threshold_relative" thresholds HU minus the liver median."""
    from LiverTumorSegLib.core.floor import fit_threshold_baseline

    relative = kind == "threshold_relative"

    def view(image, liver):
        return liver_relative(image, liver) if relative else image

    floor = fit_threshold_baseline([(view(c[1], c[2].array > 0), c[2].array > 0, c[2].array == 2) for c in train_cases])
    return floor, lambda image, liver: floor.segment(view(image, liver), liver)


def run_floor(kind: str, k: int, seed: int, train_cases: list, tests: dict) -> dict:
    t = time.perf_counter()
    floor, predict = fit_floor(kind, train_cases)
    out = {"model": kind, "k": k, "seed": seed,
           "train": {"wall_s": round(time.perf_counter() - t, 2), "threshold_hu": floor.threshold_hu,
                     "threshold_relative_to_liver_median": kind == "threshold_relative",
                     "training_cases": [c[0] for c in train_cases]}}
    for name, cases in tests.items():
        out[name] = evaluate(predict, cases)
    return out


# ---- report -----------------------------------------------------------------------------------

def _stats(values: list) -> dict:
    v = [float(x) for x in values if x is not None]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def aggregate(runs: list[dict], test_sets: list[str]) -> dict:
    """{test set: {model: {K: metrics}}}: each metric as mean and spread (sample std) over seeds,
    plus per-case Dice pooled over all seeds (mean, std over cases) and recall by size pooled."""
    from LiverTumorSegLib.evaluation.metrics import SIZE_BINS, summarize

    out = {}
    for test in test_sets:
        per_model = {}
        for model in sorted({r["model"] for r in runs}, key=lambda m: (MODELS + FLOORS).index(m)):
            per_k = {}
            for k in sorted({r["k"] for r in runs if r["model"] == model}):
                group = [r for r in runs if r["model"] == model and r["k"] == k and r.get(test)]
                if not group:
                    continue
                summaries = [summarize(r[test]) for r in group]
                pooled = summarize([row for r in group for row in r[test]])
                dices = [row["dice"] for r in group for row in r[test]]
                entry = {"seeds": [r["seed"] for r in group]}
                for m in METRICS:
                    entry[m] = _stats([s[m] for s in summaries])
                entry["per_case_dice_pooled"] = {"mean": float(np.mean(dices)), "std": float(np.std(dices)),
                                                 "sem": float(np.std(dices, ddof=1) / np.sqrt(len(dices))) if len(dices) > 1 else 0.0,
                                                 "n": len(dices)}
                entry["recall_by_size_pooled"] = pooled["recall_by_size"]
                entry["lesions_by_size_pooled"] = pooled["lesions_by_size"]
                entry["precision_by_size_pooled"] = pooled["precision_by_size"]
                entry["pred_lesions_by_size_pooled"] = pooled["pred_lesions_by_size"]
                entry["recall_by_size"] = {b: _stats([s["recall_by_size"][b] for s in summaries]) for b in SIZE_BINS}
                if model not in FLOORS:
                    entry["train_steps"] = _stats([r["train"]["steps"] for r in group])
                    entry["train_seconds"] = _stats([r["train"]["train_seconds"] for r in group])
                    entry["validation_dice"] = _stats([r["train"]["validation_dice"] for r in group])
                entry["segment_seconds_per_case"] = _stats([row["seconds"] for r in group for row in r[test]])
                per_k[str(k)] = entry
            per_model[model] = per_k
        out[test] = per_model
    return out


def paired_differences(runs: list[dict], test_sets: list[str], reference: str = "mhpnet") -> dict:
    """{test: {other model: {K: per-case Dice of `reference` minus `other`, per seed}}}: the seeds
    share training cases, so the paired difference removes most of the seed-to-seed spread."""
    by_key = {(r["model"], r["k"], r["seed"]): r for r in runs}
    out = {}
    for test in test_sets:
        per_model = {}
        for model in sorted({r["model"] for r in runs} - {reference}, key=lambda m: (MODELS + FLOORS).index(m)):
            per_k = {}
            for k in sorted({r["k"] for r in runs}):
                seeds = sorted(s for (m, kk, s) in by_key if m == model and kk == k and (reference, k, s) in by_key)
                diffs = [float(np.mean([row["dice"] for row in by_key[(reference, k, s)][test]])
                               - np.mean([row["dice"] for row in by_key[(model, k, s)][test]]))
                         for s in seeds if by_key[(reference, k, s)].get(test) and by_key[(model, k, s)].get(test)]
                if diffs:
                    per_k[str(k)] = {**_stats(diffs), "seeds": seeds, "differences": [round(x, 4) for x in diffs],
                                     "reference_better": int(sum(x > 0 for x in diffs))}
            per_model[model] = per_k
        out[test] = per_model
    return out


def plot(summary: dict, path: Path, title: str) -> Path:
    plt = bc.pyplot()
    tests = [t for t in TEST_SETS if summary.get(t)]
    fig, axes = plt.subplots(1, len(tests), figsize=(6.2 * len(tests), 4.6), squeeze=False)
    styles = {"mhpnet": ("C0", "o", "-"), "mhpnet_no_hessian": ("C1", "s", "-"), "mhpnet_single_scale": ("C2", "^", "-"),
              "unet3d": ("C3", "D", "-"), "mhpnet_synthetic": ("C4", "v", "-."), FLOOR: ("0.4", "x", "--"), "threshold_relative": ("0.2", "+", ":")}
    for ax, test in zip(axes[0], tests):
        for model, per_k in summary[test].items():
            ks = sorted(int(k) for k in per_k)
            if not ks:
                continue
            means = [per_k[str(k)]["dice_mean"]["mean"] for k in ks]
            n_seeds = [per_k[str(k)]["dice_mean"]["n"] for k in ks]
            # Spread over seeds when there are several, else the standard error over test cases.
            errs = [per_k[str(k)]["dice_mean"]["std"] if n > 1 else per_k[str(k)]["per_case_dice_pooled"]["sem"]
                    for k, n in zip(ks, n_seeds)]
            color, marker, line = styles.get(model, ("k", ".", "-"))
            offset = (list(styles).index(model) - 2.5) * 0.03 if model in styles else 0
            ax.errorbar(np.asarray(ks) * 2.0**offset, means, yerr=errs, label=model, color=color, marker=marker,
                        linestyle=line, capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({int(k) for per_k in summary[test].values() for k in per_k}))
        ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("training tumors K")
        ax.set_ylabel("per-case Dice (mean over test cases)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_title({"phantom": "held-out phantoms", "reference_synth": "tumors synthesised into real CTs",
                      "small_tumor": "small-tumor set (5-15 mm)"}[test])
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    bc.save_figure(fig, path)
    plt.close(fig)
    return path


# ---- main -------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    args = parse_args(argv)
    preset, config = resolve_config(args)
    args.out = args.out or bc.results_dir(preset)
    threads = bc.set_threads(config["threads"])
    cache_config = {k: v for k, v in config.items() if k not in ("seeds", "models", "ks")}
    # The engine's source hash is part of the cache key: a resumed run never mixes code versions.
    code = engine_hash()
    work = args.cache or (args.work or bc.WORK_DIR / "small_data") / f"{preset}-{bc.config_key(cache_config)}-engine{code}"
    work.mkdir(parents=True, exist_ok=True)
    bc.write_json(work / "config.json", {"preset": preset, **cache_config})
    start = time.perf_counter()
    bc.log(f"small_data: preset {preset}, cache {work}, torch threads {threads}")

    planned = [(seed, k, m) for seed in config["seeds"] for k in config["ks"] for m in (*FLOORS, *config["models"])]
    tests, test_info, train_info = {}, {}, {}
    if not args.report_only:
        t = time.perf_counter()
        tests = held_out_test_sets(config, args.data)
        test_info = {name: describe_set(cases) for name, cases in tests.items()}
        bc.log(f"test sets ready in {time.perf_counter() - t:.0f} s: "
               + ", ".join(f"{n} {i['n_cases']} cases / {i['n_tumors']} tumors" for n, i in test_info.items()))
        bc.write_json(work / "test_sets.json", test_info)
        for seed in config["seeds"]:
            sets = None
            for k in config["ks"]:
                for model in (*FLOORS, *config["models"]):
                    path = work / f"{model}_k{k}_s{seed}.json"
                    if path.exists():
                        continue
                    if sets is None:
                        sets = training_sets(seed, config)
                        train_info[str(seed)] = {str(kk): {"cases": [c[0] for c in v], "tumors": sum(c[3] for c in v)}
                                                 for kk, v in sets.items()}
                        bc.write_json(work / f"training_sets_s{seed}.json", train_info[str(seed)])
                    t = time.perf_counter()
                    if model in FLOORS:
                        result = run_floor(model, k, seed, sets[k], tests)
                    else:
                        result = run_network(model, k, seed, sets[k], tests, config)
                    result.update(engine_hash=code, finished=bc.now(), run_wall_s=round(time.perf_counter() - t, 1))
                    bc.write_json(path, result)
                    d = {name: np.mean([row["dice"] for row in result[name]]) for name in tests}
                    steps = result["train"].get("steps")
                    bc.log(f"seed {seed} K={k} {model}: " + ", ".join(f"{n} Dice {v:.3f}" for n, v in d.items())
                           + (f", {steps} steps" if steps else "") + f" ({result['run_wall_s']:.0f} s)")
    return report(work, config, preset, planned, args, time.perf_counter() - start)


def report(work: Path, config: dict, preset: str, planned: list, args, wall_s: float) -> dict:
    runs = []
    for seed, k, model in planned:
        path = work / f"{model}_k{k}_s{seed}.json"
        if path.exists():
            runs.append(bc.read_json(path))
    test_info = bc.read_json(work / "test_sets.json") if (work / "test_sets.json").exists() else {}
    train_info = {p.stem.split("_s")[-1]: bc.read_json(p) for p in sorted(work.glob("training_sets_s*.json"))}
    test_sets = [t for t in TEST_SETS if any(r.get(t) for r in runs)]
    summary = aggregate(runs, test_sets)
    hashes = sorted({r.get("engine_hash") for r in runs if r.get("engine_hash")})
    result = {
        **bc.result_header("small_data", "small_data.py", preset, config),
        "protocol": ("training sets of exactly K tumors (26-connected components of label 2) from phantoms generated "
                     "with chosen tumor counts, nested per seed; " + budget_text(config) + "; metrics from "
                     "metrics.evaluate_case; spread = sample std over seeds"),
        "machine": bc.machine(),
        "engine_hashes": hashes,
        "planned_runs": len(planned),
        "completed_runs": len(runs),
        "missing_runs": [f"{m}_k{k}_s{s}" for s, k, m in planned if not (work / f"{m}_k{k}_s{s}.json").exists()],
        "wall_s_this_invocation": round(wall_s, 1),
        "run_wall_s_total": round(sum(r.get("run_wall_s", 0) for r in runs), 1),
        "test_sets": test_info,
        "training_sets": train_info,
        "summary": summary,
        "paired_vs_mhpnet": paired_differences(runs, test_sets) if any(r["model"] == "mhpnet" for r in runs) else {},
        "runs": [{"model": r["model"], "k": r["k"], "seed": r["seed"], "train": r["train"],
                  "engine_hash": r.get("engine_hash"), "run_wall_s": r.get("run_wall_s"),
                  **{t: {"summary": _brief(r[t]), "per_case": [{key: row[key] for key in
                        ("case", "dice", "lesion_f1", "hd95_mm", "n_true_lesions", "n_pred_lesions", "seconds")}
                        for row in r[t]]} for t in test_sets if r.get(t)}} for r in runs],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    bc.write_json(args.out / "small_data.json", result)
    if runs:
        budget = (_steps_text(config["steps_by_model"]) + " steps" if config.get("steps_by_model")
                  else f"{config['minutes']} min/training")
        title = (f"small-data benchmark ({preset}): {config['phantom']} phantoms, {budget}, "
                 f"seeds {sorted({r['seed'] for r in runs})}; error bars: std over seeds (SE over cases if 1 seed)")
        plot(summary, args.out / "small_data.png", title)
    bc.log(f"wrote {args.out / 'small_data.json'} ({len(runs)}/{len(planned)} runs)")
    print_table(summary)
    return result


def budget_text(config: dict) -> str:
    steps = config.get("steps_by_model")
    if not steps:
        return f"every network gets the same wall-time budget ({config['minutes']} min incl. case preparation)"
    return ("fixed steps per network (" + _steps_text(steps) + "; the others "
            f"{config['max_steps']}), what the same time budget buys each on one core, fixed so that machine load cannot "
            f"change the result; {config['minutes']} min only as a cap")


def _steps_text(steps: dict) -> str:
    return ", ".join(f"{model} {count}" for model, count in steps.items())


def _brief(rows: list) -> dict:
    from LiverTumorSegLib.evaluation.metrics import summarize

    s = summarize(rows)
    return {k: s[k] for k in ("n_cases", "dice_mean", "dice_std", "dice_global", "lesion_f1_mean", "hd95_mm_mean", "recall_by_size",
                          "precision_by_size")}


def print_table(summary: dict) -> None:
    for test, per_model in summary.items():
        print(f"\n{test}: per-case Dice mean (std over seeds) by K")
        for model, per_k in per_model.items():
            cells = [f"K={k}: {v['dice_mean']['mean']:.3f} ({v['dice_mean']['std']:.3f}, n={v['dice_mean']['n']})"
                     for k, v in per_k.items()]
            print(f"  {model:22s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
