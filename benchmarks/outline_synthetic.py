"""What the outline step (core/outline.py) does where real data cannot show it: the shipped default
model on the full protocol's held-out synthetic test sets (phantoms, tumors synthesised into the
two real tumor-free CTs, the small-tumor set), each case segmented with its lesions as the network
drew them and out to their edges. Per set: per-case Dice, pooled global Dice, recall and lesion
precision by size. The edge rule was chosen on the real case (RESULTS.md); this checks that it
does not break what the synthetic sets measure.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/outline_synthetic.py     # about 5 minutes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import benchcommon as bc

SIZES = ("5-10mm", "10-20mm", ">20mm")


def main(argv=None) -> dict:
    from LiverTumorSegLib.core.inference import segment
    from LiverTumorSegLib.evaluation.metrics import evaluate_case, summarize
    from LiverTumorSegLib.evaluation.test_sets import FULL_TEST_SETS, held_out_test_sets
    from LiverTumorSegLib.storage.modelstore import default_model_path, load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=bc.REPO_DIR / "Testing" / "Data" / "totalsegmentator")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    bc.set_threads(1)
    model = load_model(default_model_path())
    rows = {}
    for set_name, cases in held_out_test_sets(FULL_TEST_SETS, args.data).items():
        scored = {False: [], True: []}
        for case_id, image, labels in cases:
            liver, truth = labels.array > 0, labels.array == 2
            for edges in (False, True):
                pred = segment(image, liver, model, edges=edges).tumor.array > 0
                scored[edges].append(evaluate_case(pred, truth, labels.spacing_zyx))
        for edges, done in scored.items():
            s = summarize(done)
            row = {"dice_mean": s["dice_mean"], "dice_global": s["dice_global"], "found": {k: s["lesions_by_size"][k] for k in SIZES},
                   "precision": {k: s["precision_by_size"][k] for k in SIZES}, "n_cases": s["n_cases"]}
            rows[f"{set_name}: {'edges' if edges else 'as drawn'}"] = row
            bc.log(f"{set_name} edges={edges}: {row}")
    result = {**bc.result_header("outline_synthetic", "outline_synthetic.py", "full", {"data": str(args.data)}),
              "machine": bc.machine(), "rows": rows}
    path = (args.out or bc.results_dir("full")) / "outline_synthetic.json"
    bc.write_json(path, result)
    print("| test set | outline | per-case Dice | global Dice | " + " | ".join(SIZES) + " |")
    print("|---|---|---|---|" + "---|" * len(SIZES))
    for name, row in rows.items():
        cells = " | ".join(f"{row['found'][k][0]} / {row['found'][k][1]} ({'-' if row['precision'][k] is None else format(row['precision'][k], '.2f')})"
                           for k in SIZES)
        print(f"| {name.split(':')[0]} | {name.split(': ')[1]} | {row['dice_mean']:.3f} | {row['dice_global']:.3f} | {cells} |")
    print(f"written to {path}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
