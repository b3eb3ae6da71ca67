"""Batch throughput: `livertumorseg batch` cases per hour with 1 and 2 workers, on the local
process pool and on a Dask distributed LocalCluster of worker processes, and what the Dask path
costs per case next to the pool.

Cases: N small phantom CTs (data/phantom.py, PhantomSettings.small(), each with its liver from its
label) segmented by the shipped default model, torch at one thread per worker. Each (path,
workers) runs the whole batch into a fresh results folder, timed from the call to the last row:
worker start-up (spawn + torch import + model load) is included, as a user would see it; the Dask
cluster's own start-up is timed apart (a department's cluster is already running). A rerun of
the last batch (every case skipped: inputs hashed, outputs checked) is timed too.

Per-case overhead = (workers x wall time - the cases' own seconds) / N: what is not segmentation
(start-up, scheduling, pickling the row back), shared out per case.

    python benchmarks/batch.py                 # 8 cases
    python benchmarks/batch.py --tiny --out /tmp/x   # 2 cases, for a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import benchcommon as bc

sys.path.insert(0, str(bc.REPO_DIR / "LiverTumorSeg"))

from LiverTumorSegLib.batch import BatchSettings, find_cases, model_digest, run_batch  # noqa: E402
from LiverTumorSegLib.data.phantom import PhantomSettings, write_phantom_cases  # noqa: E402
from LiverTumorSegLib.storage.modelstore import default_model_path  # noqa: E402


def timed_batch(cases, out: Path, workers: int, scheduler=None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    settings = BatchSettings(str(out), str(default_model_path()), model_digest(default_model_path()), None, 1)
    start = time.perf_counter()
    rows = run_batch(cases, settings, workers=workers, scheduler=scheduler, progress=False)
    wall = time.perf_counter() - start
    work = sum(float(r["seconds"]) for r in rows)
    failed = [r["case"] for r in rows if r["status"] != "done"]
    result = {"workers": workers, "cases": len(rows), "wall_s": round(wall, 2), "cases_per_hour": round(3600 * len(rows) / wall, 1),
              "case_seconds_mean": round(work / len(rows), 2),
              "overhead_per_case_s": round((workers * wall - work) / len(rows), 2), "failed": failed}
    rerun_start = time.perf_counter()
    again = run_batch(cases, settings, workers=workers, scheduler=scheduler, progress=False)
    result["rerun_all_skipped_s"] = round(time.perf_counter() - rerun_start, 2)
    assert all(r["status"] == "skipped" for r in again), "a rerun must skip every case"
    result["numbers"] = [{k: r[k] for k in ("case", "tumor_ml", "lesion_count")} for r in rows]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="2 cases")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=bc.RESULTS_DIR)
    parser.add_argument("--work", type=Path, default=bc.WORK_DIR / "batch")
    args = parser.parse_args()
    count = 2 if args.tiny else args.cases
    inputs = args.work / f"cases-{count}"
    if not inputs.exists():
        write_phantom_cases(inputs, count, seed=11, settings=PhantomSettings.small())
    cases = find_cases(inputs)
    load_before = os.getloadavg()
    runs = []
    for workers in args.workers:
        runs.append({"path": "local pool", **timed_batch(cases, args.work / "out-local", workers)})
        from distributed import Client, LocalCluster

        start = time.perf_counter()
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            startup = time.perf_counter() - start
            runs.append({"path": "dask LocalCluster (processes)", "cluster_start_s": round(startup, 2),
                         **timed_batch(cases, args.work / "out-dask", workers, scheduler=client)})
        print(json.dumps(runs[-2:], indent=1), flush=True)
    same = all(r["numbers"] == runs[0]["numbers"] for r in runs)
    result = {"machine": {**bc.machine(), "load_average_before": [round(v, 2) for v in load_before]},
              "case": "phantom (PhantomSettings.small), liver given, default model, 1 torch thread per worker",
              "same_numbers_every_run": same, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'path':32s} {'workers':>7s} {'cases/h':>8s} {'wall s':>7s} {'case s':>7s} {'overhead s/case':>15s} {'rerun s':>7s}")
    for r in runs:
        print(f"{r['path']:32s} {r['workers']:7d} {r['cases_per_hour']:8.0f} {r['wall_s']:7.1f} {r['case_seconds_mean']:7.2f} "
              f"{r['overhead_per_case_s']:15.2f} {r['rerun_all_skipped_s']:7.1f}")
    print("same numbers in every run:", same)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
