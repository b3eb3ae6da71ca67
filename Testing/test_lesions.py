"""lesions.py: components, sizes and table numbers checked against hand computations."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from LiverTumorSegLib.core.lesions import (
    Lesion,
    drop_surface_slivers,
    label_lesions,
    lesion_table,
    lesions_to_rows,
    mask_box,
)
from LiverTumorSegLib.storage.lesion_csv import write_lesion_csv
from LiverTumorSegLib.volume import Volume


def sphere(shape_zyx, center_zyx_mm, radius_mm, spacing_zyx) -> np.ndarray:
    """Voxels whose centres lie within radius_mm of the centre (all in mm, z, y, x)."""
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape_zyx, spacing_zyx)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, center_zyx_mm)) <= radius_mm**2


def test_label_lesions_uses_26_connectivity():
    mask = np.zeros((5, 5, 5), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # touch at a corner only: one lesion
    mask[4, 4, 4] = True  # two voxels away from everything: its own lesion
    labels, count = label_lesions(mask)
    assert count == 2 and labels.dtype == np.int32
    assert labels[1, 1, 1] == labels[2, 2, 2] != labels[4, 4, 4]


def test_sphere_volume_and_diameter():
    spacing_xyz = (0.8, 0.8, 2.0)
    spacing_zyx = spacing_xyz[::-1]
    shape = (16, 36, 36)
    center = (15.0, 14.0, 14.0)  # mm, z y x
    mask = sphere(shape, center, 10.0, spacing_zyx)
    ct = Volume(np.full(shape, 40.0, np.float32), spacing_xyz)
    (lesion,) = lesion_table(mask, ct)
    assert lesion.volume_ml == pytest.approx(4.0 / 3.0 * math.pi * 10.0**3 / 1000.0, rel=0.03)
    # Widest slice: a disk of radius 10 mm; edges of the outermost voxels give 20.0..20.8 mm.
    assert 19.8 <= lesion.longest_axial_diameter_mm <= 21.0
    assert lesion.mean_hu == pytest.approx(40.0)
    assert lesion.mean_probability is None


def test_diameter_of_a_rectangle_on_an_oblique_anisotropic_grid():
    mask = np.zeros((3, 6, 14), bool)
    mask[1, 2:4, 2:12] = True  # 10 voxels along x (0.5 mm) by 2 along y (2.0 mm): 5 mm x 4 mm
    rotation = Rotation.from_euler("xyz", [20.0, 35.0, -50.0], degrees=True).as_matrix()
    ct = Volume(np.zeros(mask.shape, np.float32), (0.5, 2.0, 3.0), (10.0, 20.0, 30.0), rotation.ravel())
    (lesion,) = lesion_table(mask, ct)
    assert lesion.longest_axial_diameter_mm == pytest.approx(math.hypot(5.0, 4.0), abs=1e-9)


def test_table_order_ids_means_and_centroid():
    shape = (10, 12, 14)
    mask = np.zeros(shape, bool)
    mask[1:3, 1:3, 1:3] = True  # 8 voxels
    mask[5:8, 5:8, 5:8] = True  # 27 voxels: largest, so id 1
    ct_array = np.full(shape, 100.0, np.float32)
    ct_array[1:3, 1:3, 1:3] = -20.0
    probability = np.zeros(shape, np.float32)
    probability[5:8, 5:8, 5:8] = 0.9
    probability[1:3, 1:3, 1:3] = 0.6
    ct = Volume(ct_array, (0.5, 1.0, 2.0), (-10.0, 20.0, 5.0))
    big, small = lesion_table(mask, ct, probability)
    assert (big.id, big.voxels, small.id, small.voxels) == (1, 27, 2, 8)
    assert big.volume_ml == pytest.approx(27 * 1.0 / 1000.0)
    assert (big.mean_hu, small.mean_hu) == (pytest.approx(100.0), pytest.approx(-20.0))
    assert (big.mean_probability, small.mean_probability) == (pytest.approx(0.9), pytest.approx(0.6))
    # Centre voxel (z, y, x) = (6, 6, 6): LPS = origin + (6 * 0.5, 6 * 1.0, 6 * 2.0); RAS negates x, y.
    assert big.centroid_ras == pytest.approx((10.0 - 3.0, -20.0 - 6.0, 5.0 + 12.0))
    assert big.longest_axial_diameter_mm == pytest.approx(math.hypot(1.5, 3.0))


def test_empty_mask_gives_no_lesions():
    ct = Volume(np.zeros((3, 3, 3), np.float32))
    assert lesion_table(np.zeros((3, 3, 3), bool), ct) == []


def test_mask_must_be_on_the_ct_grid():
    with pytest.raises(ValueError):
        lesion_table(np.zeros((3, 3, 4), bool), Volume(np.zeros((3, 3, 3), np.float32)))


def test_csv_and_rows(tmp_path):
    lesions = [
        Lesion(1, 27, 0.027, 3.354, 100.0, 0.9, (7.0, -26.0, 17.0)),
        Lesion(2, 8, 0.008, 1.5, -20.04, None, (1.25, -2.5, 3.75)),
    ]
    titles, rows = lesions_to_rows(lesions)
    assert titles[:3] == ["Lesion", "Voxels", "Volume (mL)"]
    assert rows[1] == [2, 8, 0.008, 1.5, -20.0, None, 1.2, -2.5, 3.8]
    path = tmp_path / "lesions.csv"
    write_lesion_csv(lesions, path)
    with open(path, newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    assert table[0][:4] == ["id", "voxels", "volume_ml", "longest_axial_diameter_mm"]
    assert table[2][5] == "" and float(table[1][2]) == 0.027
    assert [p.name for p in tmp_path.iterdir()] == ["lesions.csv"]  # atomic: no temporary left


def test_surface_slivers_go_and_blobs_stay_even_at_the_surface():
    spacing = (2.5, 1.0, 1.0)
    shape = (40, 80, 80)
    liver = sphere(shape, (50.0, 40.0, 40.0), 34.0, spacing)
    rim = liver & ~sphere(shape, (50.0, 40.0, 40.0), 32.5, spacing)  # 1-2 voxels under the surface
    z, _, x = np.indices(shape)
    sliver = rim & (x < 30) & (z >= 14) & (z < 26)  # a band along the side, away from the caps
    # A subcapsular tumor: a 10 mm ball whose edge reaches the liver surface.
    subcapsular = sphere(shape, (50.0, 40.0, 71.0), 5.0, spacing) & liver
    # A thin plate deep inside the liver (a flat lesion, not partial volume): kept.
    deep = np.zeros(shape, bool)
    deep[20, 35:45, 35:45] = True
    mask = sliver | subcapsular | deep
    assert sliver.sum() > 500 and label_lesions(subcapsular | deep)[1] == 2

    out = drop_surface_slivers(mask.copy(), liver, spacing)
    assert not (out & sliver).any()
    np.testing.assert_array_equal(out, subcapsular | deep)
    # A thinner limit keeps the sliver; the function works in place.
    again = mask.copy()
    assert drop_surface_slivers(again, liver, spacing, half_thickness_mm=0.5) is again
    np.testing.assert_array_equal(again, mask)


def test_mask_box_is_the_voxel_box_of_a_mask_and_none_when_empty():
    from LiverTumorSegLib.core.features import liver_box

    mask = np.zeros((6, 7, 8), bool)
    assert mask_box(mask) is None
    mask[2, 3, 4] = mask[4, 1, 7] = True
    assert mask_box(mask) == (2, 5, 1, 4, 4, 8)
    rng = np.random.default_rng(0)
    for _ in range(5):  # what the Logic used before: the liver box without margin
        mask = rng.random((9, 10, 11)) > 0.97
        assert mask_box(mask) == liver_box(mask, mask.shape, (1.0, 1.0, 1.0), 0.0)
