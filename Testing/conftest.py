"""Shared pytest fixtures: paths to the real data under Testing/Data."""

from pathlib import Path

import pytest

TESTING_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return TESTING_DIR / "Data"


@pytest.fixture(scope="session")
def totalseg_dir(data_dir) -> Path:
    """Real abdominal CT fixtures (TotalSegmentator test files): a DICOM series, a small NIfTI CT, liver masks."""
    return data_dir / "totalsegmentator"


@pytest.fixture(scope="session")
def references(totalseg_dir):
    """The tumor-free reference CTs with their livers, read once: {name: (CT, liver mask)}."""
    from LiverTumorSegLib.evaluation.test_sets import load_reference_cases

    return {name: (image, liver) for name, image, liver in load_reference_cases(totalseg_dir)}


@pytest.fixture(scope="session")
def phantom_case_dirs(tmp_path_factory) -> list:
    """Two small phantom case folders (image.nrrd, label.nrrd, case.json) as the CLI reads them."""
    from LiverTumorSegLib.data.phantom import PhantomSettings, write_phantom_cases

    return write_phantom_cases(tmp_path_factory.mktemp("cases"), 2, seed=5, settings=PhantomSettings.small())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, phantom_case_dirs) -> Path:
    """A real model trained here for a few steps on those phantoms and saved as a model folder."""
    from LiverTumorSegLib.storage.library import read_case_folder
    from LiverTumorSegLib.storage.modelstore import save_model
    from LiverTumorSegLib.training.train import TrainSettings, train_model

    cases = [(folder.name, *read_case_folder(folder)) for folder in phantom_case_dirs]
    model = train_model(cases, TrainSettings(seed=0, minutes=1.0, max_steps=4, patch_size=24, batch_size=2))
    return save_model(model, tmp_path_factory.mktemp("models") / "v001")


def count_nodes(scene) -> dict:
    """Nodes per class; the subject hierarchy singleton (made on first use) is not counted."""
    counts = {}
    for i in range(scene.GetNumberOfNodes()):
        name = scene.GetNthNode(i).GetClassName()
        if name != "vtkMRMLSubjectHierarchyNode":
            counts[name] = counts.get(name, 0) + 1
    return counts
