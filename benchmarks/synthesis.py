"""Synthesis off / fixed / auto (issue 11): does letting the segmenter choose its synthetic data help?

Training sets of exactly K tumors from small_data.training_sets (the same cases per seed for every
mode, so results pair by seed), a fixed step budget (not minutes: the search's share comes out of
the same steps), and the fixed held-out test sets of method_changes.py / small_data.py (phantoms,
tumors synthesised into the real reference CTs, the small-tumor set), never used to choose
anything. Each model is evaluated by lesion size (recall and precision for 5-10, 10-20, > 20 mm)
and by polarity (hypodense / hyperdense recall). For auto, the search's own validation gain of its
choice over `off` is set against the test-set gain, which measures how much the search fooled
itself on its few held-out tumors.

Resumable: each finished (mode, K, seed) is cached under benchmarks/work/synthesis/<config key>/
(the engine hash of every run is recorded, not keyed: a cache left from an older engine must be
moved aside by hand). Writes <out>/synthesis.json and <out>/synthesis.png. The results of earlier
versions of auto (engine 777001f, before the spot pass) are in
results/archive_synthesis_auto_v2_engine777001f.json (git history, 4bb0d3c).

    python benchmarks/synthesis.py --ks 7 --seeds 0 1 --threads 1          # what ran this round
    python benchmarks/synthesis.py --ks 7 14 28 --seeds 0 1 2 --threads 1  # the full grid
    python benchmarks/synthesis.py --tiny --out /tmp/x                     # seconds, for the test suite
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import benchcommon as bc
import method_changes as mc
import small_data as sd
from LiverTumorSegLib.evaluation.test_sets import held_out_test_sets

MODES = ("off", "fixed", "auto")
FULL_KS = (7, 14, 28)
TESTS = ("phantom", "reference_synth", "small_tumor")
BINS = ("5-10mm", "10-20mm", ">20mm")
PRESETS = {
    "full": dict(phantom="medium", steps=400, test_cases=10, test_min_tumors=30, test_tumors=[3, 4], ref_variants=2,
                 ref_tumors=[2, 4], ref_names=None, small_phantoms=8, small_ref_variants=3, patch_size=None, batch_size=None),
    "tiny": dict(phantom="small", steps=100, test_cases=1, test_min_tumors=1, test_tumors=[1, 2], ref_variants=1,
                 ref_tumors=[1, 2], ref_names=["example_ct_sm"], small_phantoms=0, small_ref_variants=1, patch_size=16,
                 batch_size=2),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="smoke-test version for Testing/test_benchmarks.py")
    p.add_argument("--ks", type=int, nargs="+", default=None, help="training-set tumor counts (default 7 14 28)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--steps", type=int, help="training steps per run, the same for every mode (default 400)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (use 1 on a shared machine)")
    p.add_argument("--report-only", action="store_true", help="only rebuild JSON and plot from the cache")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results (results/tiny for --tiny)")
    p.add_argument("--work", type=Path, default=None, help="cache folder (default benchmarks/work/synthesis)")
    p.add_argument("--data", type=Path, default=bc.REPO_DIR / "Testing" / "Data", help="Testing/Data (TotalSegmentator CTs)")
    return p.parse_args(argv)


def protocol(config: dict, ks: list) -> dict:
    """small_data's config for its training and test-set builders."""
    return {**sd.PRESETS["full"], **{k: config[k] for k in ("phantom", "test_cases", "test_min_tumors", "test_tumors",
                                                            "ref_variants", "ref_tumors", "ref_names", "small_phantoms",
                                                            "small_ref_variants")}, "ks": sorted(ks)}


def train_settings(mode: str, seed: int, config: dict):
    from LiverTumorSegLib.training.train import TrainSettings

    extra = {k: config[k] for k in ("patch_size", "batch_size") if config.get(k)}
    return TrainSettings(seed=seed, minutes=600.0, max_steps=config["steps"], synthesis=mode, **extra)


def run_one(mode: str, k: int, seed: int, train_cases: list, tests: dict, config: dict) -> dict:
    from LiverTumorSegLib.core.inference import segment
    from LiverTumorSegLib.training.train import train_model

    t = time.perf_counter()
    model = train_model([(cid, img, lab) for cid, img, lab, _ in train_cases], train_settings(mode, seed, config))
    train_s = time.perf_counter() - t
    meta = model.meta
    t = time.perf_counter()
    out = {"mode": mode, "k": k, "seed": seed, "steps": meta["steps"], "threshold": model.threshold, "train_s": round(train_s, 1),
           "validation": {key: meta["validation"].get(key) for key in ("dice", "lesion_f1", "mode")},
           "validation_cases": meta.get("validation_cases"), "n_synthetic_cases": meta.get("n_synthetic_cases"),
           "synthesis": meta.get("synthesis"), "training_cases": [c[0] for c in train_cases],
           **mc.evaluate_predictor(lambda image, liver: segment(image, liver, model).tumor.array > 0, tests)}
    out["evaluate_s"] = round(time.perf_counter() - t, 1)
    return out


# ---- report -----------------------------------------------------------------------------------

def _stats(values) -> dict:
    v = [float(x) for x in values if x is not None]
    return {"mean": float(np.mean(v)) if v else None, "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 if v else None,
            "n": len(v), "values": [round(x, 4) for x in v]}


def _pooled(runs: list, test: str, key: str) -> dict:
    """{bin: [successes, total]} pooled over runs (key lesions_by_size or pred_lesions_by_size)."""
    return {b: [sum(r[test][key][b][i] for r in runs) for i in (0, 1)] for b in BINS}


def aggregate(runs: list) -> dict:
    out = {}
    for test in TESTS:
        per = {}
        for mode in MODES:
            for k in sorted({r["k"] for r in runs}):
                group = [r for r in runs if r["mode"] == mode and r["k"] == k and test in r]
                if not group:
                    continue
                polarity = {p: [sum(r[test]["recall_by_polarity"][p][x] for r in group) for x in ("found", "tumors")]
                            for p in ("hypodense", "hyperdense")}
                per.setdefault(mode, {})[str(k)] = {
                    "seeds": [r["seed"] for r in group],
                    "dice_mean": _stats([r[test]["dice_mean"] for r in group]),
                    "lesion_f1_mean": _stats([r[test]["lesion_f1_mean"] for r in group]),
                    "recall_by_size": _pooled(group, test, "lesions_by_size"),
                    "precision_by_size": _pooled(group, test, "pred_lesions_by_size"),
                    "recall_by_polarity": polarity,
                }
        out[test] = per
    return out


def paired(runs: list) -> dict:
    """Per-case Dice differences paired by seed (same training cases): auto - off, fixed - off, auto - fixed."""
    by = {(r["mode"], r["k"], r["seed"]): r for r in runs}
    out = {}
    for a, b in (("auto", "off"), ("fixed", "off"), ("auto", "fixed")):
        for test in TESTS:
            for k in sorted({r["k"] for r in runs}):
                seeds = sorted(s for (m, kk, s) in by if m == a and kk == k and (b, k, s) in by)
                diffs = [by[(a, k, s)][test]["dice_mean"] - by[(b, k, s)][test]["dice_mean"] for s in seeds
                         if test in by[(a, k, s)] and test in by[(b, k, s)]]
                if diffs:
                    out.setdefault(f"{a}-{b}", {}).setdefault(test, {})[str(k)] = {
                        **_stats(diffs), "seeds": seeds, "better": int(sum(d > 0 for d in diffs))}
    return out


def search_check(runs: list) -> list:
    """For each auto run: what it chose, its validation score gain over off, the test gain over the
    off run of the same seed, and whether the unguarded best was stable under leave-one-tumor-out."""
    by = {(r["mode"], r["k"], r["seed"]): r for r in runs}
    rows = []
    for r in runs:
        syn = r.get("synthesis") or {}
        if r["mode"] != "auto" or "candidates" not in syn:
            continue
        scores = {c["name"]: c["score"] for c in syn["candidates"]}
        chosen = syn["chosen"]
        gain = None if scores.get(chosen) is None or scores.get("off") is None else scores[chosen] - scores["off"]
        unguarded = syn.get("unguarded_best")
        off = by.get(("off", r["k"], r["seed"]))
        rows.append({"mode": r["mode"], "k": r["k"], "seed": r["seed"], "chosen": chosen, "unguarded_best": unguarded,
                     "stable_under_leave_one_out": syn.get("stable_under_leave_one_out"),
                     "held_out_tumors": syn.get("held_out_tumors"), "scores": scores,
                     "validation_gain_vs_off": None if gain is None else round(gain, 4),
                     "test_gain_vs_off": None if off is None else {t: round(r[t]["dice_mean"] - off[t]["dice_mean"], 4)
                                                                   for t in TESTS if t in r and t in off}})
    return rows


def plot(summary: dict, path: Path, title: str) -> None:
    plt = bc.pyplot()
    tests = [t for t in TESTS if summary.get(t)]
    fig, axes = plt.subplots(1, len(tests), figsize=(5.2 * len(tests), 4.2), squeeze=False)
    colors = {"off": "0.5", "fixed": "C0", "auto": "C3"}
    for ax, test in zip(axes[0], tests):
        ks = sorted({int(k) for per in summary[test].values() for k in per})
        for j, mode in enumerate(MODES):
            per = summary[test].get(mode, {})
            for i, k in enumerate(ks):
                entry = per.get(str(k))
                if not entry:
                    continue
                x = i + (j - 1) * 0.25
                ax.bar(x, entry["dice_mean"]["mean"], width=0.24, color=colors[mode], label=mode if i == 0 else None)
                ax.plot([x] * len(entry["dice_mean"]["values"]), entry["dice_mean"]["values"], "k.", ms=4)
        ax.set_xticks(range(len(ks)), [f"K = {k}" for k in ks])
        ax.set_ylim(0, 1)
        ax.set_ylabel("per-case Dice (bars: mean over seeds, dots: seeds)")
        ax.set_title({"phantom": "held-out phantoms", "reference_synth": "tumors in the real CTs",
                      "small_tumor": "small-tumor set"}[test])
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    bc.save_figure(fig, path)
    plt.close(fig)


def _cell(counts) -> str:
    found, total = counts
    return "-" if total == 0 else f"{found}/{total}"


def markdown(summary: dict, pairs: dict) -> str:
    """The tables for benchmarks/RESULTS.md: Dice, recall (precision) by size, recall by polarity."""
    lines = ["| test set | mode | K | seeds | per-case Dice | lesion F1 | 5-10 mm R (P) | 10-20 mm R (P) | > 20 mm R (P) | hypodense | hyperdense |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for test, per in summary.items():
        for mode, per_k in per.items():
            for k, e in per_k.items():
                d, f = e["dice_mean"], e["lesion_f1_mean"]
                size = []
                for b in BINS:
                    r, p = e["recall_by_size"][b], e["precision_by_size"][b]
                    prec = "-" if p[1] == 0 else f"{p[0] / p[1]:.2f}"
                    size.append(f"{_cell(r)} ({prec})")
                pol = [_cell(e["recall_by_polarity"][p]) for p in ("hypodense", "hyperdense")]
                lines.append(f"| {test} | {mode} | {k} | {len(e['seeds'])} | {d['mean']:.3f} ± {d['std']:.3f} | "
                             f"{f['mean']:.3f} | " + " | ".join(size + pol) + " |")
    lines += ["", "| paired per-case Dice difference | test set | K | mean ± std | seeds better | per seed |", "|---|---|---|---|---|---|"]
    for name, per_test in pairs.items():
        for test, per_k in per_test.items():
            for k, e in per_k.items():
                lines.append(f"| {name} | {test} | {k} | {e['mean']:+.3f} ± {e['std']:.3f} | {e['better']}/{e['n']} | "
                             + ", ".join(f"{v:+.3f}" for v in e["values"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    preset = "tiny" if args.tiny else "full"
    config = dict(PRESETS[preset])
    if args.steps:
        config["steps"] = args.steps
    ks = args.ks or ([7] if args.tiny else [7, 14, 28])
    seeds = args.seeds or ([0] if args.tiny else [0, 1, 2])
    threads = bc.set_threads(args.threads)
    out_dir = args.out or bc.results_dir(preset)
    work = (args.work or bc.WORK_DIR / "synthesis") / f"{preset}-{bc.config_key({**config, 'threads': threads})}"
    work.mkdir(parents=True, exist_ok=True)
    bc.write_json(work / "config.json", {"preset": preset, "threads": threads, **config})
    start = time.perf_counter()
    bc.log(f"synthesis benchmark: preset {preset}, cache {work}, torch threads {threads}")
    plan = [(seed, k, mode) for seed in seeds for k in ks for mode in args.modes]
    todo = [p for p in plan if not (work / f"{p[2]}_k{p[1]}_s{p[0]}.json").exists()]
    if todo and not args.report_only:
        # Training sets are always built for the full grid's K (nested per seed), so a run of one K
        # trains on the same cases as it would in the full grid.
        proto = protocol(config, sorted(set(ks) | (set(FULL_KS) if preset == "full" else set())))
        tests = held_out_test_sets(proto, args.data)
        bc.write_json(work / "test_sets.json", {n: sd.describe_set(c) for n, c in tests.items()})
        bc.log("test sets: " + ", ".join(f"{n} {len(c)} cases" for n, c in tests.items()))
        sets = {}
        for seed, k, mode in todo:
            if seed not in sets:
                sets[seed] = sd.training_sets(seed, proto)
            result = run_one(mode, k, seed, sets[seed][k], tests, config)
            result.update(engine_hash=sd.engine_hash(), finished=bc.now())
            bc.write_json(work / f"{mode}_k{k}_s{seed}.json", result)
            chosen = (result.get("synthesis") or {}).get("chosen", "")
            bc.log(f"{mode} K={k} s{seed} {chosen}: " + mc.log_line({**result, "variant": mode}, tests)
                   + f"; train {result['train_s']:.0f} s, {result['steps']} steps")
    runs = [bc.read_json(work / f"{m}_k{k}_s{s}.json") for s, k, m in plan if (work / f"{m}_k{k}_s{s}.json").exists()]
    summary, pairs = aggregate(runs), paired(runs)
    result = {**bc.result_header("synthesis", "synthesis.py", preset, config), "machine": bc.machine(), "torch_threads": threads,
              "planned": [f"{m}_k{k}_s{s}" for s, k, m in plan], "completed": [f"{r['mode']}_k{r['k']}_s{r['seed']}" for r in runs],
              "missing": [f"{m}_k{k}_s{s}" for s, k, m in plan if not (work / f"{m}_k{k}_s{s}.json").exists()],
              "engine_hashes": sorted({r.get("engine_hash") for r in runs}),
              "test_sets": bc.read_json(work / "test_sets.json") if (work / "test_sets.json").exists() else {},
              "summary": summary, "paired": pairs, "search_check": search_check(runs), "runs": runs,
              "wall_s_this_invocation": round(time.perf_counter() - start, 1)}
    out_dir.mkdir(parents=True, exist_ok=True)
    bc.write_json(out_dir / "synthesis.json", result)
    if runs:
        plot(summary, out_dir / "synthesis.png", f"synthesis off / fixed / auto, {config['steps']} steps per training, "
             f"{len(runs)} of {len(plan)} runs")
    table = markdown(summary, pairs)
    print(table)
    bc.log(f"wrote {out_dir / 'synthesis.json'} ({len(result['completed'])} runs, {len(plan)} planned by this command)")
    return result


if __name__ == "__main__":
    main()
