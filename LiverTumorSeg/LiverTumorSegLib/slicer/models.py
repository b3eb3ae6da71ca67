"""Model versions for the Logic: list, label, activate (rollback = an older one), load, and
Retrain in the background, which writes a new version.

A mixin of LiverTumorSegLogic (it uses the Logic's `library`, `libraryPath` and `_track`). Every
model.json is read through storage.modelstore, whose policy is that a damaged one never hides or
blocks a version.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from ..protocol import train_command
from ..storage.library import DEFAULT_MODEL_NAME, ModelInfo
from ..storage.modelstore import finite_number, parent_check_warning, read_model_json
from .jobs import TrainingJob, backgroundThreads, childEnvironment, packageParent, pythonExecutable


class ModelVersions:
    """The Logic's methods for model versions and Retrain."""

    def listModels(self) -> list[ModelInfo]:
        """Shipped default first (if present), then the library's versions oldest first."""
        return self.library.list_models()

    def activeModelVersion(self) -> str:
        return self.library.active_version()

    def modelWarning(self, info: ModelInfo) -> str:
        """"" or why a version should not be trusted over its parent (modelstore.parent_check_warning)."""
        return parent_check_warning(info.meta)

    def modelSynthesis(self, info: ModelInfo) -> str:
        """One line: the synthetic training data a version used and, for `--synthesis auto`, which
        settings the segmenter chose and their validation scores (model.json "synthesis"); "" if none."""
        from ..training.synthesis_search import describe

        synthesis = info.meta.get("synthesis")
        return describe(synthesis) if isinstance(synthesis, dict) else ""

    def modelLabel(self, info: ModelInfo) -> str:
        """What the model list shows: version, Dice, date, [shipped], and a warning marker."""
        label = info.label + (" [shipped]" if info.read_only else "")
        if info.problem:  # listed and usable, but what it says about itself is unknown
            return label + " \u26a0 model.json unreadable"
        return label + (" \u26a0 worse than parent" if self.modelWarning(info) else "")

    def setActiveModel(self, version: str) -> None:
        """Make a version the one Segment and Retrain use; earlier versions stay (rollback = set an older one)."""
        self.library.set_active(version)

    def modelPath(self, model=None) -> Path:
        """Folder of a model given as None (active), a version name, or a folder / model.pt path."""
        if model is None:
            return self.library.active_model_path()
        text = str(model)
        known = {info.version for info in self.listModels()} | {DEFAULT_MODEL_NAME}
        if text in known and not Path(text).exists():
            return self.library.model_path(text)
        path = Path(text)
        return path.parent if path.name in ("model.pt", "model.json") else path

    def loadModel(self, model=None):
        """TrainedModel for `model` (None = active version); cached per model file and its time stamp."""
        from ..storage.modelstore import load_model

        if model is not None and not isinstance(model, (str, os.PathLike)):
            return model  # already a TrainedModel
        path = self.modelPath(model)
        weights = path / "model.pt"
        key = (str(path.resolve()), weights.stat().st_mtime if weights.is_file() else None)
        if key not in self._modelCache:
            self._modelCache = {key: load_model(path)}
        return self._modelCache[key]

    def _modelThreshold(self, modelFolder: Path, threshold) -> tuple[float, float]:
        """(decision threshold, smallest lesion mm^3) for a model folder: from its model.json
        (save_model writes both), else from the model file itself."""
        meta, _ = read_model_json(modelFolder)
        own, minimum = finite_number(meta.get("threshold")), finite_number(meta.get("min_lesion_mm3"))
        if own is None or minimum is None:
            trained = self.loadModel(modelFolder)
            own, minimum = float(trained.threshold), float(trained.min_lesion_mm3)
        threshold = own if threshold is None else float(threshold)
        if not 0.0 < threshold < 1.0:
            raise InputError(f"threshold {threshold} is outside (0, 1); use e.g. 0.5")
        return threshold, minimum

    # ---- Retrain ---------------------------------------------------------------------------
    def trainingCommand(self, outPath, minutes=5.0, maxSteps=None, seed=0, initVersion=None) -> list[str]:
        """`python -m LiverTumorSegLib train LIBRARY --out NEW --init ACTIVE --progress-json ...`."""
        init = self.library.model_path(initVersion) if initVersion else self.library.active_model_path()
        return train_command(pythonExecutable(), self.libraryPath.resolve(), Path(outPath).resolve(), minutes, seed,
                             backgroundThreads(), init=init.resolve() if (init / "model.pt").is_file() else None,
                             max_steps=maxSteps)

    def startTraining(self, minutes=5.0, maxSteps=None, seed=0, initVersion=None) -> TrainingJob:
        """Fine-tune the active model (or `initVersion`) on all library cases in a background process.

        The new version is written to `library.new_version_path()`; it does not become active by
        itself (see `setActiveModel`).
        """
        minutes = finite_number(minutes)
        if minutes is None or minutes <= 0:
            raise InputError("the training time must be a positive number of minutes, e.g. 5")
        if maxSteps is not None and int(maxSteps) < 1:
            raise InputError(f"the number of training steps must be at least 1, not {maxSteps}")
        if not self.listCases():
            raise InputError(f"no cases in {self.libraryPath}; add corrected cases first")
        outPath = self.library.new_version_path()
        command = self.trainingCommand(outPath, minutes, maxSteps, seed, initVersion)
        return self._track(TrainingJob(command, env=childEnvironment(), cwd=packageParent(), outPath=outPath))

    def train(self, minutes=5.0, maxSteps=None, seed=0, initVersion=None, progress=None, timeout=None) -> ModelInfo:
        """Blocking `startTraining` for scripts; returns the new version's ModelInfo."""
        job = self.startTraining(minutes, maxSteps, seed, initVersion)
        job.wait(timeout=timeout, progress=progress)
        return ModelInfo.from_folder(job.outPath)
