"""The floor relative to each CT's liver (core/relative_floor.py): round spots darker than the
CT's own parenchyma are added where the network found nothing; tubes, fat and air, large masses,
unenhanced livers and the network's own lesions are left alone."""

import copy

import numpy as np
import pytest
from scipy import ndimage

from LiverTumorSegLib.core.floor import ThresholdBaseline
from LiverTumorSegLib.core.inference import segment
from LiverTumorSegLib.errors import ModelError
from LiverTumorSegLib.core.lesions import label_lesions
from LiverTumorSegLib.core.relative_floor import RelativeFloor, default_relative_floor, elongation, floors_of
from LiverTumorSegLib.storage import images
from LiverTumorSegLib.storage.modelstore import default_model_path, load_model
from LiverTumorSegLib.volume import Volume

SHAPE = (48, 64, 64)
EVERYWHERE = tuple(slice(0, n) for n in SHAPE)


def ball(center, radius_mm):
    z, y, x = np.indices(SHAPE)
    return (z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2 <= radius_mm**2


def tube(z, y, x0, x1, radius_mm):
    """A vessel along x (1 mm voxels)."""
    zz, yy, xx = np.indices(SHAPE)
    return ((zz - z) ** 2 + (yy - y) ** 2 <= radius_mm**2) & (xx >= x0) & (xx < x1)


SPOT = ball((16, 20, 20), 4)  # 8 mm across: a small metastasis
VESSEL = tube(40, 52, 10, 54, 2)  # 4 mm across, 44 mm long
MASS = ball((24, 40, 24), 12)  # 24 mm across: the network's to find
AT_THE_EDGE = ball((36, 20, 44), 4)  # a dark spot with fat in it (partial volume at the liver's edge)
CYST = ball((10, 44, 44), 4)  # water density


def liver_case(liver_hu=110.0, dark_hu=60.0, shift=0.0, seed=0):
    """A liver (1 mm voxels, noise 8 HU) holding the dark structures above: (image, liver)."""
    rng = np.random.default_rng(seed)
    liver = np.zeros(SHAPE, bool)
    liver[2:46, 4:60, 4:60] = True
    hu = np.where(liver, liver_hu, -100.0) + rng.normal(0, 8, SHAPE)
    for dark in (SPOT, VESSEL, MASS, AT_THE_EDGE):
        hu[dark] = dark_hu + rng.normal(0, 8, int(dark.sum()))
    hu[ball((36, 20, 44), 1.5)] = -400.0
    hu[CYST] = 8.0 + rng.normal(0, 8, int(CYST.sum()))
    return Volume((hu + shift).astype(np.float32), (1.0, 1.0, 1.0)), liver


def added_by(floor, image, liver, found=None):
    probability = np.zeros(SHAPE, np.float32)
    found = np.zeros(SHAPE, bool) if found is None else found
    count = floor.add_missed_lesions(probability, image, liver, 0.5, EVERYWHERE, found)
    return count, probability >= 0.5


def test_a_round_dark_spot_is_added_and_vessels_fat_cysts_and_large_masses_are_not():
    image, liver = liver_case()
    count, added = added_by(RelativeFloor(), image, liver)
    assert count == 1
    assert added[ball((16, 20, 20), 2)].all() and not added[~SPOT].any()  # its core, not beyond it
    assert elongation(VESSEL, (1, 1, 1)) > 5 > elongation(SPOT, (1, 1, 1))
    # Only the shape, content and size rules keep the four others out: without them all five are dark enough.
    anything = RelativeFloor(max_elongation=1e9, max_diameter_mm=1e9, lowest_hu=-1e9, water_hu=-1e9)
    assert added_by(anything, image, liver)[0] == 5
    assert added_by(RelativeFloor(water_hu=-1e9), image, liver)[0] == 2  # the cyst


def test_the_floor_follows_the_liver_not_an_absolute_hu():
    """A scanner or contrast phase 40 HU brighter moves liver and tumor alike: the same spot is found,
    where an absolute threshold fitted between the first's liver and spot (ThresholdBaseline) loses it.
    (The cyst, lifted to 48 HU, is no longer water: only the spot is compared.)"""
    image, liver = liver_case(seed=2)
    brighter, _ = liver_case(seed=2, shift=40.0)
    here, there = added_by(RelativeFloor(), image, liver)[1], added_by(RelativeFloor(), brighter, liver)[1]
    near_spot = ball((16, 20, 20), 7)
    assert here[SPOT].any() and not there[~near_spot & ~ball((10, 44, 44), 7)].any()
    np.testing.assert_array_equal(here[near_spot], there[near_spot])
    absolute = ThresholdBaseline(threshold_hu=90.0)
    assert absolute.segment(image, liver)[SPOT].any()
    assert absolute.segment(brighter, liver)[SPOT].mean() < 0.1  # the spot, now at 100 HU, is above 90: lost


def test_a_spot_on_one_thick_slice_is_round_not_a_vessel():
    """On 5 mm slices an 8 mm metastasis lies on one slice: as a solid body it is about as deep as
    it is wide. A vessel in the same slice is still long."""
    spacing = (5.0, 0.8, 0.8)
    z, y, x = np.indices((5, 41, 41))
    spot = (((z - 2) * 5.0) ** 2 + ((y - 20) * 0.8) ** 2 + ((x - 20) * 0.8) ** 2) <= 4.0**2
    vessel = (z == 2) & (np.abs((y - 20) * 0.8) <= 2.0) & (np.abs((x - 20) * 0.8) <= 15.0)
    assert np.unique(z[spot]).tolist() == [2]
    assert elongation(spot, spacing) < 1.5 < RelativeFloor().max_elongation * 1.5 < elongation(vessel, spacing)


def test_an_unenhanced_liver_gets_no_floor():
    """Without contrast the liver is 50-65 HU and its vessels are darker than it everywhere (the
    spot here is 25 HU: above water, so only the gate keeps it out)."""
    image, liver = liver_case(liver_hu=70.0, dark_hu=25.0)
    assert added_by(RelativeFloor(), image, liver)[0] == 0
    assert added_by(RelativeFloor(min_liver_hu=40.0), image, liver)[0] == 1


def test_the_liver_level_leaves_out_the_lesions_already_found():
    """A liver more than half filled with found tumor: its parenchyma is still 110 HU, so the spot
    is still 50 HU below it (the median over the whole liver would sit at the tumor's 60 HU)."""
    image, liver = liver_case()
    burden = np.zeros(SHAPE, bool)
    burden[2:46, 4:60, 28:60] = True
    array = image.array.copy()
    array[burden] = 60.0
    count, added = added_by(RelativeFloor(), image.with_array(array), liver, found=burden)
    assert count == 1 and added[SPOT].any()


def test_a_spot_the_network_already_found_keeps_the_networks_outline():
    image, liver = liver_case()
    found = ball((16, 20, 20), 2)
    assert added_by(RelativeFloor(), image, liver, found)[0] == 0


def test_the_shipped_default_model_carries_the_floor_and_a_fitted_floor_comes_first():
    model = load_model(default_model_path())
    assert floors_of(model) == [RelativeFloor()] and RelativeFloor() == RelativeFloor.from_dict(default_relative_floor())
    fitted = {"threshold_hu": 91.0, "sigma_mm": 1.0, "min_lesion_mm3": 50.0}
    retrained = type("Model", (), {"meta": {**model.meta, "intensity_floor": fitted}})()
    assert floors_of(retrained) == [ThresholdBaseline(91.0), RelativeFloor()]
    not_kept = type("Model", (), {"meta": {**model.meta, "intensity_floor": {**fitted, "threshold_hu": None}}})()
    assert floors_of(not_kept) == [RelativeFloor()]
    unreadable = type("Model", (), {"meta": {"relative_floor": {"below_liver_hu": "thirty"}}})()
    with pytest.raises(ModelError, match="relative floor in model.json is unreadable"):
        floors_of(unreadable)


@pytest.fixture(scope="module")
def default_model():
    return load_model(default_model_path())


def without_relative_floor(model):
    plain = copy.copy(model)
    plain.meta = {k: v for k, v in model.meta.items() if k != "relative_floor"}
    return plain


def test_the_default_model_calls_nothing_more_in_a_tumor_free_real_contrast_ct(default_model, totalseg_dir):
    """The real DICOM series (liver about 93 HU) is what the floor's settings had to leave clean."""
    ct = images.read_image(totalseg_dir / "example_ct_dicom", keep_integer=True)
    liver = images.read_liver_mask(totalseg_dir / "example_ct_dicom_liver.nii.gz", reference=ct)
    with_floor = segment(ct, liver, default_model)
    assert "floor_s" in with_floor.timings
    np.testing.assert_array_equal(with_floor.tumor.array, segment(ct, liver, without_relative_floor(default_model)).tumor.array)


def test_the_default_model_finds_a_small_dark_spot_in_a_real_contrast_ct(default_model, totalseg_dir):
    """A 7 mm spot 45 HU darker than the liver, painted deep in the real DICOM series' liver."""
    ct = images.read_image(totalseg_dir / "example_ct_dicom", keep_integer=True)
    liver = images.read_liver_mask(totalseg_dir / "example_ct_dicom_liver.nii.gz", reference=ct)
    depth = ndimage.distance_transform_edt(liver, sampling=ct.spacing_zyx)
    centre = np.unravel_index(int(np.argmax(depth)), liver.shape)
    z, y, x = np.indices(liver.shape)
    sz, sy, sx = ct.spacing_zyx
    spot = ((z - centre[0]) * sz) ** 2 + ((y - centre[1]) * sy) ** 2 + ((x - centre[2]) * sx) ** 2 <= 3.5**2
    array = ct.array.astype(np.float32)
    array[spot] = float(np.median(array[liver])) - 45.0
    painted = ct.with_array(array)
    found = segment(painted, liver, default_model).tumor.array > 0
    components, count = label_lesions(found)
    assert count == 1 and found[spot].mean() > 0.5
    assert not segment(painted, liver, without_relative_floor(default_model)).tumor.array.any()  # the network alone misses it
