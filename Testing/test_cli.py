"""The `livertumorseg` command line, run for real in a subprocess and in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.storage import images
from LiverTumorSegLib.cli import main
from LiverTumorSegLib.volume import Volume


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "LiverTumorSegLib", *map(str, args)], capture_output=True, encoding="utf-8", cwd=cwd, timeout=600)


def write_ct(path: Path, array: np.ndarray, spacing=(0.8, 0.8, 2.5)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("segment", "batch", "train", "evaluate", "phantom", "demo"):
        assert command in result.stdout


def test_missing_image_is_one_line_error_with_exit_2(tmp_path, capsys):
    code = main(["segment", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "out.nrrd")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and "nope.nii.gz" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.nrrd").exists()


def test_2d_image_is_refused(tmp_path, capsys):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.int16)), str(path))
    assert main(["segment", str(path), "--out", str(tmp_path / "out.nrrd")]) == 2
    assert "3D" in capsys.readouterr().err


def test_existing_output_is_never_replaced(tmp_path, capsys):
    out = tmp_path / "mine.nrrd"
    out.write_bytes(b"user data")
    ct = write_ct(tmp_path / "ct.nrrd", np.zeros((8, 16, 16), np.int16))
    assert main(["segment", str(ct), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"user data"


def test_unknown_output_type_and_bad_threshold(tmp_path, capsys):
    ct = write_ct(tmp_path / "ct.nrrd", np.zeros((8, 16, 16), np.int16))
    assert main(["segment", str(ct), "--out", str(tmp_path / "out.png")]) == 2
    assert "unknown output type" in capsys.readouterr().err
    assert main(["segment", str(ct), "--out", str(tmp_path / "o.nrrd"), "--threshold", "1.5"]) == 2
    assert "threshold" in capsys.readouterr().err


def test_mask_from_another_ct_is_refused(tmp_path, capsys):
    ct = write_ct(tmp_path / "ct.nrrd", np.full((8, 16, 16), 100, np.int16))
    mask = sitk.GetImageFromArray(np.ones((8, 16, 16), np.uint8))
    mask.SetOrigin((500.0, 500.0, 500.0))
    sitk.WriteImage(mask, str(tmp_path / "liver.nrrd"))
    code = main(["segment", str(ct), "--liver", str(tmp_path / "liver.nrrd"), "--out", str(tmp_path / "o.nrrd")])
    assert code == 2
    assert not (tmp_path / "o.nrrd").exists()


def test_train_refuses_existing_model_folder_and_empty_case_folder(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "model")]) == 2
    assert "never overwritten" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", str(tmp_path / "empty"), "--out", str(tmp_path / "m2")]) == 2
    assert "no cases" in capsys.readouterr().err


def test_corrupt_model_is_refused(tmp_path, capsys):
    ct = write_ct(tmp_path / "ct.nrrd", np.full((8, 16, 16), 100, np.int16))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.pt").write_bytes(b"not a model")
    assert main(["segment", str(ct), "--out", str(tmp_path / "o.nrrd"), "--model", str(bad)]) == 2
    assert "model" in capsys.readouterr().err.lower()


def test_evaluate_prints_metrics_json(tmp_path, capsys):
    truth = np.zeros((10, 20, 20), np.uint8)
    truth[2:8, 5:15, 5:15] = 1
    truth[4:6, 8:12, 8:12] = 2
    pred = (truth == 2).astype(np.uint8)
    pred[4:6, 8:12, 8:10] = 0  # half the tumor missed
    images.write_labelmap(Volume(truth), tmp_path / "truth.nrrd")
    images.write_labelmap(Volume(pred), tmp_path / "pred.nrrd")
    assert main(["evaluate", str(tmp_path / "pred.nrrd"), str(tmp_path / "truth.nrrd")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["dice"] == pytest.approx(2 * 16 / (16 + 32))
    assert metrics["lesion_recall"] == 1.0


def test_phantom_writes_case_folders(tmp_path):
    result = run_cli("phantom", tmp_path / "cases", "--cases", "2", "--seed", "3", "--small")
    assert result.returncode == 0, result.stderr
    folders = sorted((tmp_path / "cases").iterdir())
    assert [f.name for f in folders if not f.name.startswith(".")] and all((f / "case.json").is_file() for f in folders)
    meta = json.loads((folders[0] / "case.json").read_text())
    assert meta["tumor_count"] >= 1


def test_quick_exit_keeps_exit_code_piped_output_and_running_threads(tmp_path):
    """`run` (the console command) skips the interpreter's teardown, so what it prints into a pipe,
    its exit code, and a thread still running must all come through unchanged."""
    def entry(argv, before=""):
        code = f"import sys\n{before}from LiverTumorSegLib.cli import run\nsys.argv = ['livertumorseg', *{argv!r}]\nrun()\n"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", timeout=120)

    printed = entry(["phantom", str(tmp_path / "cases"), "--cases", "1", "--seed", "3", "--small"])
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() and printed.stdout == run_cli("phantom", tmp_path / "again", "--cases", "1", "--seed", "3",
                                                                "--small").stdout.replace(str(tmp_path / "again"), str(tmp_path / "cases"))
    bad = entry(["segment", str(tmp_path / "nope.nrrd"), "--out", str(tmp_path / "out.seg.nrrd")])
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: ")
    late = tmp_path / "written_by_a_thread.txt"
    threaded = entry(["phantom", str(tmp_path / "third"), "--cases", "1", "--seed", "3", "--small"],
                     before=f"import threading, time\nthreading.Thread(target=lambda: (time.sleep(1), open({str(late)!r}, 'w').write('done'))).start()\n")
    assert threaded.returncode == 0 and late.read_text() == "done"


def test_segment_reads_the_ct_beside_the_model_and_still_reports_the_model_first(tmp_path, capsys, phantom_case_dirs,
                                                                                  tiny_model_dir):
    """With --liver the CT is read in a second thread while the model loads: a bad CT is still
    reported, and with a bad model too, the model's error comes first, as before."""
    case = phantom_case_dirs[0]
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "model.pt").write_bytes(b"not a model")
    missing_ct = tmp_path / "nope.nrrd"
    for model, says in ((tiny_model_dir, str(missing_ct)), (broken, str(broken))):
        code = main(["segment", str(missing_ct), "--liver", str(case / "label.nrrd"), "--model", str(model),
                     "--out", str(tmp_path / "out.seg.nrrd")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert not (tmp_path / "out.seg.nrrd").exists()


def test_segment_end_to_end_writes_every_output(tmp_path, phantom_case_dirs, tiny_model_dir):
    case = phantom_case_dirs[0]
    out, prob, csv = tmp_path / "tumor.seg.nrrd", tmp_path / "prob.nrrd", tmp_path / "lesions.csv"
    result = run_cli("segment", case / "image.nrrd", "--liver", case / "label.nrrd", "--out", out,
                     "--model", tiny_model_dir, "--prob", prob, "--lesions", csv)
    assert result.returncode == 0, result.stderr
    image = images.read_image(case / "image.nrrd")
    labels, segments = images.read_segmentation(out)
    assert labels.same_grid(image)
    assert [s.name for s in segments] == ["Liver tumor", "Liver"]  # the liver used, under the tumors
    liver = images.read_liver_mask(case / "label.nrrd", reference=image)
    np.testing.assert_array_equal(labels.array > 0, liver)
    probability = images.read_image(prob)
    assert probability.same_grid(image) and 0.0 <= probability.array.min() and probability.array.max() <= 1.0
    assert csv.read_text().splitlines()[0].lower().startswith("id")
    # The labelmap output is the same mask on the same grid.
    label_out = tmp_path / "tumor.nii.gz"
    again = run_cli("segment", case / "image.nrrd", "--liver", case / "label.nrrd", "--out", label_out,
                    "--model", tiny_model_dir, "--threads", "1", "--progress-json")
    assert again.returncode == 0, again.stderr
    labelmap = images.read_labels(label_out, reference=image)
    np.testing.assert_array_equal(labelmap.array > 0, labels.array == segments[0].value)
    # Progress as JSON lines for the Slicer module: every stage, ending with "done".
    progress = [json.loads(line) for line in again.stdout.splitlines() if line.startswith("{")]
    stages = [line["stage"] for line in progress]
    assert stages[0] == "prepare" and "network" in stages and stages[-1] == "done"
    assert all(set(line) >= {"step", "total", "elapsed_s"} for line in progress)


def test_train_with_progress_json_then_finetune(tmp_path, phantom_case_dirs, tiny_model_dir):
    out = tmp_path / "v002"
    result = run_cli("train", phantom_case_dirs[0].parent, "--out", out, "--init", tiny_model_dir,
                     "--max-steps", "6", "--minutes", "1", "--threads", "1", "--progress-json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert any(line.get("stage") == "train" for line in lines)
    assert lines[-1]["stage"] == "done" and Path(lines[-1]["model"]) == out
    meta = json.loads((out / "model.json").read_text())
    assert meta["parent"] and meta["training_cases"] and meta["torch_threads"] == 1
    assert meta["settings"]["synthetic_copies"] == 1 and meta["n_synthetic_cases"] >= 1  # the default
    # The default is fixed (auto measured no better) and model.json says why.
    assert meta["synthesis"]["requested"] == "default" and meta["synthesis"]["mode"] == "fixed"
    assert meta["synthesis"]["why"].startswith("default") and lines[-1]["synthesis"].startswith("synthetic data: fixed")
    parent = json.loads((Path(tiny_model_dir) / "model.json").read_text())
    assert meta["spot_detector"] == parent["spot_detector"] is not None  # Retrain keeps the parent's spot pass
    off = run_cli("train", phantom_case_dirs[0].parent, "--out", tmp_path / "v004", "--synthesis", "off",
                  "--max-steps", "2", "--minutes", "1", "--threads", "1", "--no-spot-pass")
    assert off.returncode == 0, off.stderr
    meta = json.loads((tmp_path / "v004" / "model.json").read_text())
    assert meta["synthesis"]["mode"] == "off" and meta["n_synthetic_cases"] == 0 and "synthetic data: off" in off.stdout
    assert meta["spot_detector"] is None and meta["settings"]["spot_pass"] is False
    bad = run_cli("train", phantom_case_dirs[0].parent, "--out", tmp_path / "v003", "--synthesis", "sometimes")
    assert bad.returncode == 2 and "--synthesis" in bad.stderr and not (tmp_path / "v003").exists()
    bad = run_cli("train", phantom_case_dirs[0].parent, "--out", tmp_path / "v003", "--threads", "0")
    assert bad.returncode == 2 and "--threads 0 must be at least 1" in bad.stderr and not (tmp_path / "v003").exists()
    bad = run_cli("train", phantom_case_dirs[0].parent, "--out", tmp_path / "v003", "--synthetic-copies", "-1")
    assert bad.returncode == 2 and "synthetic_copies -1" in bad.stderr and not (tmp_path / "v003").exists()


def test_demo_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--quick", "--out", out, "--real-case", tmp_path / "not_fetched")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "metrics.json").read_text())
    # Without the real case (offline), the demo says so and tells the story on phantoms.
    assert "the demo runs on phantoms" in result.stdout
    assert report["data"].startswith("phantoms") and "not available" in report["data"]
    # The story: the default model, then Retrain, on the same held-out cases, next to the floor.
    for stage in ("default_model", "retrained", "threshold_floor"):
        assert report[stage]["n_cases"] == 4 and 0.0 <= report[stage]["dice_mean"] <= 1.0
        assert set(report[stage]["recall_by_size"]) == {"<5mm", "5-10mm", "10-20mm", ">20mm"}
    assert report["training"]["tumors"] >= 3 and report["training"]["parent_check"]["parent"] == "default"
    assert "| after Retrain |" in result.stdout and "| default model |" in result.stdout and "| found " in result.stdout
    seg = next(out.glob("*_tumor.seg.nrrd"))
    ct = images.read_image(next(out.glob("*_ct.nrrd")))
    assert images.read_segmentation(seg)[0].same_grid(ct)
    assert next(out.glob("*_overlay.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "library" / "models" / "ACTIVE").read_text().strip() == "v001"
    # A second run never writes into a folder that already holds results.
    again = run_cli("demo", "--quick", "--out", out)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_train_help_gives_the_planned_steps_of_the_engine(capsys):
    """The --max-steps default is written only when help is shown (building the parser imports
    no training code), and it is the engine's own plan."""
    from LiverTumorSegLib.training.train import TrainSettings

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"planned optimisation steps (default {TrainSettings().max_steps}); model.json says how many ran" in help_text
