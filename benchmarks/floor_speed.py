"""What the floors (core/floor.py, core/relative_floor.py) and the outline step (core/outline.py) cost
`segment` on a full-size CT: the shipped default model without its relative floor, with its lesions
as the network drew them and out to their edges; as shipped (relative floor on); and with an
intensity floor written into its model.json, on speed.py's 512 x 512 x 200 phantom, one torch
thread, `--repeats` timed rounds after one warm-up (each round runs every variant once, so a busy
machine slows all of them alike).

The floor is 91 HU (the one Retrain fits on the real case's half A), not fitted on this phantom:
its liver is brighter, so the floor marks a few hundred spots, each of which passes the speck and
sliver tests. That is the expensive case; a floor fitted on the user's own scanner marks far fewer.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/floor_speed.py      # about a minute
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import benchcommon as bc
import speed
from relative_floor import without_floor

FLOOR = {"threshold_hu": 91.0, "sigma_mm": 1.0, "min_lesion_mm3": 50.0}


def main(argv=None) -> dict:
    from LiverTumorSegLib.core.inference import segment
    from LiverTumorSegLib.storage import images
    from LiverTumorSegLib.storage.modelstore import default_model_path, load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--slices", type=int, default=200)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    bc.set_threads(1)
    folder = bc.WORK_DIR / "floor_speed"
    folder.mkdir(parents=True, exist_ok=True)
    image_path, liver_path = speed.make_volume(args.slices, 512, folder)
    image = images.read_image(image_path)
    liver = images.read_liver_mask(liver_path, image)
    shipped = load_model(default_model_path())
    plain = without_floor(shipped)  # as shipped before the relative floor (core/relative_floor.py)
    floored = copy.copy(shipped)
    floored.meta = {**shipped.meta, "intensity_floor": FLOOR}
    variants = {"default model, lesions as drawn, no relative floor": (plain, False),
                "default model, no relative floor": (plain, True), "default model": (shipped, True),
                "default model + floor": (floored, True)}
    runs = {name: [] for name in variants}
    for round_ in range(args.repeats + 1):  # round 0 is the warm-up
        for name, (model, edges) in variants.items():
            result = segment(image, liver, model, edges=edges)
            if round_:
                runs[name].append(result)
    rows = {}
    for name, done in runs.items():
        rows[name] = {key: round(statistics.median(r.timings.get(key, 0.0) for r in done), 2)
                      for key in ("total_s", "floor_s", "edges_s")} | {"lesions": len(done[0].lesions)}
        bc.log(f"{name}: {rows[name]}")
    result = {**bc.result_header("floor_speed", "floor_speed.py", "full", vars(args) | {"out": str(args.out)}),
              "shape_zyx": list(image.shape), "floor": FLOOR, "machine": bc.machine(), "rows": rows}
    bc.write_json((args.out or bc.results_dir("full")) / "floor_speed.json", result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
