"""Post-processing and the segment() plumbing, with a small untrained network (fast)."""

import numpy as np
import pytest
import torch

from LiverTumorSegLib.errors import InputError
from LiverTumorSegLib.core.inference import mask_from_probability, segment
from LiverTumorSegLib.storage.modelstore import TrainedModel
from LiverTumorSegLib.core.network import build_network
from LiverTumorSegLib.core.features import FeatureSettings
from LiverTumorSegLib.volume import Volume


def test_threshold_liver_and_minimum_volume():
    prob = np.zeros((20, 20, 20), np.float32)
    prob[2:8, 2:8, 2:8] = 0.9  # 216 voxels
    prob[12:14, 12:14, 12:14] = 0.9  # 8 voxels: a speck
    prob[15:18, 2:5, 2:5] = 0.4  # below threshold
    liver = np.ones(prob.shape, bool)
    liver[2:8, 2:8, 2:4] = False
    mask = mask_from_probability(prob, liver, 0.5, (2.0, 1.0, 1.0), min_lesion_mm3=20.0)
    assert mask.dtype == bool
    assert mask.sum() == 6 * 6 * 4 and not mask[12:14, 12:14, 12:14].any()
    lenient = mask_from_probability(prob, None, 0.3, (2.0, 1.0, 1.0), min_lesion_mm3=0.0)
    assert lenient.sum() == 216 + 8 + 27
    # 26-connectivity: a diagonal neighbour belongs to the same lesion and is kept with it.
    prob2 = np.zeros((10, 10, 10), np.float32)
    prob2[2:5, 2:5, 2:5] = 1.0
    prob2[5, 5, 5] = 1.0
    assert mask_from_probability(prob2, None, 0.5, (1.0, 1.0, 1.0), min_lesion_mm3=20.0).sum() == 28
    assert not mask_from_probability(np.zeros((4, 4, 4)), None, 0.5, (1, 1, 1), 10.0).any()


def tiny_model(threshold=0.5):
    torch.manual_seed(0)
    spec = {"arch": "mhpnet", "in_channels": 3, "widths": [4, 8]}
    network = build_network(spec).eval()
    return TrainedModel(network, spec, FeatureSettings(spacing_mm=3.0), threshold, 10.0, {})


def test_segment_plumbing_with_and_without_a_liver_mask():
    rng = np.random.default_rng(0)
    hu = rng.normal(100, 15, (24, 40, 44)).astype(np.int16)
    image = Volume(hu, (1.5, 1.5, 3.0), (5.0, 6.0, 7.0))
    liver = np.zeros(hu.shape, bool)
    liver[6:18, 10:30, 10:34] = True
    reports = []
    result = segment(image, liver, tiny_model(), threshold=0.3, progress=reports.append)
    assert result.probability.same_grid(image) and result.tumor.same_grid(image)
    assert result.tumor.array.dtype == np.uint8 and result.threshold == 0.3
    assert (result.probability.array[~liver] == 0).all() and not result.tumor.array[~liver].any()
    assert {r["stage"] for r in reports} >= {"prepare", "network", "postprocess", "done"}
    whole = segment(image, None, tiny_model())
    assert whole.probability.array.shape == hu.shape and (whole.probability.array > 0).all()
    with pytest.raises(InputError):
        segment(image, liver, tiny_model(), threshold=1.5)


@pytest.mark.parametrize("margin_mm", [0.0, 12.0])
def test_segment_cleans_up_its_box_as_the_slider_cleans_up_the_whole_map(margin_mm):
    """segment() thresholds and drops slivers only around the liver's box (fast on a big CT);
    the threshold slider re-runs mask_from_probability on the whole map: the two must agree, also
    when the box is the liver's own bounding box (margin 0) and the liver touches the image's edge.
    Here the liver is a 2 mm sheet, so everything above threshold is a surface sliver."""
    rng = np.random.default_rng(1)
    hu = rng.normal(100, 15, (20, 30, 36)).astype(np.int16)
    image = Volume(hu, (1.5, 1.5, 1.0))
    liver = np.zeros(hu.shape, bool)
    liver[9:11, 5:25, 10:] = True  # 2 slices of 1 mm; reaches the last column
    model = tiny_model()
    model.feature_settings = FeatureSettings(spacing_mm=3.0, margin_mm=margin_mm)
    result = segment(image, liver, model, threshold=0.01)
    probability = result.probability.array
    assert (probability[liver] >= 0.01).all()  # all of the sheet is above threshold ...
    whole = mask_from_probability(probability, liver, 0.01, image.spacing_zyx, model.min_lesion_mm3)
    assert not whole.any()  # ... and all of it is a sliver
    np.testing.assert_array_equal(result.tumor.array > 0, whole)
    with pytest.raises(InputError, match="margin_mm"):
        FeatureSettings(margin_mm=-1.0)
