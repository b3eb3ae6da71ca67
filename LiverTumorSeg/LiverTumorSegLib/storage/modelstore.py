"""Trained models on disk: one folder per version, never modified after it is written.

    <folder>/model.pt    torch.save of a plain dict {format_version, spec, state_dict,
                         feature_settings, threshold, min_lesion_mm3}: loadable with
                         weights_only=True, so opening a model file runs no code from it
    <folder>/model.json  human-readable metadata: format_version, created, parent, training_cases,
                         settings, seed, validation {"dice": ...}, train_seconds, ...

The folder is built under a temporary name and renamed into place, so a crash never leaves a
half-written version, and an existing folder is refused rather than overwritten.
"""

from __future__ import annotations

import functools

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError, ModelError
from .fsutil import atomic_path, make_temp_dir, read_json_object, write_json_atomic

if TYPE_CHECKING:  # imported where used: the model list (web page, Slicer panel) needs no scipy
    from ..core.features import FeatureSettings

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.pt"
META_FILE = "model.json"


@dataclass
class TrainedModel:
    """A network with everything needed to use it: its spec, the feature settings it was trained
    with, the decision threshold chosen on validation data and the smallest lesion kept (mm^3)."""

    network: object  # torch.nn.Module (torch is imported only where used)
    spec: dict
    feature_settings: FeatureSettings
    threshold: float = 0.5
    min_lesion_mm3: float = 30.0
    meta: dict = field(default_factory=dict)


def save_model(model: TrainedModel, folder: str | os.PathLike) -> Path:
    """Write model.pt and model.json into a new folder; refuses an existing one."""
    import torch

    folder = Path(folder)
    if folder.exists():
        raise InputError(f"{folder} already exists; model versions are never overwritten, choose a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "spec": dict(model.spec),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.network.state_dict().items()},
        "feature_settings": model.feature_settings.to_dict(),
        "threshold": float(model.threshold),
        "min_lesion_mm3": float(model.min_lesion_mm3),
    }
    meta = {"format_version": FORMAT_VERSION, **_jsonable(model.meta)}
    meta.setdefault("threshold", float(model.threshold))
    meta.setdefault("min_lesion_mm3", float(model.min_lesion_mm3))
    meta.setdefault("spec", dict(model.spec))
    tmp = make_temp_dir(folder)  # hidden; a killed save's leftover is removed by the next save here
    try:
        with atomic_path(tmp / WEIGHTS_FILE) as path:
            torch.save(payload, path)
        write_json_atomic(tmp / META_FILE, meta)
        if folder.exists():
            raise InputError(f"{folder} appeared while saving; model versions are never overwritten")
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_model(path: str | os.PathLike) -> TrainedModel:
    """A model from its folder (or its model.pt), network in eval mode. ModelError says how to fix."""
    import torch

    from ..core.network import build_network

    path = Path(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if path.is_file() and path.suffix.lower() == ".json":
        raise ModelError(
            f"{path} is the model's description, not its weights; give the model folder "
            f"({path.parent}) or its {WEIGHTS_FILE}"
        )
    if not weights.is_file():
        raise ModelError(
            f"no model at {path}: expected a model folder holding {WEIGHTS_FILE} (or that file); "
            "train one (`livertumorseg train`) or choose another model folder"
        )
    try:
        payload = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise ModelError(f"{weights} is not a readable model file ({type(exc).__name__}); it is damaged or "
                         "not a LiverTumorSeg model: retrain it or restore it from a backup") from exc
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise ModelError(f"{weights} is not a LiverTumorSeg model file; choose a model folder written by this tool")
    if payload["format_version"] != FORMAT_VERSION:
        raise ModelError(
            f"{weights} has model format {payload['format_version']}, this version reads format {FORMAT_VERSION}; "
            "retrain the model with this version (or use the version that wrote it)"
        )
    from ..core.features import FeatureSettings

    try:
        network = build_network(payload["spec"])
        network.load_state_dict(payload["state_dict"])
        features = FeatureSettings.from_dict(payload["feature_settings"])
    except ModelError as exc:  # a setting this version no longer runs: the message says what to do
        raise ModelError(f"{weights}: {exc}") from exc
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{weights} does not match its network description ({exc}); retrain the model") from exc
    network.eval()
    meta, _ = read_model_json(weights.parent)
    meta["version"] = weights.parent.name
    return TrainedModel(
        network=network,
        spec=dict(payload["spec"]),
        feature_settings=features,
        threshold=float(payload["threshold"]),
        min_lesion_mm3=float(payload["min_lesion_mm3"]),
        meta=meta,
    )


def read_model_json(folder: str | os.PathLike) -> tuple[dict, str]:
    """(metadata, problem) of a model folder's model.json: the one reader of that file.

    model.json only describes a version (the weights are in model.pt), so a missing, unreadable or
    malformed one never stops a model from being listed or used: the metadata is then {} and
    `problem` says what is wrong and how to fix it ("" when the file is fine or simply absent).
    """
    return read_json_object(Path(folder) / META_FILE)


def finite_number(value) -> float | None:
    """A metadata value as a finite float, None when it is missing, not a number, NaN or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parent_check_warning(meta: dict) -> str:
    """One line when a model version scored worse than its parent ("worse than v001 on v001's
    validation cases: Dice 0.550 against 0.620"), "" when it did not or `meta` says nothing usable.

    Read from model.json's `parent_check` (training's parent check: "parent", "worse_than_parent",
    "parent_validation_dice", "child_on_parent_validation_dice", "worse_on", "user_validation").
    """
    check = meta.get("parent_check") if isinstance(meta, dict) else None
    if not isinstance(check, dict) or check.get("worse_than_parent") is not True:
        return ""
    parent = str(check.get("parent") or "its parent")
    worse_on = check.get("worse_on")
    if not (isinstance(worse_on, list) and worse_on and all(isinstance(w, str) for w in worse_on)):
        worse_on = [f"{parent}'s validation cases"]
    child, before = finite_number(check.get("child_on_parent_validation_dice")), finite_number(check.get("parent_validation_dice"))
    if worse_on == ["your validation"]:  # the numbers that made it worse
        user = check.get("user_validation") if isinstance(check.get("user_validation"), dict) else {}
        child, before = (finite_number((user.get(w) or {}).get("dice")) if isinstance(user.get(w), dict) else None
                         for w in ("child", "parent"))
    numbers = f": Dice {child:.3f} against {before:.3f}" if child is not None and before is not None else ""
    return f"worse than {parent} on {' and '.join(worse_on)}{numbers}"


def _models_folder() -> Path:
    """Resources/Models, from the package's location: the source tree keeps Resources two levels
    above the package (repo/LiverTumorSeg/LiverTumorSegLib), a Slicer install tree one level above
    it (qt-scripted-modules/LiverTumorSegLib beside qt-scripted-modules/Resources)."""
    package = Path(__file__).resolve().parents[1]
    candidates = [package.parent.parent / "Resources", package.parent / "Resources"]
    for resources in candidates:
        if (resources / "Models").is_dir():
            return resources / "Models"
    return candidates[0] / "Models"


def default_model_path() -> Path:
    """The shipped tumor model, Resources/Models/default (read-only)."""
    return _models_folder() / "default"


def liver_model_path() -> Path:
    """The shipped liver network's weights, Resources/Models/liver/liver_unet.npz (converted from
    pyliverlesionseg 0.3 by scripts/convert_liver_model.py; NOTICE beside it)."""
    return _models_folder() / "liver" / "liver_unet.npz"


@functools.lru_cache(maxsize=1)
def shipped_liver_network():
    """The shipped liver network (core.liver_network.LiverUNet), loaded once per process: a batch
    worker, the web server and the Slicer Logic find many livers with the same weights."""
    from ..core.liver_network import load_liver_network

    return load_liver_network(liver_model_path())


def _jsonable(value):
    """Metadata as plain JSON types (tuples -> lists, numpy scalars -> Python numbers)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
