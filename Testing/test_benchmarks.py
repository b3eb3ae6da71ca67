"""The benchmark scripts cannot rot: run their --tiny versions end to end into tmp_path and check
the JSON they write (structure, finite numbers) and that the plots exist. The numbers themselves
mean nothing at this size (2 training steps)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def _run(script: str, out: Path, *extra: str) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, str(BENCH / script), "--tiny", "--threads", "1", "--out", str(out), "--work", str(out / "work"), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads((out / script.replace(".py", ".json")).read_text())


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("small_data")
    return out, _run("small_data.py", out, "--models", "mhpnet", "unet3d")


def test_small_data_json_structure(small_data):
    out, result = small_data
    assert result["benchmark"] == "small_data"
    assert result["completed_runs"] == result["planned_runs"] == 4  # 2 threshold floors + 2 networks
    assert result["missing_runs"] == []
    assert set(result["test_sets"]) == {"phantom", "reference_synth", "small_tumor"}
    summary = result["summary"]
    for test in ("phantom", "reference_synth", "small_tumor"):
        assert set(summary[test]) == {"mhpnet", "unet3d", "threshold", "threshold_relative"}
        for model, per_k in summary[test].items():
            entry = per_k["2"]
            for metric in ("dice_mean", "dice_global"):
                assert _finite(entry[metric]["mean"]) and 0.0 <= entry[metric]["mean"] <= 1.0, (model, metric)
                assert _finite(entry[metric]["std"])
            assert set(entry["recall_by_size"]) == set(entry["precision_by_size_pooled"]) == {"<5mm", "5-10mm", "10-20mm", ">20mm"}
            assert _finite(entry["per_case_dice_pooled"]["mean"])
    for run in result["runs"]:
        assert run["train"]["training_cases"]
        for row in run["phantom"]["per_case"]:
            assert _finite(row["dice"]) and _finite(row["seconds"])
        if not run["model"].startswith("threshold"):
            assert run["train"]["steps"] == 2
    # Paired by seed: MHP-Net minus each other model, from the same per-case Dice as the summary.
    paired = result["paired_vs_mhpnet"]["phantom"]["unet3d"]["2"]
    expected = summary["phantom"]["mhpnet"]["2"]["dice_mean"]["mean"] - summary["phantom"]["unet3d"]["2"]["dice_mean"]["mean"]
    assert paired["n"] == 1 and abs(paired["mean"] - expected) < 1e-9
    assert "mhpnet" not in result["paired_vs_mhpnet"]["phantom"]
    # The training set holds exactly K tumors.
    assert result["training_sets"]["0"]["2"]["tumors"] == 2
    _png(out / "small_data.png")


def test_small_data_resumes_from_cache(small_data):
    """A second invocation finds every run cached and only rebuilds the report."""
    out, first = small_data
    again = _run("small_data.py", out, "--models", "mhpnet", "unet3d", "--report-only")
    assert again["completed_runs"] == first["completed_runs"]
    assert again["summary"] == first["summary"]


def test_speed_json_structure(tmp_path):
    result = _run("speed.py", tmp_path)
    assert result["benchmark"] == "speed"
    rows = result["segment"]
    assert {r["arch"] for r in rows} == {"mhpnet", "unet3d"}
    for row in rows:
        for stage in ("read_s", "hessian_s", "network_s", "to_input_grid_s", "write_s", "total_s", "segment_s"):
            assert _finite(row["median"][stage]) and row["median"][stage] >= 0, stage
        assert row["median"]["total_s"] >= row["median"]["network_s"]
        assert _finite(row["peak_rss_mib"]) and row["peak_rss_mib"] > 50
    for arch in ("mhpnet", "unet3d"):
        training = result["training_to_target"][arch]
        assert training["history"] and _finite(training["wall_s"])
    cli = result["command_line"]
    assert len(cli["runs"]) == cli["repeats"] >= 1 and cli["shape_zyx"][0] == rows[0]["shape_zyx"][0]
    assert all(_finite(r["wall_s"]) and r["wall_s"] > 0.5 and r["cpu_s"] > 0 for r in cli["runs"])  # a real process ran
    assert all(100 < r["peak_rss_mib"] < 4000 for r in cli["runs"])  # its own peak: torch alone is a few hundred MiB
    walls = [r["wall_s"] for r in cli["runs"]]
    assert min(walls) <= cli["median_wall_s"] <= max(walls)
    ratio = result["ratios"]["unet3d_over_mhpnet_by_slices"]
    assert ratio and all(_finite(v) for r in ratio.values() for v in r.values())
    _png(tmp_path / "speed.png")


def test_method_changes_tiny_writes_every_variant_of_the_chain_by_size(tmp_path):
    result = _run("method_changes.py", tmp_path)
    assert result["benchmark"] == "method_changes" and result["preset"] == "tiny"
    chain = [c["variant"] for c in result["chain"]]
    assert [v["variant"] for v in result["variants"]] == chain and chain[0] == "base"
    by_name = {v["variant"]: v for v in result["variants"]}
    # Changes accumulate down the chain: the last variant holds every earlier change too.
    last = by_name[chain[-1]]["settings"]
    assert last["synthetic_tumors"] == [2, 4] and last["features"]["spacing_mm"] == 1.5
    assert by_name["base"]["settings"]["features"]["spacing_mm"] == 2.0
    assert by_name["base"]["settings"]["synthetic_tumors"] == [1, 2]
    tests = set(result["test_sets"])
    assert tests == {"phantom", "reference_synth", "small_tumor"}
    for entry in [*result["variants"], *result["floors"]["0"].values()]:
        for test in tests:
            numbers = entry[test]
            assert 0.0 <= numbers["dice_mean"] <= 1.0
            assert set(numbers["recall_by_size"]) == set(numbers["precision_by_size"]) == {"<5mm", "5-10mm", "10-20mm", ">20mm"}
            counted = sum(v["tumors"] for v in numbers["recall_by_polarity"].values())
            assert counted == result["test_sets"][test]["n_tumors"] >= 1
            assert sum(n for _, n in numbers["lesions_by_size"].values()) == counted
    for variant in result["variants"]:
        assert variant["steps"] == 2


def test_synthesis_tiny_runs_off_fixed_auto_and_resumes(tmp_path):
    result = _run("synthesis.py", tmp_path)
    assert result["benchmark"] == "synthesis" and result["completed"] == ["off_k7_s0", "fixed_k7_s0", "auto_k7_s0"]
    tests = set(result["test_sets"])
    assert tests == {"phantom", "reference_synth", "small_tumor"}  # tiny: small tumors in the real CT only
    for test in tests:
        for mode in ("off", "fixed", "auto"):
            entry = result["summary"][test][mode]["7"]
            assert 0.0 <= entry["dice_mean"]["mean"] <= 1.0 and entry["seeds"] == [0]
            assert set(entry["recall_by_size"]) == set(entry["precision_by_size"]) == {"5-10mm", "10-20mm", ">20mm"}
            assert sum(n for _, n in entry["recall_by_polarity"].values()) == result["test_sets"][test]["n_tumors"]
    by_mode = {r["mode"]: r for r in result["runs"]}
    assert by_mode["off"]["n_synthetic_cases"] == 0 < by_mode["fixed"]["n_synthetic_cases"]
    auto = by_mode["auto"]["synthesis"]
    assert auto["mode"] == "auto" and {c["name"] for c in auto["candidates"]} >= {"off", "fixed"}
    [check] = result["search_check"]
    assert check["chosen"] == auto["chosen"] and set(check["test_gain_vs_off"]) == tests
    assert result["paired"]["auto-off"]["phantom"]["7"]["n"] == 1
    _png(tmp_path / "synthesis.png")
    again = _run("synthesis.py", tmp_path, "--report-only")  # every run comes from the cache
    assert again["completed"] == result["completed"] and again["runs"] == result["runs"]


def test_small_data_steps_fix_each_networks_budget_and_refuse_bad_input():
    """--steps MODEL=N sets that network's planned steps (the others keep --max-steps)."""
    sys.path.insert(0, str(BENCH))
    try:
        import small_data as sd
    finally:
        sys.path.remove(str(BENCH))
    steps = sd.steps_by_model(["mhpnet=450", "unet3d=250"])
    assert steps == {"mhpnet": 450, "unet3d": 250}
    config = {**sd.PRESETS["full"], "steps_by_model": steps}
    assert sd.train_settings("unet3d", 0, config).max_steps == 250
    assert sd.train_settings("mhpnet", 0, config).max_steps == 450
    assert sd.train_settings("mhpnet_no_hessian", 0, config).max_steps == config["max_steps"]
    assert "fixed steps per network (mhpnet 450, unet3d 250" in sd.budget_text(config)
    for bad in ("resnet=10", "mhpnet=0", "mhpnet=ten", "mhpnet"):
        with pytest.raises(SystemExit, match="MODEL=N"):
            sd.steps_by_model([bad])


def test_visibility_measures_contrast_noise_and_scan_edge_of_each_tumor():
    """small_tumor_visibility.tumor_visibility on a hand-made CT with known answers."""
    sys.path.insert(0, str(BENCH))
    try:
        from small_tumor_visibility import band, found_by, tumor_visibility
    finally:
        sys.path.remove(str(BENCH))
    import numpy as np

    from LiverTumorSegLib.volume import Volume

    shape, spacing = (40, 60, 60), (2.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    hu = (100.0 + 10.0 * rng.standard_normal(shape)).astype(np.float32)
    z, y, x = np.indices(shape)
    liver = (y > 5) & (y < 55) & (x > 5) & (x < 55)
    dark = ((z - 20) * 2.0) ** 2 + (y - 20.0) ** 2 + (x - 20.0) ** 2 <= 4.0**2
    bright = ((z - 1) * 2.0) ** 2 + (y - 40.0) ** 2 + (x - 40.0) ** 2 <= 3.0**2
    hu[dark] -= 30.0
    hu[bright] += 50.0
    labels = liver.astype(np.uint8)
    labels[dark | bright] = 2
    image = Volume(hu, spacing[::-1], (0.0, 0.0, 0.0), np.eye(3).ravel().tolist())
    rows, components = tumor_visibility(image, Volume(labels, spacing[::-1], (0.0, 0.0, 0.0), np.eye(3).ravel().tolist()))
    rows = sorted(rows, key=lambda r: r["contrast_hu"])
    assert [r["polarity"] for r in rows] == ["hypo", "hyper"]
    assert abs(rows[0]["contrast_hu"] + 30) < 4 and abs(rows[1]["contrast_hu"] - 50) < 6
    assert all(7 < r["noise_hu"] < 13 for r in rows)
    assert 2.2 < rows[0]["cnr"] < 4.5 and band(rows[0]["cnr"]) == "CNR >= 2" and band(0.5) == "CNR < 1"
    assert rows[1]["scan_edge_mm"] == 0.0 and rows[0]["scan_edge_mm"] >= 30.0  # the bright one touches slice 0
    assert 7.0 < rows[0]["diameter_mm"] < 9.5 and rows[0]["size_bin"] == "5-10mm"
    assert found_by(dark, components, 2).count(True) == 1
