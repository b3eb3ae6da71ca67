"""The case library on disk, shared by the Slicer module and the command line.

    <root>/cases/<case-id>/image.nrrd   CT in HU, int16
    <root>/cases/<case-id>/label.nrrd   uint8: 0 background, 1 liver, 2 tumor (LiTS convention)
    <root>/cases/<case-id>/case.json    source, created, tumor count and volume, notes
    <root>/models/<version>/model.pt    weights + network spec (written by modelstore)
    <root>/models/<version>/model.json  parent, training cases, settings, seed, metrics, time
    <root>/models/ACTIVE                name of the active version

Cases are written to a temporary folder and renamed into place, so a half-written case never
appears. Model versions are never modified after they are written.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .fsutil import make_temp_dir, read_json_object, write_json_atomic, write_text_atomic
from .modelstore import default_model_path, read_model_json
from ..volume import Volume

LIVER, TUMOR = 1, 2
DEFAULT_MODEL_NAME = "default"


@dataclass
class CaseInfo:
    case_id: str
    path: Path
    source: str = ""
    created: str = ""
    tumor_count: int = 0
    tumor_volume_ml: float = 0.0
    liver_volume_ml: float = 0.0
    notes: str = ""
    problem: str = ""  # why the case cannot be listed properly ("" when it can)

    @classmethod
    def from_folder(cls, folder: Path) -> "CaseInfo":
        meta, problem = read_json_object(folder / "case.json")
        if problem:  # one damaged case must not hide the others
            return cls(case_id=folder.name, path=folder, problem=problem)
        return cls(
            case_id=folder.name,
            path=folder,
            source=str(meta.get("source", "")),
            created=str(meta.get("created", "")),
            tumor_count=int(meta.get("tumor_count", 0)),
            tumor_volume_ml=float(meta.get("tumor_volume_ml", 0.0)),
            liver_volume_ml=float(meta.get("liver_volume_ml", 0.0)),
            notes=str(meta.get("notes", "")),
        )


@dataclass
class ModelInfo:
    version: str
    path: Path
    created: str = ""
    parent: str | None = None
    validation_dice: float | None = None
    training_cases: list = field(default_factory=list)
    read_only: bool = False
    problem: str = ""  # why its model.json could not be read ("" when it could; the model still works)
    # What model.json says (read once here; {} when absent or unreadable), for the lists' warning and synthesis line.
    meta: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def label(self) -> str:
        """What a model selector shows: version, validation Dice and date."""
        dice = "n/a" if self.validation_dice is None else f"{self.validation_dice:.3f}"
        date = self.created[:16].replace("T", " ") if self.created else "?"
        return f"{self.version} (Dice {dice}, {date})"

    @classmethod
    def from_folder(cls, folder: Path, read_only: bool = False) -> "ModelInfo":
        """A version as the model lists show it; a damaged model.json gives the bare version with
        its `problem` (one damaged file must not hide the other versions)."""
        folder = Path(folder)
        meta, problem = read_model_json(folder)
        metrics = meta.get("validation", {}) or {}
        dice = metrics.get("dice") if isinstance(metrics, dict) else None
        return cls(
            version=folder.name,
            path=folder,
            created=str(meta.get("created", "")),
            parent=meta.get("parent"),
            validation_dice=None if dice is None else float(dice),
            training_cases=list(meta.get("training_cases", [])),
            read_only=read_only,
            problem=problem,
            meta=meta,
        )


def default_library_path(settings_file=None) -> Path:
    """Case library folder when none is configured: beside the given application settings file
    (Slicer's user settings), else in the home folder."""
    if settings_file:
        return Path(settings_file).parent / "LiverTumorSeg" / "library"
    return Path.home() / ".livertumorseg" / "library"


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-_").lower()
    return slug[:40] or "case"


def is_case_folder(folder: Path) -> bool:
    return (folder / "image.nrrd").is_file() and (folder / "label.nrrd").is_file()


def find_case_folders(path: str | os.PathLike) -> list[Path]:
    """Case folders under `path`: a library root (cases/*), a folder of case folders, or one case."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path} is not a folder; give a case library or a folder of case folders")
    if is_case_folder(path):
        return [path]
    base = path / "cases" if (path / "cases").is_dir() else path
    folders = sorted(p for p in base.iterdir() if p.is_dir() and is_case_folder(p))
    if not folders:
        raise InputError(
            f"no cases in {path}: expected sub-folders holding image.nrrd and label.nrrd "
            "(create them with `livertumorseg phantom` or the Slicer module's Add case)"
        )
    return folders


CASE_LABELS = (0, 1, 2)


def read_case_folder(folder: Path) -> tuple[Volume, Volume]:
    """(CT, labels 0/1/2 on the CT's grid) of one case folder. InputError for label values other
    than 0/1/2 (another convention would be trained silently as liver); a warning when the label
    map covers only part of the CT (the unlabelled part would be trained as background)."""
    import warnings

    from . import images

    folder = Path(folder)
    image = images.read_image(folder / "image.nrrd")
    label_path = folder / "label.nrrd"
    labels = images.read_labels(label_path, reference=image)
    values = np.unique(labels.array)
    other = [int(v) for v in values if int(v) not in CASE_LABELS]
    if other:
        raise InputError(
            f"{label_path} has label values {', '.join(map(str, other))}; training labels are 0 background, 1 liver, "
            "2 tumor: relabel it (or re-add the case from Slicer)"
        )
    covered = images.coverage_of(label_path, image)
    if covered.mean() < 0.995:  # (resampling may miss an edge voxel of a same-space grid)
        slices = np.flatnonzero(covered.any(axis=(1, 2)))
        where = f"slices {slices[0]}-{slices[-1]} of the CT's 0-{image.shape[0] - 1}" if slices.size else "none of the CT"
        warnings.warn(
            f"{label_path} covers only {100 * covered.mean():.0f}% of the CT ({where}); the rest is trained as "
            "background (no liver, no tumor): label the whole CT, or crop the CT to the labelled part"
        )
    return image, labels


def write_case_folder(folder: Path, image: Volume, labels: Volume, meta: dict) -> None:
    """Write one case folder atomically (temp folder + rename); refuses to replace an existing one."""
    from . import images

    folder = Path(folder)
    if folder.exists():
        raise InputError(f"case folder {folder} already exists; choose another case id")
    if not image.same_grid(labels):
        raise InputError("the label map is not on the CT's grid; resample it to the CT first")
    tmp = make_temp_dir(folder)  # the umask's permissions: a case library may be shared
    try:
        images.write_image(image, tmp / "image.nrrd")
        images.write_labelmap(labels, tmp / "label.nrrd")
        write_json_atomic(tmp / "case.json", meta)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def case_summary(labels: Volume) -> dict:
    """Tumor count (26-connected components of label 2), tumor and liver volume in mL."""
    from ..core.lesions import label_lesions

    _, count = label_lesions(labels.array == TUMOR)
    ml = labels.voxel_volume_mm3 / 1000.0
    return {
        "tumor_count": int(count),
        "tumor_volume_ml": round(float(np.count_nonzero(labels.array == TUMOR) * ml), 3),
        "liver_volume_ml": round(float(np.count_nonzero(labels.array > 0) * ml), 3),
    }


class CaseLibrary:
    """A folder of training cases and model versions."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def cases_dir(self) -> Path:
        return self.root / "cases"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    # ---- cases -------------------------------------------------------------------------
    def add_case(
        self,
        image: Volume,
        labels: Volume,
        source: str = "",
        notes: str = "",
        case_id: str | None = None,
    ) -> str:
        """Store CT (HU) + labels (0/1/2) as a new case; returns the case id. Never overwrites."""
        if not np.any(labels.array == TUMOR) and not np.any(labels.array == LIVER):
            raise InputError("the label map is empty; it needs the liver (1) and any tumors (2)")
        case_id = _slug(case_id) if case_id else self._next_case_id()
        if (self.cases_dir / case_id).exists():
            raise InputError(f"case '{case_id}' is already in the library; choose another id")
        meta = {"id": case_id, "source": source, "created": now_iso(), **case_summary(labels), "notes": notes}
        meta["spacing_mm"] = list(image.spacing)
        meta["shape_zyx"] = list(image.shape)
        hu = np.clip(np.rint(image.array), -32768, 32767).astype(np.int16)
        write_case_folder(self.cases_dir / case_id, image.with_array(hu), labels.with_array(labels.array.astype(np.uint8)), meta)
        return case_id

    def _next_case_id(self) -> str:
        existing = {p.name for p in self.cases_dir.glob("*")} if self.cases_dir.exists() else set()
        n = 1
        while f"case-{n:03d}" in existing:
            n += 1
        return f"case-{n:03d}"

    def list_cases(self) -> list[CaseInfo]:
        if not self.cases_dir.is_dir():
            return []
        return [CaseInfo.from_folder(p) for p in sorted(self.cases_dir.iterdir()) if p.is_dir() and is_case_folder(p)]

    def case_path(self, case_id: str) -> Path:
        folder = self.cases_dir / case_id
        if not is_case_folder(folder):
            raise InputError(f"no case '{case_id}' in {self.cases_dir}; list the cases to see the ids")
        return folder

    def load_case(self, case_id: str) -> tuple[Volume, Volume]:
        return read_case_folder(self.case_path(case_id))

    def remove_case(self, case_id: str) -> None:
        """Delete a case folder (it moves to <root>/trash/ first, so a slip can be undone by hand)."""
        folder = self.case_path(case_id)
        trash = self.root / "trash"
        trash.mkdir(parents=True, exist_ok=True)
        target = trash / f"{case_id}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
        os.replace(folder, target)

    # ---- models ------------------------------------------------------------------------
    def list_models(self, include_default: bool = True) -> list[ModelInfo]:
        """The shipped default (read-only) first, then the library's versions oldest first."""
        models = []
        if include_default:
            default = default_model_path()
            if (default / "model.pt").is_file():
                models.append(ModelInfo.from_folder(default, read_only=True))
        if self.models_dir.is_dir():
            for p in sorted(self.models_dir.iterdir()):
                if p.is_dir() and (p / "model.pt").is_file():
                    models.append(ModelInfo.from_folder(p))
        return models

    def new_version_path(self) -> Path:
        """Folder for the next model version (v001, v002, ...); not created."""
        existing = {p.name for p in self.models_dir.glob("v*")} if self.models_dir.exists() else set()
        n = 1
        while f"v{n:03d}" in existing:
            n += 1
        return self.models_dir / f"v{n:03d}"

    def active_version(self) -> str:
        active = self.models_dir / "ACTIVE"
        if active.is_file():
            name = active.read_text(encoding="utf-8").strip()
            if name == DEFAULT_MODEL_NAME or (self.models_dir / name / "model.pt").is_file():
                return name
        return DEFAULT_MODEL_NAME

    def active_model_path(self) -> Path:
        return self.model_path(self.active_version())

    def model_path(self, version: str) -> Path:
        if version == DEFAULT_MODEL_NAME:
            return default_model_path()
        folder = self.models_dir / version
        if not (folder / "model.pt").is_file():
            raise InputError(f"no model version '{version}' in {self.models_dir}; list the models to see them")
        return folder

    def set_active(self, version: str) -> None:
        """Make a version the active one (also how a rollback is done)."""
        self.model_path(version)
        write_text_atomic(self.models_dir / "ACTIVE", version + "\n")
