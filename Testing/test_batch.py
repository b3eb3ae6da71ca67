"""`livertumorseg batch` (batch.py): three cases (a phantom case folder, a DICOM series with a
liver mask, a broken CT) on a dask.distributed LocalCluster of 2 workers and on the local process
pool, with the shipped default model: one row per case, the broken one failed with its reason, the
same numbers either way, a rerun that does nothing, a half-written case redone, and a worker
killed mid-run whose case is retried on another.

The LocalCluster of the main test runs its 2 workers as threads (processes=False): a worker
process costs about 3 s to start and import torch, on a machine of 2 cores; the killed-worker
test needs real processes and pays for them.
"""

from __future__ import annotations

import csv
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from LiverTumorSegLib.batch import RESULT_COLUMNS, BatchSettings, find_cases, model_digest, run_batch
from LiverTumorSegLib.cli import main
from LiverTumorSegLib.data.dicom_series import write_ct_series
from LiverTumorSegLib.data.phantom import PhantomSettings, write_phantom_cases
from LiverTumorSegLib.storage import images
from LiverTumorSegLib.storage.modelstore import default_model_path

distributed = pytest.importorskip("distributed", reason="dask.distributed is pinned in requirements.txt")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, totalseg_dir):
    """A CSV of 3 cases: a phantom case folder (its label as liver), a DICOM series with its liver
    mask, and a CT file that is not an image."""
    root = tmp_path_factory.mktemp("batch_in")
    phantom = write_phantom_cases(root / "phantoms", 1, seed=3, settings=PhantomSettings.small())[0]
    ct = images.read_image(totalseg_dir / "example_ct_sm.nii.gz", keep_integer=True)
    write_ct_series(ct, root / "series" / "ct-1", name="batch")
    (root / "broken.nrrd").write_text("not an image")
    table = root / "cases.csv"
    table.write_text("case,ct,liver\n"
                     f"phantom,{phantom / 'image.nrrd'},{phantom / 'label.nrrd'}\n"
                     f"dicom,series/ct-1,{totalseg_dir / 'example_ct_sm_liver.nii.gz'}\n"
                     "broken,broken.nrrd,\n")
    return root, find_cases(table)


def settings_for(out: Path) -> BatchSettings:
    return BatchSettings(str(out), str(default_model_path()), model_digest(default_model_path()), None, 1)


def read_table(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def numbers(row: dict) -> dict:
    return {k: str(v) for k, v in row.items() if k not in ("status", "seconds")}


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as local:
        with Client(local) as client:
            yield client


def test_batch_on_a_dask_cluster_equals_the_local_pool_and_resumes(inputs, cluster, tmp_path):
    root, cases = inputs
    assert [case.name for case in cases] == ["phantom", "dicom", "broken"]
    out = tmp_path / "dask"
    rows = run_batch(cases, settings_for(out), scheduler=cluster, progress=False)
    status = {row["case"]: row["status"] for row in rows}
    assert status == {"phantom": "done", "dicom": "done", "broken": "failed"}
    broken = rows[2]
    assert broken["error"].startswith("cannot read") and "\n" not in broken["error"]
    table = read_table(out / "results.csv")
    assert list(table[0]) == list(RESULT_COLUMNS) and [numbers(r) for r in table] == [numbers(r) for r in rows]

    # The outputs hold what the row says: one DICOM SEG for the series, the tumor volume in mL.
    ct = images.read_image(root / "series" / "ct-1")
    seg = images.read_labels_kind(out / "dicom" / "tumor.dcm", reference=ct)
    assert seg.from_segmentation
    assert float(rows[1]["tumor_ml"]) == pytest.approx(np.count_nonzero(seg.volume.array == 2) * ct.voxel_volume_mm3 / 1000,
                                                       abs=1e-3)
    assert float(rows[0]["burden_pct"]) == pytest.approx(100 * float(rows[0]["tumor_ml"]) / float(rows[0]["liver_ml"]), rel=1e-3)
    assert rows[0]["lesion_count"] == len(read_table(out / "phantom" / "lesions.csv")) > 0
    assert rows[0]["model_version"] == "default"

    # A rerun does nothing: the same rows, skipped; no output rewritten. The broken case is tried again.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "results.csv"}
    again = run_batch(cases, settings_for(out), scheduler=cluster, progress=False)
    assert [r["status"] for r in again] == ["skipped", "skipped", "failed"]
    assert [numbers(r) for r in again] == [numbers(r) for r in rows]
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "results.csv"}

    # A half-written case (its outputs there, no case.json; or a damaged output) is redone.
    (out / "phantom" / "case.json").unlink()
    (out / "dicom" / "tumor.dcm").write_bytes(b"")
    redone = run_batch(cases, settings_for(out), scheduler=cluster, progress=False)
    assert [r["status"] for r in redone[:2]] == ["done", "done"]
    assert [numbers(r) for r in redone] == [numbers(r) for r in rows]

    # The local process pool gives the same numbers.
    local = run_batch(cases, settings_for(tmp_path / "local"), workers=2, progress=False)
    assert [numbers(r) for r in local] == [numbers(r) for r in rows]
    assert not [p for p in out.rglob(".*")]  # no temp left anywhere


def test_cases_are_found_in_a_folder_of_series_and_case_folders(inputs, tmp_path):
    root, _ = inputs
    cases = find_cases(root)
    assert [(c.name, Path(c.ct).name, c.liver and Path(c.liver).name) for c in cases] == [
        ("broken", "broken.nrrd", None), ("phantoms_phantom-000", "image.nrrd", "label.nrrd"),
        ("series_ct-1", "ct-1", None)]
    with pytest.raises(Exception, match="no cases"):
        find_cases(tmp_path)


def test_batch_command_line_and_bad_arguments(inputs, tmp_path, capsys):
    root, _ = inputs
    table = tmp_path / "one.csv"
    table.write_text(f"ct\n{root / 'broken.nrrd'}\n")
    assert main(["batch", str(table), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    assert "1 failed" in capsys.readouterr().out
    assert read_table(tmp_path / "out" / "results.csv")[0]["status"] == "failed"
    assert main(["batch", str(table), "--out", str(tmp_path / "o2"), "--workers", "0"]) == 2
    assert main(["batch", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o3")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_worker_killed_mid_run_costs_nothing(inputs, tmp_path):
    """A worker process killed (SIGKILL, as by the out-of-memory killer) while it runs a case: Dask
    gives the case to another worker, every case gets its row, no temp file is left behind."""
    from distributed import Client, LocalCluster

    _, cases = inputs
    out = tmp_path / "killed"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as local, \
            Client(local) as client:
        pids = client.run(os.getpid)  # {worker address: pid}
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(rows=run_batch(
            cases, settings_for(out), scheduler=client, progress=False)))
        runner.start()
        victim, deadline = None, time.monotonic() + 60
        while victim is None and time.monotonic() < deadline:
            busy = [address for address, keys in client.processing().items()
                    if any("dicom" in str(key) or "phantom" in str(key) for key in keys)]
            victim = busy[0] if busy else None
            time.sleep(0.05)
        assert victim is not None, "no case started within 60 s"
        os.kill(pids[victim], signal.SIGKILL)
        runner.join(timeout=120)
        assert not runner.is_alive()
    rows = result["rows"]
    assert [(r["case"], r["status"]) for r in rows] == [("phantom", "done"), ("dicom", "done"), ("broken", "failed")]
    assert len(read_table(out / "results.csv")) == 3
    assert not [p for p in out.rglob(".*")]


def test_a_done_case_keeps_its_warnings_in_its_row(inputs, tmp_path, totalseg_dir):
    """A CT whose liver mask lies partly outside it: segmented, and the row says what was dropped."""
    root, _ = inputs
    ct = images.read_image(totalseg_dir / "example_ct_sm.nii.gz", keep_integer=True)
    from LiverTumorSegLib.volume import Volume

    images.write_image(Volume(ct.array[:20], ct.spacing, ct.origin, ct.direction), tmp_path / "top.nrrd")  # 20 of 30 slices
    table = tmp_path / "cases.csv"
    table.write_text(f"ct,liver\n{tmp_path / 'top.nrrd'},{totalseg_dir / 'example_ct_sm_liver.nii.gz'}\n")
    row = run_batch(find_cases(table), settings_for(tmp_path / "out"), workers=1, progress=False)[0]
    assert row["status"] == "done" and row["error"].startswith("warning: ") and "outside the CT" in row["error"]


def test_a_case_without_a_liver_mask_gets_the_liver_found(tmp_path, totalseg_dir):
    """As `segment` without --liver: the shipped liver network finds the liver of the real CT, the
    row's liver volume is that liver's (within 15 %), its .seg.nrrd holds a 'Liver' segment beside the
    tumors; an image with no liver in it costs its row, with the reason."""
    ct = totalseg_dir / "example_ct_sm.nii.gz"
    truth = images.read_liver_mask(totalseg_dir / "example_ct_sm_liver.nii.gz", reference=images.read_image(ct))
    from LiverTumorSegLib.volume import Volume

    flat = Volume(np.full((24, 40, 40), 40, dtype=np.int16), (2.0, 2.0, 2.0))
    images.write_image(flat, tmp_path / "flat.nrrd")
    table = tmp_path / "cases.csv"
    table.write_text(f"case,ct\nreal,{ct}\nflat,{tmp_path / 'flat.nrrd'}\n")
    rows = run_batch(find_cases(table), settings_for(tmp_path / "out"), workers=1, progress=False)
    real, flat_row = rows
    assert real["status"] == "done", real["error"]
    voxel_ml = float(np.prod(images.read_image(ct).spacing)) / 1000.0
    assert abs(float(real["liver_ml"]) - truth.sum() * voxel_ml) < 0.15 * truth.sum() * voxel_ml
    names = [name.lower() for name in _segment_names(tmp_path / "out" / "real" / "tumor.seg.nrrd")]
    assert "liver" in names and "liver tumor" in names
    assert flat_row["status"] == "failed" and "liver" in flat_row["error"].lower()


def _segment_names(path: Path) -> list:
    """The segment names a .seg.nrrd header lists (Segment<N>_Name)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return [reader.GetMetaData(key) for key in reader.GetMetaDataKeys() if key.startswith("Segment") and key.endswith("_Name")]


def test_ctrl_c_leaves_no_half_written_file_and_the_rerun_completes(tmp_path):
    """SIGINT to the command's process group (what Ctrl-C does) once the first case is in the table:
    exit 130, no temp file anywhere, every case.json beside complete outputs; the same command then
    finishes the rest."""
    import subprocess
    import sys

    cases = write_phantom_cases(tmp_path / "in", 4, seed=4, settings=PhantomSettings.small())
    command = [sys.executable, "-m", "LiverTumorSegLib", "batch", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
               "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # SIGINT as a terminal delivers it: a suite started in the background of a non-interactive shell
    # inherits SIGINT ignored, and Python then never turns it into KeyboardInterrupt.
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    table, deadline = tmp_path / "out" / "results.csv", time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None and not (table.exists() and len(read_table(table)) >= 1):
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err
    out = tmp_path / "out"
    assert not [p for p in out.rglob(".*")]
    finished = [p.parent.name for p in out.glob("*/case.json")]
    assert 1 <= len(read_table(table)) <= len(finished) < len(cases)
    for name in finished:
        assert (out / name / "tumor.seg.nrrd").is_file() and (out / name / "lesions.csv").is_file()
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = read_table(table)
    assert len(rows) == len(cases) and sorted(r["status"] for r in rows) == sorted(
        ["skipped"] * len(finished) + ["done"] * (len(cases) - len(finished)))
