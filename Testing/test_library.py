"""The case library on disk: cases added atomically, never overwritten; model versions and ACTIVE."""

from __future__ import annotations

import json

import numpy as np
import pytest

from LiverTumorSegLib.storage import images
from LiverTumorSegLib.errors import InputError
from LiverTumorSegLib.storage.library import CaseLibrary, find_case_folders
from LiverTumorSegLib.volume import Volume

SPACING = (0.8, 0.8, 2.5)


def make_case():
    rng = np.random.default_rng(0)
    image = Volume(rng.normal(100, 15, (12, 40, 40)).astype(np.float32), SPACING, (10.0, -5.0, 30.0))
    labels = np.zeros(image.shape, np.uint8)
    labels[2:10, 5:35, 5:35] = 1
    labels[4:7, 10:15, 10:15] = 2  # tumor 1
    labels[4:7, 25:30, 25:30] = 2  # tumor 2, not touching
    return image, image.with_array(labels)


def test_add_case_writes_the_design_layout(tmp_path):
    library = CaseLibrary(tmp_path / "lib")
    image, labels = make_case()
    case_id = library.add_case(image, labels, source="unit test", notes="two tumors")
    folder = tmp_path / "lib" / "cases" / case_id
    assert case_id == "case-001"
    meta = json.loads((folder / "case.json").read_text())
    assert meta["tumor_count"] == 2 and meta["source"] == "unit test"
    assert meta["tumor_volume_ml"] == pytest.approx(2 * 75 * np.prod(SPACING) / 1000, rel=1e-3)
    stored = images.read_image(folder / "image.nrrd")
    assert stored.same_grid(image)
    np.testing.assert_array_equal(stored.array, np.rint(image.array))
    np.testing.assert_array_equal(images.read_labels(folder / "label.nrrd").array, labels.array)
    assert [c.case_id for c in library.list_cases()] == ["case-001"]
    assert find_case_folders(tmp_path / "lib") == [folder]


def test_case_ids_are_unique_and_never_overwritten(tmp_path):
    library = CaseLibrary(tmp_path)
    image, labels = make_case()
    assert library.add_case(image, labels, case_id="Patient 7") == "patient-7"
    with pytest.raises(InputError, match="already"):
        library.add_case(image, labels, case_id="patient-7")
    assert library.add_case(image, labels) == "case-001"
    assert library.add_case(image, labels) == "case-002"


def test_labels_on_another_grid_and_empty_labels_are_refused(tmp_path):
    library = CaseLibrary(tmp_path)
    image, labels = make_case()
    shifted = Volume(labels.array, SPACING, (99.0, 0.0, 0.0))
    with pytest.raises(InputError, match="grid"):
        library.add_case(image, shifted)
    with pytest.raises(InputError, match="empty"):
        library.add_case(image, labels.with_array(np.zeros_like(labels.array)))
    assert library.list_cases() == []
    assert not any(p.name.startswith(".") for p in (tmp_path / "cases").glob("*"))


def test_remove_moves_the_case_to_trash(tmp_path):
    library = CaseLibrary(tmp_path)
    image, labels = make_case()
    case_id = library.add_case(image, labels)
    library.remove_case(case_id)
    assert library.list_cases() == []
    assert len(list((tmp_path / "trash").iterdir())) == 1
    with pytest.raises(InputError, match="no case"):
        library.remove_case(case_id)


def test_model_versions_active_and_rollback(tmp_path):
    library = CaseLibrary(tmp_path)
    assert library.active_version() == "default"
    for version, dice in (("v001", 0.5), ("v002", 0.6)):
        folder = library.new_version_path()
        assert folder.name == version
        folder.mkdir(parents=True)
        (folder / "model.pt").write_bytes(b"weights")
        (folder / "model.json").write_text(json.dumps({"validation": {"dice": dice}, "created": "2026-11-22T10:00:00"}))
    versions = [m.version for m in library.list_models(include_default=False)]
    assert versions == ["v001", "v002"]
    library.set_active("v002")
    assert library.active_version() == "v002" and library.active_model_path() == tmp_path / "models" / "v002"
    library.set_active("v001")  # rollback
    assert library.active_version() == "v001"
    assert "Dice 0.500" in library.list_models(include_default=False)[0].label
    with pytest.raises(InputError, match="no model version"):
        library.set_active("v009")
    assert library.active_version() == "v001"


def test_a_damaged_case_json_is_listed_with_its_problem_not_hiding_the_others(tmp_path):
    """(issue 10 row 15) One broken case must not stop the Slicer case list from showing the rest."""
    library = CaseLibrary(tmp_path / "lib")
    image, labels = make_case()
    first = library.add_case(image, labels)
    second = library.add_case(image, labels)
    (library.cases_dir / second / "case.json").write_text("{ not json")
    cases = {c.case_id: c for c in library.list_cases()}
    assert set(cases) == {first, second}
    assert cases[first].problem == "" and cases[first].tumor_count == 2
    assert "not readable JSON" in cases[second].problem and "fix or delete" in cases[second].problem


def test_a_damaged_model_json_is_listed_with_its_problem_not_hiding_the_others(tmp_path):
    """model.json only describes a version: one that cannot be read leaves the version listed (and
    usable) with the reason, as a damaged case.json does, instead of breaking the model list."""
    from LiverTumorSegLib.storage.modelstore import read_model_json

    library = CaseLibrary(tmp_path)
    for version, text in (("v001", '{"validation": {"dice": 0.5}}'), ("v002", "{not json"), ("v003", "[1, 2]"),
                          ("v004", None)):
        folder = tmp_path / "models" / version
        folder.mkdir(parents=True)
        (folder / "model.pt").write_bytes(b"weights")
        if text is not None:
            (folder / "model.json").write_text(text)
    models = {m.version: m for m in library.list_models(include_default=False)}
    assert sorted(models) == ["v001", "v002", "v003", "v004"]
    assert models["v001"].problem == "" and models["v001"].validation_dice == 0.5
    assert "not readable JSON" in models["v002"].problem and "fix or delete" in models["v002"].problem
    assert "not hold a JSON object" in models["v003"].problem and models["v003"].validation_dice is None
    assert models["v004"].problem == ""  # no model.json at all: nothing to report
    assert read_model_json(tmp_path / "models" / "v002") == ({}, models["v002"].problem)
    assert read_model_json(tmp_path / "models" / "v001")[0] == {"validation": {"dice": 0.5}}


def test_the_parent_check_warning_is_one_line_from_model_json():
    from LiverTumorSegLib.storage.modelstore import parent_check_warning

    check = {"parent": "v001", "parent_validation_dice": 0.62, "child_on_parent_validation_dice": 0.55,
             "worse_on": ["check set", "your validation"], "worse_than_parent": True}
    assert parent_check_warning({"parent_check": check}) == \
        "worse than v001 on check set and your validation: Dice 0.550 against 0.620"
    assert parent_check_warning({"parent_check": {**check, "worse_than_parent": False}}) == ""
    assert parent_check_warning({"parent_check": {**check, "worse_than_parent": 1}}) == ""  # malformed
    assert parent_check_warning({}) == "" and parent_check_warning([]) == ""
    assert parent_check_warning({"parent_check": {"worse_than_parent": True, "parent_validation_dice": float("nan")}}) == \
        "worse than its parent on its parent's validation cases"


def test_default_library_path_is_beside_the_settings_file_else_in_home(tmp_path):
    from pathlib import Path

    from LiverTumorSegLib.storage.library import default_library_path

    assert default_library_path(tmp_path / "Slicer.ini") == tmp_path / "LiverTumorSeg" / "library"
    assert default_library_path() == Path.home() / ".livertumorseg" / "library"
