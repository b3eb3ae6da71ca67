"""Markdown tables from benchmarks/results/{small_data,method_changes,speed}.json (pasted into RESULTS.md).

Accuracy is given by lesion size: recall / precision for 5-10, 10-20 and > 20 mm next to Dice
(results written before the 5 mm split show recall for < 10 mm instead).

    python benchmarks/tables.py [results folder]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import benchcommon as bc

NAMES = {"mhpnet": "MHP-Net", "mhpnet_no_hessian": "MHP-Net, no Hessian", "mhpnet_single_scale": "MHP-Net, 1 Hessian scale",
         "unet3d": "3D U-Net", "mhpnet_synthetic": "MHP-Net + synthetic copies", "threshold": "threshold floor (HU)",
         "threshold_relative": "threshold floor (HU - liver median)"}


def _f(stats, digits=3) -> str:
    if stats is None or stats.get("mean") is None:
        return "n/a"
    text = f"{stats['mean']:.{digits}f}"
    if stats.get("n", 0) > 1:
        text += f" ± {stats['std']:.{digits}f}"
    return text


def _r(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


SIZES = ("5-10mm", "10-20mm", ">20mm")


def by_size(recall: dict, precision: dict | None) -> str:
    """'R / P' for 5-10, 10-20, > 20 mm (older results: recall only, with < 10 mm)."""
    if "5-10mm" not in recall:
        return " | ".join(_r(recall.get(b)) for b in ("<10mm", "10-20mm", ">20mm"))
    return " | ".join(f"{_r(recall.get(b))} / {_r((precision or {}).get(b))}" for b in SIZES)


def size_header(recall: dict) -> str:
    if "5-10mm" not in recall:
        return "recall <10 mm | recall 10-20 mm | recall >20 mm"
    return "5-10 mm R / P | 10-20 mm R / P | >20 mm R / P"


def small_data_tables(d: dict) -> str:
    out = []
    for test, per_model in d["summary"].items():
        info = d["test_sets"].get(test, {})
        out.append(f"\n**Test set `{test}`**: {info.get('n_cases')} cases, {info.get('n_tumors')} tumors "
                   f"(by size {info.get('tumors_by_size')}).\n")
        first = next(e for per_k in per_model.values() for e in per_k.values())
        out.append(f"| model | K | seeds | per-case Dice | global Dice | lesion F1 | HD95 mm | {size_header(first['recall_by_size_pooled'])} | train steps |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for model, per_k in per_model.items():
            for k, e in per_k.items():
                steps = _f(e.get("train_steps"), 0) if e.get("train_steps") else "-"
                out.append(f"| {NAMES.get(model, model)} | {k} | {len(e['seeds'])} | {_f(e['dice_mean'])} | {_f(e['dice_global'])} | "
                           f"{_f(e['lesion_f1_mean'])} | {_f(e['hd95_mm_mean'], 1)} | "
                           f"{by_size(e['recall_by_size_pooled'], e.get('precision_by_size_pooled'))} | {steps} |")
    return "\n".join(out)


def speed_tables(d: dict) -> str:
    out = ["| model | slices | total s | read | crop+resample | Hessian | network | back to grid | spot pass | threshold+lesions | write | segment() s | peak MiB | repeats |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(d["segment"], key=lambda r: (r["arch"], r["shape_zyx"][0])):
        m = r["median"]
        out.append(f"| {NAMES.get(r['arch'], r['arch'])} | {r['shape_zyx'][0]} | {m['total_s']:.2f} | {m['read_s']:.2f} | "
                   f"{m['crop_resample_s'] + m['normalize_s']:.2f} | {m['hessian_s']:.2f} | {m['network_s']:.2f} | "
                   f"{m['to_input_grid_s']:.2f} | {m.get('spots_s', 0.0):.2f} | {m['threshold_s'] + m['lesions_s']:.2f} | {m['write_s']:.2f} | "
                   f"{m['segment_s']:.2f} | {r['peak_rss_mib']:.0f} | {r['repeats']} |")
    out.append("")
    cli = d.get("command_line")
    if cli:
        runs = ", ".join(f"{r['wall_s']:.2f}" for r in cli["runs"])
        out.append(f"Command line end to end ({cli['command']}), {cli['shape_zyx'][0]} slices: median **{cli['median_wall_s']:.2f} s** "
                   f"wall ({runs}), {cli['median_cpu_s']:.2f} s CPU, peak {cli['median_peak_rss_mib']:.0f} MiB.")
        out.append("")
    out.append("| U-Net / MHP-Net | slices | total time | network time | peak memory |")
    out.append("|---|---|---|---|---|")
    for n, v in d["ratios"]["unet3d_over_mhpnet_by_slices"].items():
        out.append(f"| | {n} | {v['total_s']:.2f} | {v['network_s']:.2f} | {v['peak_rss']:.2f} |")
    out.append("")
    out.append("| training to validation Dice target | target | reached | seconds | steps | history (steps: Dice) |")
    out.append("|---|---|---|---|---|---|")
    for arch, t in d["training_to_target"].items():
        hist = ", ".join(f"{h['steps']}: {h['validation_dice']}" for h in t["history"])
        out.append(f"| {NAMES.get(arch, arch)} | {t['target_dice']} | {t['reached']} | {t['seconds_to_target'] or t['wall_s']} | "
                   f"{t['steps_to_target'] or '-'} | {hist} |")
    return "\n".join(out)


def paired_tables(d: dict) -> str:
    out = []
    for test, per_model in d.get("paired_vs_mhpnet", {}).items():
        out.append(f"\n**Paired by seed, test set `{test}`**: MHP-Net's per-case Dice minus the other model's, "
                   "same training cases (mean ± std over seeds; how many seeds MHP-Net was better).\n")
        ks = sorted({int(k) for per_k in per_model.values() for k in per_k})
        out.append("| MHP-Net minus | " + " | ".join(f"K = {k}" for k in ks) + " |")
        out.append("|---|" + "---|" * len(ks))
        for model, per_k in per_model.items():
            cells = [f"{_f(per_k[str(k)])} ({per_k[str(k)]['reference_better']}/{per_k[str(k)]['n']})" if str(k) in per_k else "-"
                     for k in ks]
            out.append(f"| {NAMES.get(model, model)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def method_tables(d: dict) -> str:
    """Per test set: every chain variant (each adds one change to the row above) and the floors,
    by size and polarity; then each change's paired per-case Dice difference against the row above."""
    c = d["config"]
    seeds = sorted({v["seed"] for v in d["variants"]})
    out = [f"One training set per seed (K = {c['k']} tumors, {c['phantom']} phantoms, seeds {seeds}), {c['steps']} fixed "
           "steps for every variant; each model at its own validation-chosen threshold. Each variant adds one change to "
           "the row above it. Recall / precision by lesion size (equivalent diameter); floors fitted on the same cases."]
    for test, info in d["test_sets"].items():
        out.append(f"\n**{test}**: {info['n_cases']} cases, {info['n_tumors']} tumors {info['tumors_by_size']}, "
                   f"slices {min(info.get('slice_mm') or [0]):g}-{max(info.get('slice_mm') or [0]):g} mm\n")
        out.append("| variant | seed | threshold | per-case Dice | lesion F1 | 5-10 mm R / P | 10-20 mm R / P | >20 mm R / P "
                   "| found hypo | found hyper |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        rows = d["variants"] + [f for per_seed in d["floors"].values() for f in per_seed.values()]
        for v in rows:
            x = v[test]
            pol = x["recall_by_polarity"]
            threshold = v.get("threshold", f"{v.get('threshold_hu', 0):.0f} HU")
            out.append(f"| {NAMES.get(v['variant'], v['variant'])} | {v['seed']} | {threshold} | {x['dice_mean']:.3f} | "
                       f"{_r(x['lesion_f1_mean'])} | {by_size(x['recall_by_size'], x['precision_by_size'])} | "
                       f"{pol['hypodense']['found']}/{pol['hypodense']['tumors']} | "
                       f"{pol['hyperdense']['found']}/{pol['hyperdense']['tumors']} |")
    out.append("\n**Each change against the variant above it** (per-case Dice difference, paired by case and seed; "
               "5-10 mm tumors found, difference), by test set:\n")
    out.append("| change | " + " | ".join(d["test_sets"]) + " |")
    out.append("|---|" + "---|" * len(d["test_sets"]))
    for prev, cur in zip(d["variants"], d["variants"][1:]):
        if prev["seed"] != cur["seed"]:
            continue
        cells = []
        for test in d["test_sets"]:
            a, b = prev[test]["per_case_dice"], cur[test]["per_case_dice"]
            diff = sum(b[k] - a[k] for k in a) / max(len(a), 1)
            small = cur[test]["lesions_by_size"]["5-10mm"][0] - prev[test]["lesions_by_size"]["5-10mm"][0]
            cells.append(f"{diff:+.3f}, {small:+d} small")
        out.append(f"| {cur['variant']} (seed {cur['seed']}) | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else bc.RESULTS_DIR
    if (folder / "small_data.json").exists():
        data = json.loads((folder / "small_data.json").read_text())
        print("## small_data\n" + small_data_tables(data))
        print(paired_tables(data))
    if (folder / "method_changes.json").exists():
        print("\n## method_changes\n" + method_tables(json.loads((folder / "method_changes.json").read_text())))
    if (folder / "speed.json").exists():
        print("\n## speed\n" + speed_tables(json.loads((folder / "speed.json").read_text())))


if __name__ == "__main__":
    main()
