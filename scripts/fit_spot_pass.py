"""Fit the spot pass (applied by LiverTumorSegLib/core/spots.py, fitted by training/spot_fitting.py)
of the shipped default model.

Fitted on the rehearsal phantoms (training/rehearsal.py: the default recipe's medium phantoms, 40 %
hyperdense tumors, seeds no test set uses) and 4 copies of each with synthetic 5-20 mm tumors;
not on the real reference CTs, whose backgrounds the benchmarks' test sets use. Writes the
"spot_detector" entry of the model's model.json (atomically); the weights are not touched, so a
model rebuilt by build_default_model.py gets its spot pass the same way.

    python scripts/fit_spot_pass.py                    # Resources/Models/default
    python scripts/fit_spot_pass.py --model DIR
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LiverTumorSeg"))

from LiverTumorSegLib.storage.fsutil import write_json_atomic  # noqa: E402
from LiverTumorSegLib.storage.modelstore import META_FILE, default_model_path, read_model_json  # noqa: E402
from LiverTumorSegLib.training.rehearsal import rehearsal_cases  # noqa: E402
from LiverTumorSegLib.training.spot_fitting import SPOT_VARIANTS, fit_spot_detector, spot_fitting_cases  # noqa: E402

FITTING_PHANTOMS = 6
SEED = 0


def default_spot_pass() -> dict | None:
    """The default model's spot pass, as model.json stores it (deterministic)."""
    detector = fit_spot_detector(spot_fitting_cases(rehearsal_cases(FITTING_PHANTOMS), SEED))
    if detector is None:
        return None
    # The text names the modules as they were when the shipped model.json was written (kept, so a
    # rerun reproduces it): spots.SYNTHETIC_SMALL is training/spot_fitting.py's now.
    return {**detector.to_dict(), "fitted_on": f"{FITTING_PHANTOMS} rehearsal phantoms (rehearsal.py) and {SPOT_VARIANTS} copies "
                                                f"of each with synthetic 5-20 mm tumors (spots.SYNTHETIC_SMALL, seed {SEED}), "
                                                "by scripts/fit_spot_pass.py"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=default_model_path(), help="model folder (default: the shipped one)")
    args = parser.parse_args()
    meta_path = args.model / META_FILE
    meta, problem = read_model_json(args.model)
    if problem or not meta_path.is_file():
        raise SystemExit(problem or f"no {META_FILE} in {args.model}: give a model folder (--model)")
    start = time.perf_counter()
    meta["spot_detector"] = default_spot_pass()
    write_json_atomic(meta_path, meta)
    summary = (meta["spot_detector"] or {}).get("fit_summary")
    print(f"spot pass fitted in {time.perf_counter() - start:.0f} s: {summary} -> {meta_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
