"""The automatic liver (issue 24): Dice of the found liver on every real CT we have, the tumor
Dice on LiTS-117 with the found liver against the true one, and the liver step's time and peak
memory on a 512 x 512 x 200 CT with one and two threads.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/liver.py [--real-case build/real_case] \
        [--parity /work/parity/compare_f16.json] [--only dice|field_of_view|speed] [--force] [--wait-idle 900]

Results go to benchmarks/results/liver.json; entries already there are kept unless --force
(resumable: a run that stops keeps what it measured). Deterministic (no randomness; the speed CT is
benchmarks/big_volume.py's synthetic 512 x 512 x 200). Each speed run is a fresh subprocess, so its
peak resident memory is its own; the load average before it says whether the machine was idle.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchcommon import REPO_DIR, RESULTS_DIR, WORK_DIR, machine, write_json

sys.path.insert(0, str(REPO_DIR / "LiverTumorSeg"))

OUT = RESULTS_DIR / "liver.json"
DATA = REPO_DIR / "Testing" / "Data" / "totalsegmentator"


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return float(2 * np.count_nonzero(a & b) / total) if total else 1.0


def real_cts(real_case: Path | None):
    """(name, CT in HU, true liver bool) of each real CT available."""
    from LiverTumorSegLib.storage import images

    for name, ct_name, liver_name in (("totalseg_ct_sm", "example_ct_sm.nii.gz", "example_ct_sm_liver.nii.gz"),
                                      ("totalseg_ct_dicom", "example_ct_dicom", "example_ct_dicom_liver.nii.gz")):
        ct = images.read_image(DATA / ct_name, keep_integer=True)
        yield name, ct, images.read_liver_mask(DATA / liver_name, reference=ct), None
    if real_case is not None:
        from LiverTumorSegLib.evaluation.real_case import find_real_case, read_real_case

        ct, labels = read_real_case(*find_real_case(real_case))
        yield "lits117_crop_1.5mm_assumed", ct, labels.array > 0, labels.array == 2


def measure_dice(real_case: Path | None) -> dict:
    import torch

    from LiverTumorSegLib.core.inference import segment
    from LiverTumorSegLib.core.lesions import label_lesions
    from LiverTumorSegLib.core.liver import find_liver
    from LiverTumorSegLib.core.liver_checks import check_liver
    from LiverTumorSegLib.core.liver_network import load_liver_network
    from LiverTumorSegLib.storage.modelstore import default_model_path, liver_model_path, load_model

    torch.set_num_threads(1)
    network = load_liver_network(liver_model_path())
    model = load_model(default_model_path())
    results = {}
    for name, ct, truth, tumor in real_cts(real_case):
        start = time.perf_counter()
        found = find_liver(ct, network)
        seconds = time.perf_counter() - start
        check = check_liver(ct, found.mask)
        mask = check.mask.array > 0
        outside = mask & ~truth
        row = {
            "shape_zyx": list(ct.shape), "spacing_xyz_mm": list(ct.spacing),
            "dice_network": round(dice(found.mask.array, truth), 4),
            "dice_after_checks": round(dice(mask, truth), 4),
            "liver_ml_true": round(float(truth.sum()) * ct.voxel_volume_mm3 / 1000, 1),
            "liver_ml_found": round(check.volume_ml, 1),
            "ml_outside_true_liver": round(float(outside.sum()) * ct.voxel_volume_mm3 / 1000, 1),
            "mean_hu_found": round(check.mean_hu, 1),
            "plausible": check.plausible, "problems": check.problems, "notes": check.notes,
            "seconds_1_thread": round(seconds, 1),
        }
        for which, liver in (("true_liver", truth), ("found_liver", mask)):
            # the default model's lesions with each liver (in a tumor-free CT all false), and the tumor
            # Dice with the found liver against the same run with the true one
            result = segment(ct, liver, model)
            lesions, count = label_lesions(result.tumor.array > 0)
            outside = [i for i in range(1, count + 1) if not (truth[lesions == i]).any()]
            row[f"lesions_{which}"] = {"count": count, "ml": round(float(np.count_nonzero(lesions)) * ct.voxel_volume_mm3 / 1000, 2),
                                      "wholly_outside_true_liver": len(outside)}
            if tumor is not None:
                row[f"tumor_dice_{which}"] = round(dice(result.tumor.array, tumor), 4)
        results[name] = row
        print(name, json.dumps(row), flush=True)
    return results


FIELDS_OF_VIEW = {"whole": (0.0, 0.0), "x 70 %": (0.0, 0.15), "y 70 %": (0.15, 0.0), "x and y 70 %": (0.15, 0.15),
                  "x and y 60 %": (0.2, 0.2)}


def in_plane_crop(ct, truth, cut_y: float, cut_x: float):
    """The CT and its liver with the share `cut_y` / `cut_x` of each in-plane side removed (a field of
    view through the body)."""
    nz, ny, nx = ct.shape
    keep = np.s_[:, int(cut_y * ny):ny - int(cut_y * ny), int(cut_x * nx):nx - int(cut_x * nx)]
    return ct.cropped(keep), truth[keep]


@contextlib.contextmanager
def water_beyond_every_side():
    """The original's fill for the boxes of find_liver inside the block: water past every side of
    the CT, whether or not a side cuts through the body (a variant for this benchmark only)."""
    from LiverTumorSegLib.core import liver_grid

    product = liver_grid.cut_faces
    liver_grid.cut_faces = lambda body, axes=(0, 1): liver_grid.NOT_CONTINUED
    try:
        yield
    finally:
        liver_grid.cut_faces = product


def measure_field_of_view(real_case: Path | None) -> dict:
    """Liver Dice with water beyond every side of the CT (the original) and with the body continued
    past in-plane sides that cut through it (the product), on the real CTs cropped in-plane
    (FIELDS_OF_VIEW) and on LiTS-117 as it is (its crop cuts the body), with its tumor Dice."""
    import torch

    from LiverTumorSegLib.core.inference import segment
    from LiverTumorSegLib.core.liver import find_liver
    from LiverTumorSegLib.core.liver_checks import check_liver
    from LiverTumorSegLib.core.liver_network import load_liver_network
    from LiverTumorSegLib.storage.modelstore import default_model_path, liver_model_path, load_model

    torch.set_num_threads(1)
    network = load_liver_network(liver_model_path())
    model = load_model(default_model_path())
    results = {}
    for name, ct, truth, tumor in real_cts(real_case):
        for view, (cut_y, cut_x) in FIELDS_OF_VIEW.items() if tumor is None else [("as shipped", (0.0, 0.0))]:
            image, liver_true = in_plane_crop(ct, truth, cut_y, cut_x)
            row = {"liver_kept": round(float(liver_true.sum() / truth.sum()), 3)}
            for how, fill in (("water", water_beyond_every_side), ("body_continued", contextlib.nullcontext)):
                with fill():
                    mask = check_liver(image, find_liver(image, network).mask).mask.array > 0
                row[f"liver_dice_{how}"] = round(dice(mask, liver_true), 4)
                if tumor is not None:
                    row[f"tumor_dice_{how}"] = round(dice(segment(image, mask, model).tumor.array, tumor), 4)
            if tumor is not None:
                row["tumor_dice_true_liver"] = round(dice(segment(image, liver_true, model).tumor.array, tumor), 4)
            results[f"{name}, {view}"] = row
            print(f"{name}, {view}", json.dumps(row), flush=True)
    return results


SPEED_CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[2]))
sys.path.insert(0, sys.argv[3])
from LiverTumorSegLib.core.liver import find_liver
from LiverTumorSegLib.core.liver_network import load_liver_network
from LiverTumorSegLib.storage import images
from LiverTumorSegLib.storage.modelstore import liver_model_path
ct = images.read_image(sys.argv[1], keep_integer=True)
network = load_liver_network(liver_model_path())
start = time.perf_counter()
found = find_liver(ct, network)
total = time.perf_counter() - start
print(json.dumps({"seconds": round(total, 2), "stages": {k: round(v, 2) for k, v in found.seconds.items()},
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
                  "liver_ml": round(found.volume_ml, 1)}))
"""


def measure_speed(threads: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from big_volume import make_ct

    ct_path, _ = make_ct(200, WORK_DIR / "big_volume")
    load_before = [round(v, 2) for v in os.getloadavg()]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    run = subprocess.run([sys.executable, "-c", SPEED_CHILD, str(ct_path), str(threads), str(REPO_DIR / "LiverTumorSeg")],
                         capture_output=True, text=True, env=env, check=True)
    row = json.loads(run.stdout.strip().splitlines()[-1])
    row.update({"threads": threads, "shape_zyx": [200, 512, 512], "spacing_xyz_mm": [0.75, 0.75, 1.0],
                "load_average_before": load_before, "load_average_after": [round(v, 2) for v in os.getloadavg()]})
    print("speed", json.dumps(row), flush=True)
    return row


def real_ct_512(folder: Path) -> Path:
    """The small real CT (122 x 101 x 30 at 3 mm) resampled linearly to 512 x 512 x 200 voxels
    (0.72 x 0.59 x 0.45 mm): a real abdomen with the voxel count of a typical CT, which the
    liver checks accept (the synthetic big-volume CT has no fat, so its 'liver' is refused)."""
    import SimpleITK as sitk

    path = folder / "ct_sm_512x512x200.nrrd"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.ReadImage(str(DATA / "example_ct_sm.nii.gz"))
    size = (512, 512, 200)
    spacing = [n * s / m for n, s, m in zip(image.GetSize(), image.GetSpacing(), size)]
    origin = image.TransformContinuousIndexToPhysicalPoint([-0.5 + 0.5 * sp / s for sp, s in zip(spacing, image.GetSpacing())])
    resampled = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, image.GetDirection(), -1024,
                              sitk.sitkInt16)
    sitk.WriteImage(resampled, str(path))
    return path


def measure_segment(threads: int) -> dict:
    """`livertumorseg segment CT --out x.seg.nrrd` without --liver, wall time of the command."""
    ct_path = real_ct_512(WORK_DIR / "liver")
    out = WORK_DIR / "liver" / f"segment_{threads}.seg.nrrd"
    load_before = [round(v, 2) for v in os.getloadavg()]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO_DIR / "LiverTumorSeg"))
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "LiverTumorSegLib", "segment", str(ct_path), "--out", str(out),
                          "--overwrite", "--threads", str(threads)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if run.returncode:
        raise SystemExit(f"segment failed: {run.stderr[-2000:]}")
    row = {"seconds": round(seconds, 2), "threads": threads, "shape_zyx": [200, 512, 512], "ct": ct_path.name,
           "said": run.stdout.strip().splitlines()[-1], "load_average_before": load_before,
           "load_average_after": [round(v, 2) for v in os.getloadavg()]}
    print("segment", json.dumps(row), flush=True)
    return row


def wait_until_idle(limit_s: float) -> bool:
    """Wait (at most limit_s) for the 1-minute load average to fall below 0.5: the two-thread
    numbers mean something only on an otherwise idle machine. True when it is idle."""
    deadline = time.time() + limit_s
    while os.getloadavg()[0] >= 0.5:
        if time.time() > deadline:
            return False
        time.sleep(10)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-case", help="folder with LiTS-117 (liver-ct-segmentation-package==1.6.0's wheel)")
    parser.add_argument("--parity", help="the JSON of scripts/liver_parity.py compare, copied in as 'parity'")
    parser.add_argument("--only", choices=("dice", "field_of_view", "speed"))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--force", action="store_true", help="measure again what liver.json already holds")
    parser.add_argument("--wait-idle", type=float, default=0.0,
                        help="before each speed run wait up to this many seconds for the load average to fall below 0.5")
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    results["machine"] = machine()
    if args.parity:
        results["parity"] = json.loads(Path(args.parity).read_text())
    if args.only in (None, "dice") and (args.force or "dice" not in results):
        results["dice"] = measure_dice(Path(args.real_case) if args.real_case else None)
        write_json(OUT, results)
    if args.only in (None, "field_of_view") and (args.force or "field_of_view" not in results):
        results["field_of_view"] = measure_field_of_view(Path(args.real_case) if args.real_case else None)
        write_json(OUT, results)
    if args.only in (None, "speed"):
        speed = results.setdefault("speed", {})
        for threads in args.threads:
            key = f"{threads}_thread{'s' if threads > 1 else ''}"
            if args.force or key not in speed:
                idle = wait_until_idle(args.wait_idle)
                speed[key] = dict(measure_speed(threads), machine_idle=idle)
                write_json(OUT, results)
            key = f"segment_without_liver_{threads}_thread{'s' if threads > 1 else ''}"
            if args.force or key not in speed:
                idle = wait_until_idle(args.wait_idle)
                speed[key] = dict(measure_segment(threads), machine_idle=idle)
                write_json(OUT, results)
    write_json(OUT, results)


if __name__ == "__main__":
    main()
