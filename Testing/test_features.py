"""core/features.py: liver box, working grid, liver-relative normalisation and the way back to the CT grid."""

import numpy as np
import pytest

from LiverTumorSegLib.errors import InputError
from LiverTumorSegLib.core.features import FeatureSettings, liver_box, prepare_case
from LiverTumorSegLib.volume import Volume


def abdomen(liver_hu=110.0, spacing=(0.8, 0.8, 2.5), shape=(40, 120, 140), seed=0):
    """A fat-filled box holding a liver ellipsoid with a dark 'tumor' ball, and its labels 0/1/2."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing[::-1])], indexing="ij")
    liver = ((z - 50) / 35) ** 2 + ((y - 48) / 30) ** 2 + ((x - 60) / 40) ** 2 <= 1
    tumor = (z - 50) ** 2 + (y - 48) ** 2 + (x - 70) ** 2 <= 10**2
    hu = np.full(shape, -100.0, np.float32)
    hu[liver] = liver_hu
    hu[tumor] = liver_hu - 60
    hu += rng.normal(0, 12, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[liver] = 1
    labels[tumor] = 2
    return Volume(np.rint(hu).astype(np.int16), spacing, (10.0, -20.0, 5.0)), labels


def test_box_covers_the_liver_plus_margin():
    image, labels = abdomen()
    box = liver_box(labels > 0, image.shape, image.spacing_zyx, margin_mm=10.0)
    zs, ys, xs = np.nonzero(labels)
    assert box[0] == max(0, zs.min() - 4) and box[1] == min(image.shape[0], zs.max() + 1 + 4)
    assert box[2] == ys.min() - 13 and box[3] == ys.max() + 1 + 13
    assert box[4] == xs.min() - 13 and box[5] == xs.max() + 1 + 13


def test_prepare_resamples_to_the_working_spacing_and_normalises_to_the_liver():
    image, labels = abdomen()
    settings = FeatureSettings(spacing_mm=1.5, margin_mm=10.0)
    p = prepare_case(image, labels > 0, settings, labels=labels)
    assert p.features.shape == (3,) + p.shape and p.features.dtype == np.float32
    assert p.channel_names == ["ct_liver", "hessian_dark", "hessian_bright"]
    np.testing.assert_allclose(p.work_spacing_zyx, 1.5, atol=0.1)
    # Physical size is kept: box extent (mm) = working extent (mm).
    z0, z1, y0, y1, x0, x1 = p.box
    extent_in = np.array([z1 - z0, y1 - y0, x1 - x0]) * np.array(image.spacing_zyx)
    np.testing.assert_allclose(np.array(p.shape) * np.array(p.work_spacing_zyx), extent_in)
    # Liver parenchyma sits at ~0, the tumor ~60 HU below: ~ -60 / spread.
    ct = p.features[0]
    parenchyma = p.liver & ~p.tumor
    assert abs(np.median(ct[parenchyma])) < 0.2
    assert 100 < p.liver_median_hu < 120 and 10 <= p.spread_hu <= 20
    assert np.median(ct[p.tumor]) < -2.5
    # The dark-blob channel is high in the tumor and low in the parenchyma.
    dark = p.features[1]
    assert np.median(dark[p.tumor]) > 5 * np.median(dark[parenchyma]) + 0.1


def test_liver_relative_features_do_not_depend_on_the_enhancement_level():
    """Same anatomy, liver at 90 vs 130 HU (another phase or scanner): the same input channels."""
    a = prepare_case(*_image_and_liver(abdomen(liver_hu=90.0)), FeatureSettings(spacing_mm=2.0))
    b = prepare_case(*_image_and_liver(abdomen(liver_hu=130.0)), FeatureSettings(spacing_mm=2.0))
    inside = a.liver
    assert np.abs(a.features[:, inside] - b.features[:, inside]).mean() < 0.05
    w = FeatureSettings(spacing_mm=2.0, normalization="window", use_hessian=False)
    wa = prepare_case(*_image_and_liver(abdomen(liver_hu=90.0)), w)
    wb = prepare_case(*_image_and_liver(abdomen(liver_hu=130.0)), w)
    assert np.abs(wa.features[0, inside] - wb.features[0, inside]).mean() > 0.08


def _image_and_liver(case):
    image, labels = case
    return image, labels > 0


def test_to_input_grid_maps_back_onto_the_ct():
    image, labels = abdomen()
    p = prepare_case(image, labels > 0, FeatureSettings(spacing_mm=1.5, use_hessian=False), labels=labels)
    tumor_back = p.to_input_grid(p.tumor)
    assert tumor_back.shape == image.shape and tumor_back.dtype == bool
    truth = labels == 2
    dice = 2 * np.count_nonzero(tumor_back & truth) / (tumor_back.sum() + truth.sum())
    assert dice > 0.9
    smooth = p.to_input_grid(p.features[0])
    assert smooth.dtype == np.float32
    z0, z1, y0, y1, x0, x1 = p.box
    assert (smooth[:z0] == 0).all() and (smooth[:, :, x1:] == 0).all()


def test_whole_image_without_liver_mask_and_options():
    image, _ = abdomen(shape=(20, 60, 60))
    p = prepare_case(image, None, FeatureSettings(spacing_mm=2.0, normalization="both", hessian_combine="stack",
                                                  hessian_scales_mm=(3.0, 6.0)))
    assert p.box == (0, 20, 0, 60, 0, 60) and p.liver.all()
    assert p.channel_names == ["ct_liver", "ct_window", "hessian_dark_3mm", "hessian_dark_6mm",
                               "hessian_bright_3mm", "hessian_bright_6mm"]
    assert p.features.shape[0] == 6
    assert 0.0 <= p.features[1].min() and p.features[1].max() <= 1.0


def test_bad_masks_are_input_errors():
    image, labels = abdomen(shape=(20, 60, 60))
    with pytest.raises(InputError, match="empty"):
        prepare_case(image, np.zeros(image.shape, bool))
    with pytest.raises(InputError, match="grid"):
        prepare_case(image, np.ones((5, 5, 5), bool))
    with pytest.raises(InputError):
        FeatureSettings(normalization="zscore")


def test_feature_settings_round_trip_through_a_dict():
    s = FeatureSettings(spacing_mm=1.25, hessian_scales_mm=(2, 4), spread_hu=30.0)
    d = s.to_dict()
    assert isinstance(d["hessian_scales_mm"], list)
    assert FeatureSettings.from_dict(d) == s
    assert FeatureSettings.from_dict({**d, "unknown_future_field": 1}) == s


def test_models_that_carry_retired_feature_options_load_at_their_only_value():
    """Older model files carry liver_reference, hessian_outside, fine_hessian_mm and
    fine_hessian_scales_mm (options removed on purpose: measured, kept off). At the value that is
    now the only behaviour they load and are ignored; any other value is refused by name, since
    this version cannot compute those channels."""
    from LiverTumorSegLib.errors import ModelError

    old = {**FeatureSettings().to_dict(), "liver_reference": "median", "hessian_outside": "image",
           "fine_hessian_mm": None, "fine_hessian_scales_mm": [1.5, 2.5]}
    s = FeatureSettings.from_dict(old)
    assert s == FeatureSettings() and "liver_reference" not in s.to_dict()
    assert s.channel_names == ["ct_liver", "hessian_dark", "hessian_bright"]
    for key, value in (("liver_reference", "mode"), ("hessian_outside", "liver_level"), ("fine_hessian_mm", 1.25)):
        with pytest.raises(ModelError, match=f"{key}=.*retrain the model with this version, or run it with an older"):
            FeatureSettings.from_dict({**old, key: value})
