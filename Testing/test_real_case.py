"""The real development case's reader and split (evaluation/real_case.py, storage/mrc.py) on small
hand-made MRC files with a known orientation, and benchmarks/real_case.py end to end on a phantom
stored the way the real case is (the real one is fetched by the benchmark, never by the tests)."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from LiverTumorSegLib.core.lesions import count_lesions
from LiverTumorSegLib.data.phantom import PhantomSettings, make_phantom
from LiverTumorSegLib.errors import InputError
from LiverTumorSegLib.evaluation.real_case import ASSUMED_SPACING_MM, find_real_case, read_real_case, split_halves
from LiverTumorSegLib.storage.mrc import read_mrc, write_mrc

REPO = Path(__file__).resolve().parents[1]


def hand_made_mrc(path: Path, raw: np.ndarray, mode: int) -> None:
    """An MRC file written field by field (not with write_mrc): sizes, mode, 'MAP ', little-endian."""
    header = bytearray(1024)
    nz, ny, nx = raw.shape
    struct.pack_into("<4i", header, 0, nx, ny, nz, mode)
    header[208:212] = b"MAP "
    header[212:214] = b"\x44\x44"
    path.write_bytes(bytes(header) + raw.tobytes())


def test_mrc_reads_the_array_in_file_order_and_write_mrc_round_trips(tmp_path):
    raw = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) - 50.25
    hand_made_mrc(tmp_path / "a.mrc", raw, mode=2)
    np.testing.assert_array_equal(read_mrc(tmp_path / "a.mrc"), raw)
    labels = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 3).astype(np.uint16)
    write_mrc(tmp_path / "b.mrc", labels)
    back = read_mrc(tmp_path / "b.mrc")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)


def test_mrc_refuses_what_it_cannot_read_with_the_reason(tmp_path):
    raw = np.zeros((2, 3, 4), np.float32)
    hand_made_mrc(tmp_path / "ok.mrc", raw, mode=2)
    data = (tmp_path / "ok.mrc").read_bytes()
    (tmp_path / "cut.mrc").write_bytes(data[:-8])
    with pytest.raises(InputError, match="cut or damaged"):
        read_mrc(tmp_path / "cut.mrc")
    (tmp_path / "plain.raw").write_bytes(b"\0" * 2000)
    with pytest.raises(InputError, match="not an MRC volume"):
        read_mrc(tmp_path / "plain.raw")
    hand_made_mrc(tmp_path / "complex.mrc", raw, mode=4)
    with pytest.raises(InputError, match="mode 4"):
        read_mrc(tmp_path / "complex.mrc")
    with pytest.raises(InputError, match="does not exist"):
        read_mrc(tmp_path / "missing.mrc")


def test_real_case_orientation_raw_axes_are_left_posterior_head(tmp_path):
    """A marker at raw index (i, j, k) lies i voxels to the patient's left, j posterior and k toward
    the head: LPS (i, j, k) x 1.5 mm, array index (z, y, x) = (k, j, i)."""
    raw_image = np.full((4, 5, 6), -1000.0, np.float32)
    raw_labels = np.zeros((4, 5, 6), np.uint16)
    raw_image[3, 1, 2], raw_labels[3, 1, 2] = 55.4, 2
    raw_labels[0, 0, 0] = 1
    hand_made_mrc(tmp_path / "img_117.mrc", raw_image, mode=2)
    hand_made_mrc(tmp_path / "lab_117.mrc", raw_labels, mode=6)
    image, labels = read_real_case(*find_real_case(tmp_path))
    assert image.shape == labels.shape == (6, 5, 4) and image.spacing == (ASSUMED_SPACING_MM,) * 3
    assert image.array.dtype == np.int16 and labels.array.dtype == np.uint8
    assert image.array[2, 1, 3] == 55 and labels.array[2, 1, 3] == 2 and labels.array[0, 0, 0] == 1
    np.testing.assert_allclose(image.index_to_lps(np.array([[2, 1, 3]]))[0], np.array([3, 1, 2]) * ASSUMED_SPACING_MM)
    np.testing.assert_allclose(image.index_to_ras(np.array([[2, 1, 3]]))[0], np.array([-3, -1, 2]) * ASSUMED_SPACING_MM)


def test_real_case_refuses_mismatched_or_foreign_labels(tmp_path):
    hand_made_mrc(tmp_path / "img.mrc", np.zeros((4, 4, 4), np.float32), mode=2)
    hand_made_mrc(tmp_path / "lab.mrc", np.zeros((4, 4, 5), np.uint16), mode=6)
    with pytest.raises(InputError, match="not one case"):
        read_real_case(tmp_path / "img.mrc", tmp_path / "lab.mrc")
    hand_made_mrc(tmp_path / "lab.mrc", np.full((4, 4, 4), 7, np.uint16), mode=6)
    with pytest.raises(InputError, match="labels other than"):
        read_real_case(tmp_path / "img.mrc", tmp_path / "lab.mrc")
    with pytest.raises(InputError, match="pip download"):
        find_real_case(tmp_path / "nowhere")


def test_the_package_wheel_is_unpacked_where_pip_download_left_it(tmp_path):
    import zipfile

    from LiverTumorSegLib.evaluation.real_case import IMAGE_MEMBER, LABELS_MEMBER

    made = tmp_path / "made"
    made.mkdir()
    hand_made_mrc(made / "img.mrc", np.arange(64, dtype=np.float32).reshape(4, 4, 4), mode=2)
    hand_made_mrc(made / "lab.mrc", np.ones((4, 4, 4), np.uint16), mode=6)
    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl", "w") as wheel:
        wheel.write(made / "img.mrc", IMAGE_MEMBER)
        wheel.write(made / "lab.mrc", LABELS_MEMBER)
    image_path, labels_path = find_real_case(cache)
    assert image_path == cache / "img_117.mrc" and labels_path == cache / "lab_117.mrc"
    assert image_path.read_bytes() == (made / "img.mrc").read_bytes()
    assert read_real_case(image_path, labels_path)[0].shape == (4, 4, 4)
    assert sorted(p.name for p in cache.iterdir()) == ["img_117.mrc", "lab_117.mrc",
                                                       "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "liver_ct_segmentation_package-1.6.0-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="download it again"):
        find_real_case(broken)
    assert sorted(p.name for p in broken.iterdir()) == ["liver_ct_segmentation_package-1.6.0-py3-none-any.whl"]


def test_halves_split_at_the_middle_slice_and_keep_every_voxel_in_place(tmp_path):
    raw = np.random.default_rng(0).integers(-100, 200, (6, 5, 8)).astype(np.float32)
    hand_made_mrc(tmp_path / "img_117.mrc", raw, mode=2)
    hand_made_mrc(tmp_path / "lab_117.mrc", (raw > 150).astype(np.uint16), mode=6)
    image, labels = read_real_case(*find_real_case(tmp_path))
    halves = split_halves(image, labels)
    (image_a, labels_a), (image_b, labels_b) = halves["A"], halves["B"]
    assert image_a.shape == image_b.shape == (4, 5, 6)  # raw axis 2 (8 slices, toward the head) halved
    np.testing.assert_array_equal(np.concatenate([image_a.array, image_b.array]), image.array)
    np.testing.assert_array_equal(np.concatenate([labels_a.array, labels_b.array]), labels.array)
    # A is the inferior half; B's first slice is the whole case's fifth, at the same place in LPS.
    np.testing.assert_allclose(image_b.index_to_lps(np.array([[0, 2, 3]])), image.index_to_lps(np.array([[4, 2, 3]])))
    assert image_a.origin == image.origin and labels_b.same_grid(image_b)


def write_as_real_case(folder: Path, seed: int) -> None:
    """A small phantom stored like the real case: raw axes (x, y, z) of an LPS volume, HU as float32."""
    case = make_phantom(seed, PhantomSettings.small(n_tumors=(4, 4), tumor_diameter_mm=(10.0, 30.0)))
    folder.mkdir()
    write_mrc(folder / "img_117.mrc", np.ascontiguousarray(case.image.array.transpose(2, 1, 0)).astype(np.float32))
    write_mrc(folder / "lab_117.mrc", np.ascontiguousarray(case.labels.array.transpose(2, 1, 0)).astype(np.uint16))


def test_real_case_benchmark_runs_retrain_on_a_and_reports_b_by_size(tmp_path):
    data = tmp_path / "case"
    write_as_real_case(data, seed=3)
    halves = split_halves(*read_real_case(*find_real_case(data)))
    assert (halves["A"][1].array == 2).any() and (halves["B"][1].array == 2).any()  # a usable test case
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "benchmarks" / "real_case.py"), "--tiny", "--data", str(data), "--threads", "1",
               "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "real_case.json").read_text())
    rows = result["rows"]
    assert list(rows) == ["default model, B", "HU floor fitted on A, B", "Retrain on A (seed 0), B", "default model, whole case"]
    retrain = rows["Retrain on A (seed 0), B"]
    assert retrain["steps"] == 2 and retrain["stopped_by"] == "steps" and retrain["parent_check_dice"]
    for name, row in rows.items():
        assert 0.0 <= row["dice"] <= 1.0 and row["false_lesions"] >= 0
        for size in ("5-10mm", "10-20mm", ">20mm"):
            found, of = row["found"][size]
            assert 0 <= found <= of
        tumors = result["case"]["whole" if "whole" in name else "B"]["by_size"]
        assert [row["found"][s][1] for s in ("5-10mm", "10-20mm", ">20mm")] == [tumors[s] for s in ("5-10mm", "10-20mm", ">20mm")]
    assert result["retrain_mean"]["n"] == 1 and result["retrain_mean"]["dice"] == pytest.approx(retrain["dice"], abs=1e-4)
    assert "| Retrain on A (seed 0), B |" in first.stdout
    # A second run finds every row cached under the same engine and writes the same numbers.
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "real_case.json").read_text())["rows"] == rows


def test_real_case_development_mode_never_reads_half_b(tmp_path):
    """--develop scores inside A only: A's halves each way, the default model and the floor (no
    seeds: no Retrain), and writes its own results file."""
    data = tmp_path / "case"
    write_as_real_case(data, seed=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "benchmarks" / "real_case.py"), "--develop", "--seeds", "--data", str(data),
               "--threads", "1", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "real_case_development.json").read_text())
    assert list(result["rows"]) == ["default model, A2", "HU floor fitted on A1, A2", "default model, A1", "HU floor fitted on A2, A1"]
    assert set(result["case"]) >= {"A1", "A2", "whole"} and "B" not in result["case"]
    image, labels = read_real_case(*find_real_case(data))
    inner = split_halves(*split_halves(image, labels)["A"])
    assert result["case"]["A2"]["tumors"] == count_lesions(inner["B"][1].array == 2)


def test_the_demo_tells_the_story_on_the_real_case(tmp_path):
    """`demo --real-case`: half A becomes the library's one case, half B is what is scored and
    shown; the default model, Retrain and the floor by size."""
    data = tmp_path / "case"
    write_as_real_case(data, seed=3)
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "LiverTumorSegLib", "demo", "--quick", "--out", str(out), "--real-case", str(data)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((out / "metrics.json").read_text())
    assert report["data"].startswith("real case") and report["held_out_cases"] == ["lits117_B"]
    assert [p.name for p in (out / "library" / "cases").iterdir()] == ["lits117_half_a"]
    for stage in ("default_model", "retrained", "threshold_floor"):
        assert report[stage]["n_cases"] == 1
    b_tumors = count_lesions(split_halves(*read_real_case(*find_real_case(data)))["B"][1].array == 2)
    assert sum(of for _, of in report["retrained"]["lesions_by_size"].values()) == b_tumors
    assert (out / "lits117_B_overlay.png").read_bytes()[:4] == b"\x89PNG"
    assert "real case" in done.stdout and "| after Retrain |" in done.stdout
