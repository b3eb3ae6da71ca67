"""Markdown tables from benchmarks/results/{small_data,speed}.json (pasted into RESULTS.md).

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


def small_data_tables(d: dict) -> str:
    out = []
    for test, per_model in d["summary"].items():
        info = d["test_sets"].get(test, {})
        out.append(f"\n**Test set `{test}`**: {info.get('n_cases')} cases, {info.get('n_tumors')} tumors "
                   f"(by size {info.get('tumors_by_size')}).\n")
        out.append("| model | K | seeds | per-case Dice | global Dice | lesion F1 | HD95 mm | recall <10 / 10-20 / >20 mm | train steps |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for model, per_k in per_model.items():
            for k, e in per_k.items():
                rec = e["recall_by_size_pooled"]
                steps = _f(e.get("train_steps"), 0) if e.get("train_steps") else "-"
                out.append(f"| {NAMES.get(model, model)} | {k} | {len(e['seeds'])} | {_f(e['dice_mean'])} | {_f(e['dice_global'])} | "
                           f"{_f(e['lesion_f1_mean'])} | {_f(e['hd95_mm_mean'], 1)} | "
                           f"{_r(rec['<10mm'])} / {_r(rec['10-20mm'])} / {_r(rec['>20mm'])} | {steps} |")
    return "\n".join(out)


def speed_tables(d: dict) -> str:
    out = ["| model | slices | total s | read | crop+resample | Hessian | network | back to grid | threshold+lesions | write | segment() s | peak MiB | repeats |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(d["segment"], key=lambda r: (r["arch"], r["shape_zyx"][0])):
        m = r["median"]
        out.append(f"| {NAMES.get(r['arch'], r['arch'])} | {r['shape_zyx'][0]} | {m['total_s']:.2f} | {m['read_s']:.2f} | "
                   f"{m['crop_resample_s'] + m['normalize_s']:.2f} | {m['hessian_s']:.2f} | {m['network_s']:.2f} | "
                   f"{m['to_input_grid_s']:.2f} | {m['threshold_s'] + m['lesions_s']:.2f} | {m['write_s']:.2f} | "
                   f"{m['segment_s']:.2f} | {r['peak_rss_mib']:.0f} | {r['repeats']} |")
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
    c = d["config"]
    out = [f"One training set (K = {c['k']}, seed {c['seed']}, {c['phantom']} phantoms), {c['steps']} steps for every "
           f"variant, {d['test_set']['n_cases']} held-out phantoms with {d['test_set']['n_tumors']} tumors; each model "
           "at its own validation-chosen threshold, with and without the liver-surface sliver removal.\n",
           "| variant | slivers | threshold | per-case Dice | global Dice | lesion F1 | lesion precision | lesion recall "
           "| found hypodense | found hyperdense |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for v in d["variants"]:
        for key, label in (("keep_slivers", "kept"), ("drop_slivers", "removed")):
            x = v[key]
            pol = x["recall_by_polarity"]
            out.append(f"| {v['variant']} | {label} | {v['threshold']} | {x['dice_mean']:.3f} | {x['dice_global']:.3f} | "
                       f"{x['lesion_f1_mean']:.3f} | {x['lesion_precision_pooled']:.3f} | {x['lesion_recall_pooled']:.3f} | "
                       f"{pol['hypodense']['found']}/{pol['hypodense']['tumors']} | "
                       f"{pol['hyperdense']['found']}/{pol['hyperdense']['tumors']} |")
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
