"""The spot pass (core/spots.py): candidates on hand-made livers with known answers, the fitted
classifier's round trip and determinism, and its place in segment() (one probability map)."""

import numpy as np
import pytest

from LiverTumorSegLib.errors import ModelError
from LiverTumorSegLib.core.inference import mask_from_probability, segment
from LiverTumorSegLib.storage.modelstore import default_model_path, load_model
from LiverTumorSegLib.data.phantom import PhantomSettings, make_phantom
from LiverTumorSegLib.core.spots import (
    FEATURES, SpotDetector, SpotSettings, detector_of, find_candidates, map_to_threshold, on_ct_grid,
)
from LiverTumorSegLib.training.spot_fitting import fit_spot_detector, spot_fitting_cases
from LiverTumorSegLib.volume import Volume

SPACING = (2.0, 1.0, 1.0)


def ball(shape, center, radius_mm, spacing=SPACING) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, center, spacing))
    return d2 <= radius_mm ** 2


@pytest.fixture(scope="module")
def liver_with_spots():
    """A 100 HU liver ball (noise 8 HU) holding a 14 mm dark ball, a 12 mm bright ball, a 6 mm dark
    ball (under the 10 mm window) and a long bright vessel."""
    shape = (40, 110, 110)
    rng = np.random.default_rng(0)
    liver = ball(shape, (20, 55, 55), 50.0)
    hu = np.where(liver, 100.0, -100.0) + rng.normal(0, 8, shape)
    dark, bright, small = ball(shape, (20, 40, 40), 7.0), ball(shape, (20, 70, 70), 6.0), ball(shape, (20, 40, 72), 3.0)
    hu[dark] -= 50
    hu[bright] += 50
    hu[small] -= 50
    vessel = np.zeros(shape, bool)
    vessel[6:34, 78:82, 36:40] = True  # 56 mm long, 4 mm across: 12 mm of equivalent diameter
    hu[vessel] += 80
    tumor = dark | bright | small
    return Volume(hu.astype(np.float32), SPACING[::-1]), liver, tumor, dict(dark=dark, bright=bright, small=small, vessel=vessel)


def test_candidates_are_the_spots_in_the_size_window(liver_with_spots):
    image, liver, tumor, parts = liver_with_spots
    box, factors, labels, features, targets = find_candidates(image, liver, SpotSettings(), tumor=tumor)
    assert list(factors) == [1, 1, 1]  # 2 x 1 x 1 mm voxels: no block averaging on the way
    full = np.zeros(liver.shape, np.int32)
    full[box] = labels
    assert features.shape == (len(targets), len(FEATURES))
    bright_column = FEATURES.index("bright")
    for name, polarity in (("dark", 0.0), ("bright", 1.0)):
        hit = np.unique(full[parts[name]])
        hit = hit[hit > 0]
        assert len(hit) == 1, name  # one candidate each
        row = features[hit[0] - 1]
        assert row[bright_column] == polarity and targets[hit[0] - 1] == 1.0
        true_mm = {"dark": 14.0, "bright": 12.0}[name]  # the 1 mm smoothing widens a spot by a millimetre or two
        assert true_mm - 1.0 <= np.exp(row[FEATURES.index("log_diameter")]) <= true_mm + 3.0
        assert row[FEATURES.index("local_cnr")] > 3.0
    assert not full[parts["small"]].any()  # 6 mm: left to the network
    assert not (full[~liver]).any()
    vessel = np.unique(full[parts["vessel"]])
    vessel = vessel[vessel > 0]
    assert len(vessel) == 1  # in the size window: told apart by its shape, and no tumor
    assert features[vessel[0] - 1][FEATURES.index("log_elongation")] > np.log(3.0) and targets[vessel[0] - 1] == 0.0


def test_the_threshold_map_sends_the_cut_to_the_threshold():
    scores = np.linspace(0, 1, 101)
    mapped = map_to_threshold(scores, cut=0.3, threshold=0.7)
    assert np.all(np.diff(mapped) > 0) and mapped[0] == 0.0 and mapped[-1] == pytest.approx(1.0)
    assert np.array_equal(mapped >= 0.7, scores >= 0.3 - 1e-12)


@pytest.fixture(scope="module")
def fitting_cases():
    settings = PhantomSettings.small(n_tumors=(3, 5), tumor_diameter_mm=(10.0, 25.0))
    phantoms = [make_phantom(seed, settings) for seed in (31, 32)]
    return list(spot_fitting_cases([(f"p{seed}", p.image, p.labels) for seed, p in zip((31, 32), phantoms)], seed=0,
                                   variants=2))


def test_fitting_is_deterministic_and_round_trips(fitting_cases, liver_with_spots):
    image, liver, _, _ = liver_with_spots
    assert len(fitting_cases) == 6 and [c[0] for c in fitting_cases] == ["p31"] * 3 + ["p32"] * 3
    for k in (0, 3):  # each copy keeps the case's liver and tumors and adds tumors inside that liver only
        original = fitting_cases[k][2]
        for _, _, labels in fitting_cases[k + 1:k + 3]:
            np.testing.assert_array_equal(labels > 0, original > 0)
            assert np.all(labels[original == 2] == 2) and (labels == 2).sum() > (original == 2).sum()
    a, b = fit_spot_detector(fitting_cases), fit_spot_detector(iter(fitting_cases))  # a list or a generator
    assert a is not None and a.to_dict() == b.to_dict()
    assert a.fit_summary["tumor_candidates"] >= 3 and 0.0 < a.cut < 1.0
    again = SpotDetector.from_dict(a.to_dict())
    features = find_candidates(image, liver, a.settings)[3]
    np.testing.assert_array_equal(again.score(features), a.score(features))
    broken = dict(a.to_dict(), features=["something else"])
    with pytest.raises(ModelError, match="spot pass"):
        detector_of(type("M", (), {"meta": {"spot_detector": broken}})())


def test_segment_adds_the_accepted_spots_to_one_probability_map(liver_with_spots):
    """An accept-all spot pass on the shipped model: the spots' voxels reach the threshold in the
    probability map, the mask is that map thresholded (the slider reproduces it), nothing moves
    outside the candidates and without the pass segment is as before."""
    image, liver, tumor, parts = liver_with_spots
    model = load_model(default_model_path())
    assert detector_of(model) is not None  # the shipped model carries one (scripts/fit_spot_pass.py)
    plain = load_model(default_model_path())
    plain.meta = {k: v for k, v in plain.meta.items() if k != "spot_detector"}
    accept_all = SpotDetector(SpotSettings(), [0.0] * len(FEATURES), [1.0] * len(FEATURES), [0.0] * len(FEATURES), 10.0, 0.5)
    model.meta = dict(model.meta, spot_detector=accept_all.to_dict())
    without, with_spots = segment(image, liver, plain), segment(image, liver, model)
    assert "spots_s" in with_spots.timings and "spots_s" not in without.timings
    p0, p1 = without.probability.array, with_spots.probability.array
    assert np.all(p1 >= p0)
    candidates = np.zeros(liver.shape, bool)
    for fine, member, _ in on_ct_grid(*find_candidates(image, liver, SpotSettings())[:3], liver):
        candidates[fine] |= member
    assert not (p1 != p0)[~candidates].any()
    assert np.all(p1[candidates] >= model.threshold)
    mask = with_spots.tumor.array > 0
    assert mask[parts["dark"]].mean() > 0.5 and mask[parts["bright"]].mean() > 0.5
    again = mask_from_probability(p1, liver, with_spots.threshold, image.spacing_zyx, model.min_lesion_mm3)
    np.testing.assert_array_equal(again, mask)


def test_a_fine_ct_is_searched_on_a_coarser_grid_and_mapped_back(liver_with_spots):
    """0.5 mm in-plane voxels are averaged 3 x 3 (grid_mm 1.8); the spot found there lands on the
    right CT voxels, inside the liver only. The common 0.8 mm in-plane CT is averaged 2 x 2 (at
    grid_mm 1.5 it stayed at full resolution and the pass took three times as long)."""
    image, liver, tumor, parts = liver_with_spots
    fine = lambda a: np.repeat(np.repeat(a, 2, axis=1), 2, axis=2)  # noqa: E731 - 2 x 1 x 1 mm -> 2 x 0.5 x 0.5 mm
    fine_image = Volume(fine(image.array), (0.5, 0.5, 2.0))
    fine_liver, fine_dark = fine(liver), fine(parts["dark"])
    box, factors, labels, features, _ = find_candidates(fine_image, fine_liver, SpotSettings())
    assert list(factors) == [1, 3, 3]
    common = Volume(fine(image.array), (0.8, 0.8, 2.5))
    assert list(find_candidates(common, fine_liver, SpotSettings())[1]) == [1, 2, 2]
    found = np.zeros(fine_liver.shape, bool)
    for region, member, _ in on_ct_grid(box, factors, labels, fine_liver):
        found[region] |= member
    assert not found[~fine_liver].any()
    assert (found & fine_dark).sum() > 0.8 * fine_dark.sum()
    probability = np.zeros(fine_liver.shape, np.float32)
    accept_all = SpotDetector(SpotSettings(), [0.0] * len(FEATURES), [1.0] * len(FEATURES), [0.0] * len(FEATURES), 10.0, 0.5)
    assert accept_all.add_to(probability, fine_image, fine_liver, 0.7) == len(features)
    np.testing.assert_array_equal(probability >= 0.7, found)


def test_the_shipped_spot_pass_is_what_its_script_fits():
    """Resources/Models/default's spot pass is regenerated, not hand-made: scripts/fit_spot_pass.py
    on the rehearsal phantoms gives the same classifier (to the rounding of float sums)."""
    import json
    import sys
    from pathlib import Path

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    sys.path.insert(0, str(scripts))
    try:
        from fit_spot_pass import default_spot_pass
    finally:
        sys.path.remove(str(scripts))
    shipped = json.loads((default_model_path() / "model.json").read_text())["spot_detector"]
    fitted = default_spot_pass()
    assert fitted["cut"] == shipped["cut"] and fitted["settings"] == shipped["settings"]
    assert fitted["fit_summary"] == shipped["fit_summary"] and fitted["fitted_on"] == shipped["fitted_on"]
    for key in ("mean", "scale", "weights"):
        np.testing.assert_allclose(fitted[key], shipped[key], atol=1e-4)
    assert abs(fitted["bias"] - shipped["bias"]) < 1e-4
