"""Property-based tests (hypothesis; few examples, derandomized, so every run checks the same ones).

- `segment` (the real command, in this process, with the shipped model) on random geometries:
  spacing, origin, rotated and flipped axes, sizes down to the smallest accepted (2 voxels per
  axis); every output (labelmap, .seg.nrrd, probability map) has the input's exact geometry.
- every metric of `evaluate_case` on random masks is finite and in its range.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from LiverTumorSegLib.cli import main
from LiverTumorSegLib.evaluation.metrics import evaluate_case, summarize

FEW = settings(max_examples=12, derandomize=True, deadline=None, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def rotation(angles, flips) -> np.ndarray:
    """A direction matrix: rotations about z, y, x, then each axis flipped where asked (det -1 for an odd number)."""
    a, b, c = angles
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rx = np.array([[1, 0, 0], [0, math.cos(c), -math.sin(c)], [0, math.sin(c), math.cos(c)]])
    return rz @ ry @ rx @ np.diag([-1.0 if f else 1.0 for f in flips])


geometry = st.fixed_dictionaries({
    "size": st.tuples(*[st.integers(2, 20)] * 3),
    "spacing": st.tuples(*[st.floats(0.3, 6.0)] * 3),
    "origin": st.tuples(*[st.floats(-500.0, 500.0)] * 3),
    "angles": st.tuples(*[st.floats(-math.pi, math.pi)] * 3),
    "flips": st.tuples(*[st.booleans()] * 3),
    "with_liver": st.booleans(),
    "seed": st.integers(0, 2**16),
})


def assert_same_geometry(path: Path, reference: sitk.Image) -> None:
    out = sitk.ReadImage(str(path))
    if out.GetDimension() == 4:  # never expected; would fail the size check below
        pytest.fail(f"{path} is 4D")
    assert out.GetSize()[:3] == reference.GetSize(), path
    np.testing.assert_allclose(out.GetSpacing(), reference.GetSpacing(), rtol=1e-12, atol=0, err_msg=str(path))
    np.testing.assert_allclose(out.GetOrigin(), reference.GetOrigin(), rtol=0, atol=1e-9, err_msg=str(path))
    np.testing.assert_allclose(out.GetDirection(), reference.GetDirection(), rtol=0, atol=1e-12, err_msg=str(path))


@FEW
@pytest.mark.filterwarnings("ignore")
@given(g=geometry)
def test_segment_output_has_the_input_geometry(tmp_path_factory, g):
    folder = tmp_path_factory.mktemp("geometry")
    rng = np.random.default_rng(g["seed"])
    size = g["size"]
    hu = rng.normal(60.0, 25.0, size[::-1]).astype(np.int16)  # soft tissue, a darker blob in the middle
    hu[tuple(slice(n // 3, max(n // 3 + 1, 2 * n // 3)) for n in size[::-1])] -= 60
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(g["spacing"])
    image.SetOrigin(g["origin"])
    image.SetDirection(tuple(rotation(g["angles"], g["flips"]).ravel()))
    sitk.WriteImage(image, str(folder / "ct.nrrd"))
    liver = []
    if g["with_liver"]:
        mask = sitk.GetImageFromArray(np.ones(size[::-1], np.uint8))
        mask.CopyInformation(image)
        sitk.WriteImage(mask, str(folder / "liver.nrrd"))
        liver = ["--liver", str(folder / "liver.nrrd")]
    ct = str(folder / "ct.nrrd")
    if not liver:  # at most 20 voxels a side: too small to hold a liver, refused before the liver network runs
        assert main(["segment", ct, "--out", str(folder / "t.nrrd")]) == 2
        assert not (folder / "t.nrrd").exists()
        return
    # (warnings expected here: thick slices, a mask filling the image)
    assert main(["segment", ct, *liver, "--out", str(folder / "t.nrrd"), "--prob", str(folder / "p.nrrd")]) == 0
    assert main(["segment", ct, *liver, "--out", str(folder / "t.seg.nrrd")]) == 0
    for name in ("t.nrrd", "t.seg.nrrd", "p.nrrd"):
        assert_same_geometry(folder / name, image)


masks = st.integers(3, 9).flatmap(
    lambda n: st.tuples(arrays(bool, (n, n + 1, n + 2)), arrays(bool, (n, n + 1, n + 2)),
                        st.tuples(*[st.floats(0.2, 8.0)] * 3)))


def all_numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from all_numbers(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from all_numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(m=masks)
def test_every_metric_is_finite_and_in_range(m):
    pred, truth, spacing = m
    scores = evaluate_case(pred, truth, spacing)
    assert all(math.isfinite(v) for v in all_numbers(scores)), scores
    assert 0.0 <= scores["dice"] <= 1.0
    for key in ("lesion_precision", "lesion_recall", "lesion_f1"):
        assert scores[key] is None or 0.0 <= scores[key] <= 1.0, (key, scores[key])
    for key in ("assd_mm", "hd95_mm"):
        assert scores[key] is None or scores[key] >= 0.0
    assert (scores["assd_mm"] is None) == (not pred.any() or not truth.any())
    assert scores["rvd"] is None or scores["rvd"] >= -1.0
    assert scores["intersection"] <= min(scores["pred_voxels"], scores["truth_voxels"])
    assert scores["true_lesions_found"] <= scores["n_true_lesions"]
    assert scores["pred_lesions_matched"] <= scores["n_pred_lesions"]
    for by_size in (scores["recall_by_size"], scores["precision_by_size"]):
        assert all(v is None or 0.0 <= v <= 1.0 for v in by_size.values()), by_size
    if not pred.any() and not truth.any():
        assert scores["dice"] == 1.0
    summary = summarize([scores, evaluate_case(truth, truth, spacing)])
    assert all(math.isfinite(v) for v in all_numbers(summary)), summary
