"""evaluation/metrics.py: LiTS-style metrics against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from LiverTumorSegLib.core.lesions import equivalent_diameter_mm
from LiverTumorSegLib.evaluation.metrics import evaluate_case, size_bin, summarize


def two_lesion_case():
    """Truth: lesion A (4^3 = 64 voxels) and B (2^3 = 8). Prediction: all of A plus an 8-voxel
    false positive far away; B is missed."""
    truth = np.zeros((20, 20, 20), bool)
    truth[2:6, 2:6, 2:6] = True
    truth[12:14, 12:14, 12:14] = True
    pred = np.zeros_like(truth)
    pred[2:6, 2:6, 2:6] = True
    pred[16:18, 2:4, 2:4] = True
    return pred, truth


def test_two_lesion_case_by_hand():
    pred, truth = two_lesion_case()
    m = evaluate_case(pred, truth, (2.0, 1.0, 1.0))
    assert (m["intersection"], m["pred_voxels"], m["truth_voxels"]) == (64, 72, 72)
    assert m["dice"] == pytest.approx(2 * 64 / 144)
    assert (m["n_true_lesions"], m["n_pred_lesions"]) == (2, 2)
    assert (m["lesion_recall"], m["lesion_precision"], m["lesion_f1"]) == (0.5, 0.5, 0.5)
    assert m["rvd"] == 0.0
    assert m["truth_volume_ml"] == pytest.approx(72 * 2.0 / 1000.0)


def test_a_large_prediction_touching_two_lesions_finds_both():
    truth = np.zeros((10, 10, 30), bool)
    truth[4:6, 4:6, 2:5] = True
    truth[4:6, 4:6, 10:13] = True
    pred = np.zeros_like(truth)
    pred[4:6, 4:6, 3:12] = True  # one component overlapping both
    m = evaluate_case(pred, truth, (1.0, 1.0, 1.0))
    assert (m["lesion_recall"], m["lesion_precision"], m["n_pred_lesions"]) == (1.0, 1.0, 1)


def test_empty_cases_never_give_nan():
    empty = np.zeros((8, 8, 8), bool)
    both_empty = evaluate_case(empty, empty, (1.0, 1.0, 1.0))
    assert both_empty["dice"] == 1.0
    assert both_empty["lesion_f1"] is None and both_empty["hd95_mm"] is None and both_empty["rvd"] is None
    truth = empty.copy()
    truth[2:4, 2:4, 2:4] = True
    missed = evaluate_case(empty, truth, (1.0, 1.0, 1.0))
    assert missed["dice"] == 0.0 and missed["lesion_recall"] == 0.0 and missed["lesion_f1"] == 0.0
    assert missed["lesion_precision"] is None and missed["assd_mm"] is None and missed["rvd"] == -1.0
    false_alarm = evaluate_case(truth, empty, (1.0, 1.0, 1.0))
    assert false_alarm["dice"] == 0.0 and false_alarm["lesion_precision"] == 0.0 and false_alarm["lesion_f1"] == 0.0


@pytest.mark.parametrize("axis, spacing_zyx, expected_mm", [(2, (1.0, 1.5, 2.0), 6.0), (0, (2.5, 1.0, 1.0), 7.5)])
def test_hd95_of_shifted_cubes_is_the_shift(axis, spacing_zyx, expected_mm):
    truth = np.zeros((24, 24, 24), bool)
    truth[6:16, 6:16, 6:16] = True
    pred = np.roll(truth, 3, axis=axis)  # shifted by 3 voxels
    m = evaluate_case(pred, truth, spacing_zyx)
    assert m["hd95_mm"] == pytest.approx(expected_mm)
    assert 0 < m["assd_mm"] < expected_mm


def test_assd_of_parallel_slabs():
    # Two 1-voxel-thick slabs 3 slices apart: every surface voxel is 3 * 2.5 mm from the other slab.
    truth = np.zeros((12, 6, 6), bool)
    truth[4] = True
    pred = np.zeros_like(truth)
    pred[7] = True
    m = evaluate_case(pred, truth, (2.5, 0.7, 0.7))
    assert m["assd_mm"] == pytest.approx(7.5) and m["hd95_mm"] == pytest.approx(7.5)


def test_identical_masks():
    truth = np.zeros((10, 10, 10), bool)
    truth[2:7, 3:8, 1:9] = True
    m = evaluate_case(truth, truth, (3.0, 0.8, 0.8))
    assert m["dice"] == 1.0 and m["hd95_mm"] == 0.0 and m["assd_mm"] == 0.0 and m["lesion_f1"] == 1.0


def test_recall_and_precision_by_size():
    """Known answers: true lesions binned by their own equivalent diameter (recall), predicted
    components by theirs (precision)."""
    truth = np.zeros((40, 40, 100), bool)
    truth[2:4, 2:4, 2:4] = True  # 8 mm^3 -> d = 2.5 mm
    truth[2:8, 2:8, 6:12] = True  # 216 mm^3 -> d = 7.4 mm (missed)
    truth[2:18, 2:18, 16:32] = True  # 4096 mm^3 -> d = 19.8 mm
    truth[2:27, 2:27, 40:65] = True  # 15625 mm^3 -> d = 31.0 mm
    pred = np.zeros_like(truth)
    pred[10:12, 10:12, 50:52] = True  # a 2.5 mm prediction inside the large lesion: true positive
    pred[30:36, 30:36, 80:86] = True  # a 7.4 mm false lesion
    m = evaluate_case(pred, truth, (1.0, 1.0, 1.0))
    assert equivalent_diameter_mm(4096.0) == pytest.approx(19.85, abs=0.01)
    assert size_bin(4.99) == "<5mm" and size_bin(5.0) == "5-10mm" and size_bin(20.0) == "10-20mm" and size_bin(20.1) == ">20mm"
    assert m["recall_by_size"] == {"<5mm": 0.0, "5-10mm": 0.0, "10-20mm": 0.0, ">20mm": 1.0}
    assert m["lesions_by_size"] == {"<5mm": [0, 1], "5-10mm": [0, 1], "10-20mm": [0, 1], ">20mm": [1, 1]}
    assert m["pred_lesions_by_size"] == {"<5mm": [1, 1], "5-10mm": [0, 1], "10-20mm": [0, 0], ">20mm": [0, 0]}
    assert m["precision_by_size"] == {"<5mm": 1.0, "5-10mm": 0.0, "10-20mm": None, ">20mm": None}
    s = summarize([m, evaluate_case(truth, truth, (1.0, 1.0, 1.0))])
    assert s["recall_by_size"] == {"<5mm": 0.5, "5-10mm": 0.5, "10-20mm": 0.5, ">20mm": 1.0}
    assert s["precision_by_size"] == {"<5mm": 1.0, "5-10mm": 0.5, "10-20mm": 1.0, ">20mm": 1.0}


def test_summary_by_hand():
    pred, truth = two_lesion_case()
    case_a = evaluate_case(pred, truth, (1.0, 1.0, 1.0))  # Dice 8/9, 1 of 2 lesions found, 1 of 2 preds true
    empty = np.zeros_like(truth)
    case_b = evaluate_case(empty, truth, (1.0, 1.0, 1.0))  # Dice 0, nothing found, no predictions
    s = summarize([case_a, case_b])
    assert s["n_cases"] == 2
    assert s["dice_mean"] == pytest.approx(4 / 9)
    assert s["dice_std"] == pytest.approx(4 / 9)
    assert s["dice_global"] == pytest.approx(2 * 64 / (72 + 144))
    assert s["lesion_recall_mean"] == pytest.approx(0.25)  # mean of 0.5 and 0.0
    assert s["lesion_precision_mean"] == pytest.approx(0.5)  # case b has none defined
    assert s["lesion_recall_pooled"] == pytest.approx(1 / 4)
    assert s["lesion_precision_pooled"] == pytest.approx(1 / 2)
    assert s["lesion_f1_pooled"] == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    assert s["n_distance_cases"] == 1 and s["hd95_mm_mean"] == case_a["hd95_mm"]
    assert s["recall_by_size"]["<5mm"] == pytest.approx(1 / 4)  # all four lesions are < 5 mm
    json.dumps(s)
    json.dumps(case_a)  # plain Python numbers only: results go to JSON as they are


def test_summary_of_nothing():
    s = summarize([])
    assert s["n_cases"] == 0 and s["dice_mean"] is None and s["dice_global"] is None
