"""Experiment (issue 8): the spot pass (LiverTumorSegLib/spots.py) beside the shipped default model.

Scores the shipped default model alone and with the pass, the pass fitted on the K = 7 training
set of method_changes.py (`--seed`; 3 phantoms) and 4 copies of each with synthetic small tumors,
optionally plus one real CT with synthetic tumors (then tested on the other real CT only, so no
background is both fitted and tested), on the held-out sets. `--min-diameter 4` is the first
version, which also took 5-10 mm spots. Results in benchmarks/RESULTS.md.

    python benchmarks/experiments/spot_detector.py --min-diameter 4 --out benchmarks/results/spot_detector.json
    python benchmarks/experiments/spot_detector.py --min-diameter 4 --real-ct example_ct_dicom --out ..._fit_dicom.json
    python benchmarks/experiments/spot_detector.py --seed 1 --out benchmarks/results/spot_detector_min10_s1.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "LiverTumorSeg"))

from LiverTumorSegLib.spots import SpotSettings, fit_spot_detector, spot_fitting_cases  # noqa: E402


def main(argv=None) -> dict:
    import benchcommon as bc
    import method_changes as mc
    import small_data as sd
    from LiverTumorSegLib.inference import mask_from_probability, segment
    from LiverTumorSegLib.modelstore import default_model_path, load_model
    from LiverTumorSegLib.synthesis import load_reference_cases

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", type=int, default=4, help="synthetic small-tumor copies per fitting case")
    p.add_argument("--real-ct", default=None, help="also fit on this reference CT (with synthetic tumors); test on the other only")
    p.add_argument("--seed", type=int, default=0, help="training set of method_changes.py (K = 7) the pass is fitted on")
    p.add_argument("--min-diameter", type=float, default=SpotSettings.min_diameter_mm, help="smallest candidate kept, mm")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    bc.set_threads(1)
    start = time.perf_counter()
    config = mc.PRESETS["full"]
    protocol = {**sd.PRESETS["full"], "phantom": config["phantom"], "ks": [config["k"]], "test_cases": config["test_cases"],
                "test_min_tumors": config["test_min_tumors"], "ref_variants": config["ref_variants"],
                "small_phantoms": config["small_phantoms"], "small_ref_variants": config["small_ref_variants"],
                "ref_names": sd.PRESETS["full"]["ref_names"]}
    data = REPO / "Testing" / "Data"
    tests = sd.held_out_test_sets(protocol, data)
    train = sd.training_sets(args.seed, protocol)[7]
    fitting = list(spot_fitting_cases([(c[0], c[1], c[2]) for c in train], seed=args.seed, variants=args.variants))
    if args.real_ct:
        for name, image, liver in load_reference_cases(data):
            if name == args.real_ct:
                fitting += list(spot_fitting_cases([(name, image, image.with_array(liver.astype(np.uint8)))], seed=77,
                                                   variants=args.variants))
        tests = {k: [c for c in v if not c[0].startswith(args.real_ct + "_")] for k, v in tests.items()}
    detector = fit_spot_detector(fitting, SpotSettings(min_diameter_mm=args.min_diameter))
    model = load_model(default_model_path())
    model.meta.pop("spot_detector", None)  # the network alone: the pass measured here is the one fitted above
    maps, spot_seconds = {}, []
    for cases in tests.values():
        for _, image, labels in cases:
            liver = labels.array > 0
            t = time.perf_counter()
            spot_map = np.zeros(image.shape, np.float32)
            detector.add_to(spot_map, image, liver, model.threshold)
            spot_seconds.append(round(time.perf_counter() - t, 2))
            maps[id(image)] = (segment(image, liver, model).probability.array, spot_map)

    def predictor(network: bool, spots: bool):
        def predict(image, liver):
            probability, spot_map = maps[id(image)]
            combined = probability if network else np.zeros_like(probability)
            if spots:
                combined = np.maximum(combined, spot_map)
            return mask_from_probability(combined, liver, model.threshold, image.spacing_zyx, model.min_lesion_mm3)
        return predict

    rows = {name: mc.evaluate_predictor(predictor(*use), tests)
            for name, use in (("network", (True, False)), ("spots", (False, True)), ("network+spots", (True, True)))}
    for name, r in rows.items():
        print(name, mc.log_line({"variant": name, "seed": args.seed, **r}, tests), flush=True)
    out = {**bc.result_header("spot_detector", "experiments/spot_detector.py", "full", vars(args) | {"out": str(args.out)}),
           "machine": bc.machine(), "model": str(default_model_path()), "fitted_on": sorted({g for g, _, _ in fitting}),
           "detector": detector.to_dict(), "spot_map_seconds": spot_seconds, "results": rows,
           "wall_s": round(time.perf_counter() - start, 1)}
    bc.write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
