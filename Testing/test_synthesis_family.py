"""The synthesis family (synthesis_family.py) on the real TotalSegmentator livers: inside the liver,
the requested size and contrast, never touching real tumors, reproducible, fast."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from LiverTumorSegLib.errors import InputError
from LiverTumorSegLib.core.lesions import label_lesions
from LiverTumorSegLib.data.synthesis import synthesize_tumors
from LiverTumorSegLib.data.synthesis_family import (CONTRAST_TOLERANCE, SIZE_TOLERANCE, SynthesisFamily, family_copy,
                                               liver_statistics, synthesize_family)

PLAIN = dict(rim_fraction=0.0, necrosis_fraction=0.0)


@pytest.fixture(scope="module")
def with_real_tumors(references):
    """The 1 mm DICOM case with three 'real' tumors (labels 0/1/2) the family must avoid."""
    image, liver = references["example_ct_dicom"]
    out, labels, _ = synthesize_tumors(image, liver, seed=21, n_tumors=3, radius_mm=(6.0, 12.0))
    return out, labels


@pytest.mark.parametrize("name", ["example_ct_sm", "example_ct_dicom"])
def test_size_and_contrast_as_requested_hypo_and_hyper(references, name):
    image, liver = references[name]
    median, _ = liver_statistics(image, liver)
    kinds = set()
    for seed in range(3):
        family = SynthesisFamily(count=(5, 5), diameter_mm=(5.0, 40.0), hyper_fraction=0.5, **PLAIN)
        out, labels, tumors = synthesize_family(image, liver, family, seed=seed)
        assert len(tumors) >= 4
        components, n = label_lesions(labels.array == 2)
        assert n == len(tumors)  # each tumor its own lesion
        for t in tumors:
            kinds.add(t["kind"])
            assert abs(t["measured_diameter_mm"] / t["diameter_mm"] - 1) <= SIZE_TOLERANCE, t
            assert 5.0 * (1 - SIZE_TOLERANCE) <= t["measured_diameter_mm"] <= 40.0 * (1 + SIZE_TOLERANCE)
            # measured here from the arrays, not from the dict: mean HU over the tumor minus the liver median
            k = components[tuple(np.round(t["center"]).astype(int))]
            if k == 0:  # a lobulated tumor's centroid may fall outside it
                continue
            measured = float(out.array[components == k].mean()) - median
            allowed = max(CONTRAST_TOLERANCE[0], CONTRAST_TOLERANCE[1] * abs(t["requested_contrast_hu"]))
            assert abs(measured - t["requested_contrast_hu"]) <= allowed, (t, measured)
            assert (measured > 0) == (t["kind"] == "hyper")
    assert kinds == {"hypo", "hyper"}


def test_stays_inside_the_liver_and_changes_nothing_outside_it(references):
    image, liver = references["example_ct_dicom"]
    out, labels, tumors = synthesize_family(image, liver, SynthesisFamily(count=(4, 4), diameter_mm=(20.0, 60.0), size_skew="large"), seed=5)
    assert tumors and np.all(liver[labels.array == 2]) and np.array_equal(labels.array > 0, liver)
    changed = np.abs(out.array - image.array.astype(np.float32)) > 1e-3
    assert changed.any() and not np.any(changed & ~liver)


def test_never_touches_real_tumors(with_real_tumors):
    image, labels = with_real_tumors
    real = labels.array == 2
    out, new_labels, tumors = synthesize_family(image, labels.array, SynthesisFamily(count=(6, 6)), seed=8)
    assert len(tumors) >= 4
    assert np.array_equal(new_labels.array[real], labels.array[real])  # real tumors keep their label...
    assert np.array_equal(out.array[real], image.array[real].astype(np.float32))  # ...and their HU
    new = (new_labels.array == 2) & ~real
    assert not np.any(ndimage.binary_dilation(new, structure=np.ones((3, 3, 3), bool), iterations=2) & real)  # 2 voxels apart
    assert label_lesions(new_labels.array == 2)[1] == label_lesions(real)[1] + len(tumors)


def test_rim_necrosis_and_copy_paste(with_real_tumors):
    image, labels = with_real_tumors
    family = SynthesisFamily(count=(4, 4), diameter_mm=(25.0, 40.0), hyper_fraction=0.0, rim_fraction=1.0,
                             necrosis_fraction=1.0, paste=(2, 2))
    out, new_labels, tumors = family_copy(image, labels, family, seed=3)
    pasted = [t for t in tumors if t["kind"] == "pasted"]
    made = [t for t in tumors if t["kind"] != "pasted"]
    assert len(pasted) == 2 and made and all(t["rim"] and t["necrosis"] for t in made)
    assert label_lesions(new_labels.array == 2)[1] == 3 + len(tumors)
    assert np.all((new_labels.array == 2) <= (labels.array > 0))


def test_same_seed_same_tumors_and_fast(references):
    image, liver = references["example_ct_dicom"]
    family = SynthesisFamily(count=(3, 3), diameter_mm=(40.0, 60.0))
    a = synthesize_family(image, liver, family, seed=11)
    b = synthesize_family(image, liver, family, seed=11)
    c = synthesize_family(image, liver, family, seed=12)
    assert np.array_equal(a[0].array, b[0].array) and np.array_equal(a[1].array, b[1].array)
    assert [{k: v for k, v in t.items() if k != "seconds"} for t in a[2]] == [{k: v for k, v in t.items() if k != "seconds"} for t in b[2]]
    assert not np.array_equal(a[1].array, c[1].array)
    assert max(t["seconds"] for t in a[2]) < 1.0  # well under a second per tumor, even at 60 mm on a 1 mm grid


def test_bad_family_settings_name_the_fix():
    with pytest.raises(InputError, match="diameter_mm"):
        SynthesisFamily(diameter_mm=(1.0, 200.0))
    with pytest.raises(InputError, match="low <= high"):
        SynthesisFamily(hypo_contrast_hu=(50.0, 10.0))
    with pytest.raises(InputError, match="size_skew"):
        SynthesisFamily(size_skew="tiny")
    with pytest.raises(InputError, match="between 0 and 1"):
        SynthesisFamily(hyper_fraction=1.5)
    with pytest.raises(InputError, match="unknown synthesis settings"):
        SynthesisFamily.from_dict({"diameter": [5, 10]})
    assert SynthesisFamily.from_dict(SynthesisFamily(size_skew="small").to_dict()) == SynthesisFamily(size_skew="small")
