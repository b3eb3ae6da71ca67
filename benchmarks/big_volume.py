"""Peak memory of `livertumorseg segment` on big CTs (issue 10): 512 x 512 x 1000 with a liver
mask (target under 4 GB), and 2000 slices without one (a clear up-front refusal, or a run that
fits: never an out-of-memory kill). Writes benchmarks/results/big_volume.json.

    .venv/bin/python benchmarks/big_volume.py            # all runs (about 10 minutes, 12 GB RAM)
    .venv/bin/python benchmarks/big_volume.py --only 1000_liver

The CTs are synthetic (0.75 x 0.75 x 1 mm, int16 HU): an elliptic body, a 2 L liver over about
200 slices with 6 darker tumors, noise. Peak memory is the child's maximum resident set size
(getrusage), wall time includes reading and writing the files. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

BENCH_DIR = Path(__file__).resolve().parent
WORK = BENCH_DIR / "work" / "big_volume"
RESULT = BENCH_DIR / "results" / "big_volume.json"
SPACING = (0.75, 0.75, 1.0)  # x, y, z mm

RUNS = {
    "1000_liver": {"slices": 1000, "liver": True, "extra": ["--lesions", "{out}.csv"]},
    "1000_liver_prob": {"slices": 1000, "liver": True, "extra": ["--lesions", "{out}.csv", "--prob", "{out}_prob.nrrd"]},
    "2000_no_liver": {"slices": 2000, "liver": False, "extra": []},
    "2000_no_liver_8GB": {"slices": 2000, "liver": False, "extra": [], "env": {"LIVERTUMORSEG_MAX_MEMORY_GB": "8"}},
}


def make_ct(slices: int, folder: Path) -> tuple[Path, Path]:
    """Synthetic CT and liver mask files (made once, kept in benchmarks/work)."""
    ct_path, liver_path = folder / f"ct{slices}.nrrd", folder / f"liver{slices}.nrrd"
    if ct_path.is_file() and liver_path.is_file():
        return ct_path, liver_path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(slices)
    n = 512
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    x_mm, y_mm = (x - n / 2) * SPACING[0], (y - n / 2) * SPACING[1]
    body = (x_mm / 170.0) ** 2 + (y_mm / 120.0) ** 2 <= 1.0
    ct = np.empty((slices, n, n), np.int16)
    liver = np.zeros((slices, n, n), np.uint8)
    z_mid = slices / 2.0
    tumors = [(rng.uniform(-45, 45), rng.uniform(-40, 40), rng.uniform(-50, 50), rng.uniform(5, 20)) for _ in range(6)]
    for z in range(slices):
        z_mm = (z - z_mid) * SPACING[2]
        hu = np.where(body, 40.0, -1000.0).astype(np.float32)
        hu += rng.normal(0, 15, (n, n)).astype(np.float32)
        in_liver = ((x_mm + 60) / 80.0) ** 2 + ((y_mm + 10) / 70.0) ** 2 + (z_mm / 100.0) ** 2 <= 1.0
        hu[in_liver] += 70.0
        for tx, ty, tz, r in tumors:
            d2 = (x_mm + 60 - tx) ** 2 + (y_mm + 10 - ty) ** 2 + (z_mm - tz) ** 2
            hu[in_liver & (d2 <= r * r)] -= 60.0
        ct[z] = np.clip(np.rint(hu), -1024, 3000).astype(np.int16)
        liver[z] = in_liver
    for array, path, compress in ((ct, ct_path, False), (liver, liver_path, True)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(SPACING)
        image.SetOrigin((-192.0, -192.0, -z_mid))
        sitk.WriteImage(image, str(path), useCompression=compress)
        del image
    return ct_path, liver_path


def measure(name: str, spec: dict) -> dict:
    ct_path, liver_path = make_ct(spec["slices"], WORK)
    out = WORK / f"out_{name}"
    for old in WORK.glob(f"out_{name}*"):
        old.unlink()
    command = [sys.executable, "-m", "LiverTumorSegLib", "segment", str(ct_path)]
    if spec["liver"]:
        command += ["--liver", str(liver_path)]
    command += ["--out", f"{out}.seg.nrrd"] + [a.format(out=out) for a in spec["extra"]]
    env = dict(os.environ, **spec.get("env", {}))
    # A fresh driver per run, so RUSAGE_CHILDREN is this run's own peak.
    driver = ("import resource, subprocess, sys, time, json\n"
              "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
              "print(json.dumps({'rc': r.returncode, 'wall_s': time.perf_counter() - t, "
              "'peak_rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
              "'stdout': r.stdout[-400:], 'stderr': r.stderr[-1500:]}))")
    done = subprocess.run([sys.executable, "-c", driver, *command], capture_output=True, text=True, env=env, check=True)
    record = json.loads(done.stdout)
    shown = " ".join(Path(c).name if "/" in c else c for c in command[1:])
    outputs = sorted(p.name for p in WORK.glob(f"out_{name}*"))
    return {"command": f"python {shown}" + "".join(f" ({k}={v})" for k, v in spec.get("env", {}).items()),
            "slices": spec["slices"], "liver_mask": spec["liver"], "exit_code": record["rc"],
            "wall_s": round(record["wall_s"], 1), "peak_rss_gb": round(record["peak_rss_kb"] * 1024 / 1e9, 2),
            "last_line": (record["stdout"].strip().splitlines() or [""])[-1],
            "errors_and_warnings": [l for l in record["stderr"].splitlines() if l.startswith(("error:", "warning:"))],
            "outputs": outputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), help="run only these")
    args = parser.parse_args()
    from LiverTumorSegLib.storage.memory import available_bytes, segment_peak_bytes

    results = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    results.setdefault("runs", {})
    for name in args.only or RUNS:
        print(f"{name} ...", flush=True)
        record = measure(name, RUNS[name])
        spec = RUNS[name]
        record["shape_zyx"] = [spec["slices"], 512, 512]
        record["searched_box_zyx"] = None
        if spec["liver"]:  # the liver's box plus the 12 mm margin, as segment computes it
            from LiverTumorSegLib.core.features import liver_box

            liver = sitk.GetArrayFromImage(sitk.ReadImage(str(WORK / f"liver{spec['slices']}.nrrd"))) > 0
            z0, z1, y0, y1, x0, x1 = liver_box(liver, liver.shape, SPACING[::-1], 12.0)
            record["searched_box_zyx"] = [z1 - z0, y1 - y0, x1 - x0]
            del liver
        record["made_by"] = f"benchmarks/big_volume.py --only {name}"
        record["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results["runs"][name] = record
        print(json.dumps(record, indent=2), flush=True)
    for record in results["runs"].values():  # memory.py's estimate with its current coefficients
        record.setdefault("shape_zyx", [record["slices"], 512, 512])
        record.setdefault("searched_box_zyx", None)
        if record["liver_mask"] and record["searched_box_zyx"] is None:
            continue
        record["estimated_peak_gb"] = round(
            segment_peak_bytes(record["shape_zyx"], SPACING[::-1], record["searched_box_zyx"]) / 1e9, 2)
    results["machine"] = {"cpus": os.cpu_count(), "memory_available_gb_at_end": round((available_bytes() or 0) / 1e9, 1),
                          "load_average": [round(v, 2) for v in os.getloadavg()]}
    results["made_by"] = "benchmarks/big_volume.py (each run: its own made_by and date)"
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, RESULT)


if __name__ == "__main__":
    main()
