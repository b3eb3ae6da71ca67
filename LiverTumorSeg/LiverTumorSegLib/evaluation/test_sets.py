"""The fixed held-out test sets: cases no training ever sees, the same for every run.

The benchmarks (benchmarks/small_data.py and the scripts built on it) and the shipped model's
build (scripts/build_default_model.py) score models on these, so both read them from here. Three
sets, each from fixed seeds that no training set uses:

- phantom: phantoms with a few tumors each (at least `test_cases` cases, `test_min_tumors` tumors);
- reference_synth: tumors synthesised (Hu et al. 2023 recipe) into the real tumor-free
  TotalSegmentator CTs in Testing/Data, `ref_variants` per CT;
- small_tumor: mostly 5-15 mm tumors, 20-60 HU from the liver, some hyperdense, several per
  liver, on 1-5 mm slices: what a radiologist misses and a voxel Dice hides.

A set is [(case_id, CT Volume in HU, labels Volume 0/1/2)]; `config` holds the keys named above
and below (FULL_TEST_SETS: the full protocol's).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core.lesions import count_lesions
from ..data.phantom import PhantomSettings, make_phantom
from ..data.synthesis import synthesize_tumors
from ..errors import InputError
from ..storage.images import read_image, read_liver_mask
from ..volume import Volume

# The real tumor-free CTs with their liver masks: (name, CT file or DICOM folder, liver mask file).
REFERENCE_CASES = (
    ("example_ct_sm", "example_ct_sm.nii.gz", "example_ct_sm_liver.nii.gz"),
    ("example_ct_dicom", "example_ct_dicom", "example_ct_dicom_liver.nii.gz"),
)

# The full protocol's test sets (benchmarks/small_data.py's "full" preset, the model build).
FULL_TEST_SETS = dict(phantom="medium", test_cases=24, test_min_tumors=72, test_tumors=[3, 4], ref_variants=3,
                      ref_tumors=[2, 4], ref_names=None, small_phantoms=8, small_ref_variants=3)


def load_reference_cases(data_dir: str | os.PathLike) -> list[tuple[str, Volume, np.ndarray]]:
    """The tumor-free TotalSegmentator CTs with their liver masks: [(name, CT in HU, liver bool)].

    `data_dir` is Testing/Data or its totalsegmentator/ folder. The DICOM case's mask is stored
    with a flipped y axis; read_liver_mask resamples it onto the CT grid (nearest neighbour).
    """
    data_dir = Path(data_dir)
    folder = data_dir / "totalsegmentator" if (data_dir / "totalsegmentator").is_dir() else data_dir
    cases = []
    for name, ct_name, liver_name in REFERENCE_CASES:
        ct_path, liver_path = folder / ct_name, folder / liver_name
        if not ct_path.exists() or not liver_path.exists():
            raise InputError(f"{ct_path} or {liver_path} is missing; give the folder holding the TotalSegmentator test files")
        image = read_image(ct_path)
        cases.append((name, image, read_liver_mask(liver_path, image)))
    return cases


def phantom_settings(name: str, **overrides) -> PhantomSettings:
    """A PhantomSettings preset by name ("small", "medium", "full") with overrides."""
    return getattr(PhantomSettings, name)(**overrides)


def phantom_test_set(config: dict) -> list:
    """[(case_id, image, labels)]: at least test_cases cases and test_min_tumors tumors."""
    settings = phantom_settings(config["phantom"], n_tumors=tuple(config["test_tumors"]))
    out, tumors, seed = [], 0, 5_000_000
    while len(out) < config["test_cases"] or tumors < config["test_min_tumors"]:
        case = make_phantom(seed, settings)
        n = count_lesions(case.labels.array == 2)
        if n > 0:
            out.append((f"test_phantom{seed}", case.image, case.labels))
            tumors += n
        seed += 1
    return out


def reference_test_set(config: dict, data_dir: Path) -> list:
    """Tumors synthesised into each real TotalSegmentator CT's liver, `ref_variants` seeds each."""
    if config["ref_variants"] <= 0:
        return []
    out = []
    for i, (name, image, liver) in enumerate(load_reference_cases(data_dir)):
        if config.get("ref_names") and name not in config["ref_names"]:
            continue
        for v in range(config["ref_variants"]):
            seed = 7_000_000 + 100 * i + v
            img, labels, _tumors = synthesize_tumors(image, liver, seed, n_tumors=tuple(config["ref_tumors"]))
            if count_lesions(labels.array == 2) > 0:
                out.append((f"{name}_synth{v}", img, labels))
    return out


def small_tumor_test_set(config: dict, data_dir: Path) -> list:
    """The small-tumor test set. Phantoms (`small_phantoms`, 3-6 tumors of 5-15 mm each, 20-60 HU
    from the liver, a quarter hyperdense, 1-5 mm slices) and tumors of 5-15 mm synthesised into
    each real reference CT (`small_ref_variants` per CT, 3-6 per liver, a quarter hyperdense; the
    Hu recipe's texture halves delta, so delta 40-120 HU gives 20-60 HU mean contrast)."""
    settings = phantom_settings(config["phantom"], n_tumors=(3, 6), tumor_diameter_mm=(5.0, 15.0), slice_mm=(1.0, 5.0),
                                hypo_contrast_hu=(20.0, 60.0), hyper_contrast_hu=(20.0, 60.0),
                                tumor_kind_weights=(0.55, 0.05, 0.15, 0.25))
    out, seed = [], 8_000_000
    while sum(c[0].startswith("small_phantom") for c in out) < config["small_phantoms"]:
        case = make_phantom(seed, settings)
        if count_lesions(case.labels.array == 2) > 0:
            out.append((f"small_phantom{seed}", case.image, case.labels))
        seed += 1
    for i, (name, image, liver) in enumerate(load_reference_cases(data_dir)):
        if config.get("ref_names") and name not in config["ref_names"]:
            continue
        for v in range(config["small_ref_variants"]):
            img, labels, _ = synthesize_tumors(image, liver, 9_000_000 + 100 * i + v, n_tumors=(3, 6), radius_mm=(2.5, 7.5),
                                               delta_hu=(40.0, 120.0), hyper_fraction=0.25, edge_sigma_mm=(0.5, 1.5))
            if count_lesions(labels.array == 2) > 0:
                out.append((f"{name}_small{v}", img, labels))
    return out


def held_out_test_sets(config: dict, data_dir: Path) -> dict:
    """{name: [(case_id, image, labels)]} for every set the config asks for (phantom always)."""
    tests = {"phantom": phantom_test_set(config)}
    ref = reference_test_set(config, data_dir)
    if ref:
        tests["reference_synth"] = ref
    small = small_tumor_test_set(config, data_dir)
    if small:
        tests["small_tumor"] = small
    return tests
