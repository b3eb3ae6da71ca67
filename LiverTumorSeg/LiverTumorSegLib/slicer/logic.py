"""The Logic of the Slicer module: what a Slicer developer scripts against.

    logic = slicer.util.getModuleLogic("LiverTumorSeg")
    segmentation, table = logic.segment(ctNode, liverSegmentationNode, "liver")
    logic.addCase(ctNode, liverSegmentationNode, "liver", segmentation, logic.tumorSegmentId(segmentation))
    job = logic.startTraining(minutes=5)   # background process; poll() it, or logic.train() to block
    job = logic.startSegment(ctNode, liverSegmentationNode, "liver")   # Segment in the background:
    ...poll() until job.finished...; segmentation, table = logic.finishSegment(job)

MRML only, no qt: it runs inside Slicer and under `slicer-core` (tests, batch scripts). Nodes go
through `mrml.py`; the computation is the engine's. The module file mixes this class with
ScriptedLoadableModuleLogic; nothing here needs that base.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from ..storage import fsutil

from . import mrml
from ..errors import Cancelled, InputError
from ..storage.library import DEFAULT_MODEL_NAME, CaseLibrary, ModelInfo
from ..volume import Volume

# Attributes the Logic sets on its output segmentation node.
TUMOR_SEGMENT_ATTRIBUTE = "LiverTumorSeg.TumorSegmentID"
THRESHOLD_ATTRIBUTE = "LiverTumorSeg.Threshold"
MIN_LESION_ATTRIBUTE = "LiverTumorSeg.MinLesionMm3"
MODEL_ATTRIBUTE = "LiverTumorSeg.Model"
# "1" when Segment ran inside a liver region: the kept map is then > 0 exactly inside it
# (PROBABILITY_FLOOR), so re-thresholding can drop liver-surface slivers the same way.
REGION_ATTRIBUTE = "LiverTumorSeg.LiverRegion"
PROBABILITY_FLOOR = 1e-6

# Set to "1" on the kept probability volume, so it is never offered as a CT to segment.
PROBABILITY_MAP_ATTRIBUTE = "LiverTumorSeg.ProbabilityMap"

# Probability overlay: Slicer's heat colour map; voxels below this probability are not drawn.
PROBABILITY_COLORS = "vtkMRMLPETProceduralColorNodePET-Heat"
PROBABILITY_SHOWN_FROM = 0.05

# Share of the progress bar per stage (percent), so one bar covers the whole run: `train`, and
# `segment` (reading the CT comes before its first report, writing the result after "done").
TRAINING_STAGE_SPAN = {"prepare": (0, 3), "synthesize": (3, 5), "rehearsal": (5, 6), "train": (6, 94), "validate": (94, 96),
                       "spot pass": (96, 97), "parent check": (97, 100), "done": (100, 100)}
SEGMENT_STAGE_SPAN = {"prepare": (0, 15), "network": (15, 80), "postprocess": (80, 100), "done": (100, 100)}


def defaultLibraryPath() -> Path:
    """Case library folder when none is configured: beside Slicer's user settings, else in the home folder."""
    try:
        import slicer

        settings_file = slicer.app.slicerUserSettingsFilePath
    except (ImportError, AttributeError):
        return Path.home() / ".livertumorseg" / "library"
    return Path(settings_file).parent / "LiverTumorSeg" / "library"


def preloadEngine() -> threading.Thread:
    """Import, in a background thread, the engine modules the first Segment's result needs
    (inference, lesions, scipy: about a second). A front end calls this once it is showing, so
    neither its start nor its first Segment waits for them."""
    import importlib

    thread = threading.Thread(target=importlib.import_module, args=(".inference", __package__),
                              name="LiverTumorSeg preload", daemon=True)
    thread.start()
    return thread


def pythonExecutable() -> str:
    """Python for background jobs: PythonSlicer inside Slicer (the app binary is not a Python), else this one."""
    try:
        import slicer

        in_app = hasattr(slicer, "app")
    except ImportError:
        in_app = False
    if in_app:
        found = shutil.which("PythonSlicer")
        if found:
            return found
        candidate = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def _childEnvironment() -> dict:
    """Environment for background jobs: Slicer's startup environment inside Slicer (PythonSlicer sets up its own)."""
    try:
        import slicer

        env = dict(slicer.util.startupEnvironment()) if hasattr(slicer, "app") else dict(os.environ)
    except (ImportError, AttributeError):
        env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _backgroundThreads() -> int:
    """CPU threads for a background job: one core is left to Slicer (training at full width stalls
    the GUI and, sharing cores with it, runs several times slower per step)."""
    return max(1, (os.cpu_count() or 2) - 1)


def _readJson(path: Path) -> dict:
    """A JSON object from a file; {} when it is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def parentCheckWarning(modelFolder) -> str:
    """One line when a model version scored worse than its parent.

    Read from `parent_check` in the version's model.json ({"parent", "parent_validation_dice",
    "child_on_parent_validation_dice", "worse_than_parent"}, and from training.parent_check
    "worse_on" and "user_validation"); "" when the key is absent, malformed, or the version is not
    worse.
    """
    check = _readJson(Path(modelFolder) / "model.json").get("parent_check")
    if not isinstance(check, dict) or check.get("worse_than_parent") is not True:
        return ""
    parent = str(check.get("parent") or "its parent")
    worse_on = check.get("worse_on")
    if not (isinstance(worse_on, list) and worse_on and all(isinstance(w, str) for w in worse_on)):
        worse_on = [f"{parent}'s validation cases"]
    child, before = _number(check.get("child_on_parent_validation_dice")), _number(check.get("parent_validation_dice"))
    if worse_on == ["your validation"]:  # the numbers that made it worse
        user = check.get("user_validation") if isinstance(check.get("user_validation"), dict) else {}
        child, before = (_number((user.get(w) or {}).get("dice")) if isinstance(user.get(w), dict) else None
                         for w in ("child", "parent"))
    numbers = f": Dice {child:.3f} against {before:.3f}" if child is not None and before is not None else ""
    return f"worse than {parent} on {' and '.join(worse_on)}{numbers}"


def describeProgress(info: dict, spans: dict | None = None) -> tuple[int, str]:
    """(percent 0..100 over the whole run, one-line text) for a `--progress-json` dict of
    `livertumorseg train` (the default `spans`) or `segment` (SEGMENT_STAGE_SPAN; a job's `stageSpans`)."""
    stage = str(info.get("stage", ""))
    low, high = (TRAINING_STAGE_SPAN if spans is None else spans).get(stage, (0, 100))
    step, total = info.get("step"), info.get("total")
    fraction = min(max(float(step) / float(total), 0.0), 1.0) if step is not None and total else 0.0
    percent = int(round(low + (high - low) * fraction))
    if stage == "done":
        dice = (info.get("validation") or {}).get("dice")
        return 100, "Done" + (f": validation Dice {dice:.3f}" if dice is not None else "")
    parts = [stageText(info)]
    if info.get("elapsed_s") is not None:
        parts.append(f"{formatMinutes(info['elapsed_s'])} elapsed")
    if info.get("eta_s") is not None:
        parts.append(f"about {formatMinutes(info['eta_s'])} left")
    if info.get("loss") is not None:
        parts.append(f"loss {float(info['loss']):.3f}")
    return percent, ", ".join(parts)


def stageText(info: dict) -> str:
    """'Network step 12/40': the stage of a progress dict and its step (the text of a progress bar)."""
    stage = str(info.get("stage", "")).capitalize() or "Working"
    step, total = info.get("step"), info.get("total")
    return stage + (f" step {int(step)}/{int(total)}" if step is not None and total else "")


def formatMinutes(seconds: float) -> str:
    """m:ss for a duration in seconds (progress texts)."""
    seconds = max(0, int(round(float(seconds))))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _drained(items: queue.Queue) -> list:
    """Everything in the queue now, without waiting (a job's output lines or progress dicts)."""
    out = []
    while True:
        try:
            out.append(items.get_nowait())
        except queue.Empty:
            return out


class _JobState:
    """What a front end reads of a running job, whatever runs it (a process, a thread): its
    progress dicts, log, outcome and age."""

    def __init__(self):
        self.log: list[str] = []  # lines for the details: the command's non-progress output, a traceback
        self.latest: dict | None = None
        self.result: dict | None = None  # the final {"stage": "done", ...} (train: with "model" and "validation")
        self.error: str | None = None
        self.cancelled = False
        self.sceneClosed = False  # cancelled because the scene was closed
        self.finished = False
        self.startTime = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.startTime

    @property
    def warnings(self) -> list[str]:
        """The job's `warning:` lines (e.g. training cases it skipped), without the prefix."""
        return [line[len("warning:"):].strip() for line in self.log if line.startswith("warning:")]

    def _record(self, info: dict) -> dict:
        """Keep a progress dict as the latest (and as the result when it is the last)."""
        if info.get("stage") == "done":
            self.result = info
        self.latest = info
        return info


class BackgroundJob(_JobState):
    """A `livertumorseg` command (train, segment) running in a background process.

    A reader thread moves the child's output lines into a queue; `poll()` (called from a QTimer
    in the Widget, or from `wait()`) drains it without ever blocking. Lines that are JSON progress
    dicts (`--progress-json`) come back from `poll()`, the others are kept in `log`. `cancel()`
    stops the whole process tree (PythonSlicer is a launcher with a Python child): first an
    interrupt, so the command line exits cleanly with nothing written, then a kill after `grace_s`.
    """

    what = "the background job"
    stageSpans = TRAINING_STAGE_SPAN  # for describeProgress

    def __init__(self, command: list[str], env: dict | None = None, cwd: str | None = None, outPath=None):
        super().__init__()
        self.command = [str(c) for c in command]
        self.outPath = Path(outPath) if outPath else None
        self.returncode: int | None = None
        self._lines: queue.Queue = queue.Queue()
        self._exited = threading.Event()
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own process group: cancel reaches the launcher's children
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, encoding="utf-8", errors="replace", bufsize=1, env=env, cwd=cwd, **kwargs,
        )
        self._reader = threading.Thread(target=self._read, name=f"LiverTumorSeg {self.what} output", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def _read(self) -> None:
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\r\n"))
        self._process.wait()
        self._exited.set()

    def poll(self) -> list[dict]:
        """Progress dicts printed since the last call; `finished` turns True in the call that returns the last ones."""
        exited = self._exited.is_set()
        updates = []
        for line in _drained(self._lines):
            info = _progressFromLine(line)
            if info is None:
                if line.strip():
                    self.log.append(line)
                continue
            updates.append(self._record(info))
        if exited and not self.finished:
            self.returncode = self._process.returncode
            self.finished = True
            if not self.cancelled and (self.returncode != 0 or not self._succeeded()):
                self.error = self._errorMessage()
        return updates

    def _succeeded(self) -> bool:
        """Exit code 0 is not enough for training: it must also have reported its result."""
        return self.result is not None

    def _errorMessage(self) -> str:
        """One line for the user: the command's own `error:` line, else what ended it (a signal,
        the last line of a traceback). The whole output stays in `log` for the details."""
        errors = [line for line in self.log if line.startswith("error:")]
        if errors:
            return errors[-1][len("error:"):].strip()
        code = self.returncode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (the system stops a process this way when memory runs out)" if -code == getattr(signal, "SIGKILL", 9) else ""
            return f"{self.what} was stopped by {name}{hint}; nothing was written: close other programs and try again"
        last = next((line.strip() for line in reversed(self.log) if _EXCEPTION_LINE.match(line.strip())), None)
        if last:
            return f"{self.what} failed ({last[:200]}); nothing was written (the details are in the log)"
        return f"{self.what} stopped with exit code {code}; nothing was written (the details are in the log)"

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel and wait until the process tree has ended (killing it after `timeout`): for
        closing the application, which must not leave a background process behind."""
        if not self._exited.is_set():
            self.cancel(grace_s=timeout)
            if not self._exited.wait(timeout):
                _signalTree(self._process, kill=True)
                self._exited.wait(timeout)
        self.poll()

    def cancel(self, grace_s: float = 5.0) -> None:
        """Stop the process tree; returns at once (the kill, if needed, happens on a timer thread)."""
        if self._exited.is_set() or self.cancelled:
            return
        self.cancelled = True
        _signalTree(self._process, kill=False)
        timer = threading.Timer(grace_s, self._killIfRunning)
        timer.daemon = True
        timer.start()

    def _killIfRunning(self) -> None:
        if not self._exited.is_set():
            _signalTree(self._process, kill=True)

    def wait(self, timeout: float | None = None, progress=None, interval: float = 0.2) -> dict:
        """Block until done (for scripts); returns the result dict. Raises Cancelled or InputError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for info in self.poll():
                if progress is not None:
                    progress(info)
            if self.finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                self._exited.wait(30)
                self.poll()
                raise Cancelled(f"{self.what} did not finish within {timeout:.0f} s and was stopped")
            time.sleep(interval)
        if self.cancelled:
            raise Cancelled(f"{self.what} was cancelled; nothing was written")
        if self.error:
            raise InputError(self.error)
        return self.result


class TrainingJob(BackgroundJob):
    """`livertumorseg train --progress-json`: the new model version goes to `outPath`."""

    what = "training"


class SegmentJob(BackgroundJob):
    """`livertumorseg segment --progress-json` on files exported from the scene; `finishSegment`
    puts the result into the scene. `folder` is the job's scratch folder (inputs and outputs),
    removed by `cleanup()`; `request` holds the nodes and settings of the Segment call."""

    what = "segmentation"
    stageSpans = SEGMENT_STAGE_SPAN

    def __init__(self, command, env=None, cwd=None, folder=None, request=None):
        self.folder = Path(folder) if folder else None
        self.request = request or {}
        super().__init__(command, env=env, cwd=cwd)

    def _succeeded(self) -> bool:
        return self.folder is not None and (self.folder / "tumor.nrrd").is_file() and (self.folder / "prob.nrrd").is_file()

    def cleanup(self) -> None:
        """Remove the scratch folder (after the result was read, or when the job is dropped)."""
        if self.folder is not None and self.finished:
            shutil.rmtree(self.folder, ignore_errors=True)

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self.cleanup()


class SegmentThreadJob(_JobState):
    """`segment` on a worker thread of this process, for a front end that keeps the engine loaded
    (the web server): no process to start, no imports, no files to write and read back (the
    browser's Segment took 4.4 s longer than the command line that way). The network and most
    of SciPy release the GIL, so the front end keeps serving meanwhile. The same surface as
    SegmentJob (poll, finished, latest, elapsed, cancel, stop, error, warnings); finishSegment
    puts the result into the scene on the main thread, as MRML must be used from one thread.
    Cancel is honoured at the next progress report (between network tiles)."""

    what = "segmentation"
    stageSpans = SEGMENT_STAGE_SPAN

    def __init__(self, image: Volume, liver, model, threshold: float, request: dict):
        super().__init__()
        self.request = request
        self.image, self.liver = image, liver
        self.output = None  # inference.SegmentResult once it succeeded
        self._failure: str | None = None
        self._updates: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(model, threshold), name="LiverTumorSeg segment", daemon=True)
        self._thread.start()

    def _run(self, model, threshold: float) -> None:
        from ..core.inference import segment

        try:
            self.output = segment(self.image, self.liver, model, threshold=threshold, progress=self._report)
        except Cancelled:
            pass
        except InputError as error:
            self._failure = str(error)
        except MemoryError:
            self._failure = "segmentation ran out of memory; nothing was written: close other programs or give a liver mask"
        except Exception as error:  # noqa: BLE001 - one line for the user, the details in the log
            import traceback

            self.log += traceback.format_exc().splitlines()
            self._failure = f"segmentation failed ({type(error).__name__}: {str(error)[:200]}); nothing was written"
        finally:
            self._done.set()

    def _report(self, info: dict) -> None:
        if self.cancelled:
            raise Cancelled("segmentation was cancelled")
        self._updates.put(dict(info))

    def poll(self) -> list[dict]:
        """Progress dicts since the last call; `finished` turns True in the call that returns the last ones."""
        done = self._done.is_set()
        updates = [self._record(info) for info in _drained(self._updates)]
        if done and not self.finished:
            self.finished = True
            if not self.cancelled and self.output is None:
                self.error = self._failure or "segmentation stopped without a result; nothing was written"
        return updates

    def cancel(self, grace_s: float = 5.0) -> None:
        """Cancelled until finishSegment has seen the result: a result that arrives after
        Cancel is dropped, as the process job's would be."""
        if not self.finished:
            self.cancelled = True

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel and wait for the thread (it stops at its next progress report)."""
        self.cancel()
        self._thread.join(timeout)
        self.poll()

    def cleanup(self) -> None:
        """Let go of the arrays (the CT's copy, the liver, the result: about 1 GB for a
        512 x 512 x 200 CT) once finishSegment has put them into the scene."""
        if self.finished:
            self.image = self.liver = self.output = None


def _readArray(path: Path) -> np.ndarray:
    """The (z, y, x) voxel array of an image file the command line wrote on the CT's own grid.
    Its uncompressed NRRD is read straight into the array (io.read_raw_nrrd: one read, no
    copy; about 0.4 s less per 512 x 512 x 200 float map than SimpleITK's read and copy), any
    other file through SimpleITK."""
    from ..storage.images import read_raw_nrrd

    array = read_raw_nrrd(path)
    if array is not None:
        return array
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _floorInsideLiver(probability: np.ndarray, liver: np.ndarray) -> np.ndarray:
    """A new map: `probability` raised to at least PROBABILITY_FLOOR inside the liver, 0 outside
    it (re-thresholding then knows the liver region from the map alone). Only the liver's box is
    computed; the rest of a large CT grid stays the untouched zeros of a fresh array."""
    out = np.zeros(probability.shape, dtype=np.float32)
    box = _boundingBox(liver)
    if box is not None:
        inside = (slice(box[0], box[1]), slice(box[2], box[3]), slice(box[4], box[5]))
        np.maximum(probability[inside], np.float32(PROBABILITY_FLOOR), out=out[inside], where=liver[inside])
    return out


def _boundingBox(mask: np.ndarray):
    """(z0, z1, y0, y1, x0, x1) of a mask's voxels, None when it is empty."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        if hits.size == 0:
            return None
        box += [int(hits[0]), int(hits[-1]) + 1]
    return tuple(box)


# The last line of a Python traceback: "ValueError: ...", "MemoryError", "KeyboardInterrupt".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(:.*)?$")


def _progressFromLine(line: str) -> dict | None:
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return None
    return info if isinstance(info, dict) and "stage" in info else None


def _signalTree(process: subprocess.Popen, kill: bool) -> None:
    """Interrupt (or kill) a process and everything it started."""
    if process.poll() is not None and not kill:
        return
    try:
        if os.name == "nt":
            if kill:
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
            else:
                process.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGINT)
    except (ProcessLookupError, PermissionError, OSError):
        pass


class LiverTumorSegLogic:
    """Segment liver tumors into MRML nodes, keep the case library, retrain in the background."""

    def __init__(self, libraryPath=None, scene=None):
        super().__init__()
        self._scene = scene
        self.libraryPath = Path(libraryPath) if libraryPath else defaultLibraryPath()
        self._modelCache: dict = {}
        self._jobs: list = []  # background jobs started here, until they finish
        self._observedScenes: list = []  # (scene, observer tag) for StartCloseEvent

    # ---- background jobs and the scene's life --------------------------------------------
    def _track(self, job):
        """Keep a started job; the first one also makes the Logic watch its scene's closing."""
        self._jobs = [j for j in self._jobs if not j.finished] + [job]
        try:
            scene = self.scene
        except InputError:  # training needs no scene
            return job
        if not any(observed is scene for observed, _ in self._observedScenes):
            me = weakref.ref(self)  # the scene must not keep the Logic alive (nor call a dead one)

            def onStartClose(caller, event):
                logic = me()
                if logic is not None:
                    logic._onSceneStartClose()

            tag = scene.AddObserver(scene.StartCloseEvent, onStartClose)
            self._observedScenes.append((scene, tag))
        return job

    def _onSceneStartClose(self, caller=None, event=None) -> None:
        """The scene is being closed: running jobs are cancelled (issue 10: closing the scene
        ends the session's work). Segment's CT and output are going away (finishSegment then
        raises Cancelled and removes its scratch folder); Retrain writes no model. Each job's
        `sceneClosed` says why, for the panel."""
        for job in getattr(self, "_jobs", []):
            if not job.finished:
                job.sceneClosed = True
                job.cancel()

    def runningJobs(self) -> list:
        return [job for job in self._jobs if not job.finished]

    def stopJobs(self, timeout: float = 5.0) -> None:
        """Stop every background job and wait for it (the application is closing): nothing is
        left running, no scratch folder is left behind, and no half result is written."""
        for job in self._jobs:
            job.stop(timeout)
        self._jobs = []
        for scene, tag in self._observedScenes:
            scene.RemoveObserver(tag)
        self._observedScenes = []

    # ---- context -------------------------------------------------------------------------
    @property
    def scene(self):
        """The scene given at construction, else Slicer's (inside the application)."""
        if self._scene is not None:
            return self._scene
        import slicer

        scene = getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise InputError("no MRML scene: pass scene= to LiverTumorSegLogic outside 3D Slicer")
        return scene

    @property
    def library(self) -> CaseLibrary:
        return CaseLibrary(self.libraryPath)

    # ---- models --------------------------------------------------------------------------
    def listModels(self) -> list[ModelInfo]:
        """Shipped default first (if present), then the library's versions oldest first."""
        return self.library.list_models()

    def activeModelVersion(self) -> str:
        return self.library.active_version()

    def modelWarning(self, info: ModelInfo) -> str:
        """"" or why a version should not be trusted over its parent (see parentCheckWarning)."""
        return parentCheckWarning(info.path)

    def modelSynthesis(self, info: ModelInfo) -> str:
        """One line: the synthetic training data a version used and, for `--synthesis auto`, which
        settings the segmenter chose and their validation scores (model.json "synthesis"); "" if none."""
        from ..training.synthesis_search import describe

        synthesis = _readJson(Path(info.path) / "model.json").get("synthesis")
        return describe(synthesis) if isinstance(synthesis, dict) else ""

    def modelLabel(self, info: ModelInfo) -> str:
        """What the model list shows: version, Dice, date, [shipped], and a warning marker."""
        label = info.label + (" [shipped]" if info.read_only else "")
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

    # ---- segment -------------------------------------------------------------------------
    def liverMask(self, ctNode, liverSegmentationNode=None, liverSegmentId=None, roiNode=None):
        """Liver region on the CT grid: the segment if given, else the ROI box, else None (whole CT)."""
        if liverSegmentationNode is not None and liverSegmentId:
            mask = mrml.segment_to_mask(liverSegmentationNode, liverSegmentId, ctNode)
            if not mask.any():
                raise InputError(
                    f"the liver segment '{liverSegmentId}' is empty on this CT; draw the liver or choose another segment"
                )
            return mask
        if roiNode is not None:
            return mrml.roi_to_mask(roiNode, ctNode)
        return None

    def defaultInputVolume(self):
        """The first plain scalar volume of the scene that is not one of our probability maps.

        vtkMRMLScene.GetFirstNodeByClass matches with IsA, so it would also return labelmaps (and
        any other subclass) and the "... probability" volumes Segment adds; None when no CT.
        """
        scene = self.scene
        kept = set()
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
            if node.GetNodeReferenceID(mrml.PROBABILITY_ROLE):
                kept.add(node.GetNodeReferenceID(mrml.PROBABILITY_ROLE))
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            if (node.GetClassName() == "vtkMRMLScalarVolumeNode" and node.GetID() not in kept
                    and node.GetAttribute(PROBABILITY_MAP_ATTRIBUTE) != "1"):
                return node
        return None

    def segment(
        self,
        ctNode,
        liverSegmentationNode=None,
        liverSegmentId=None,
        roiNode=None,
        model=None,
        threshold=None,
        outputSegmentationNode=None,
        replaceEdited=False,
        showProbability=False,
        progress=None,
    ):
        """Segment liver tumors in this process (blocks; `startSegment` runs it in the background);
        returns (segmentationNode, lesionTableNode).

        The result goes into a new segmentation node, or into `outputSegmentationNode`: there the
        Logic's own "Liver tumor" segment is replaced only while the user has not edited it (or
        with `replaceEdited=True`); otherwise a new segment is added. Other segments are never
        touched. The probability map is kept as a volume node (restricted to the liver region)
        for `rethreshold`; `showProbability` shows it over the CT.
        """
        from ..core.inference import segment as run_segment

        if ctNode is None:
            raise InputError("no CT volume selected; choose the CT to segment")
        self._checkOutput(ctNode, outputSegmentationNode)
        image = mrml.volume_from_node(ctNode)
        liver = self.liverMask(ctNode, liverSegmentationNode, liverSegmentId, roiNode)
        trained = self.loadModel(model)
        self._checkMemory(image, liver, trained)  # in this process: running out would end Slicer itself
        result = run_segment(image, liver, trained, threshold=threshold, progress=progress)
        modelName = str(self.modelPath(model)) if model is None or isinstance(model, (str, os.PathLike)) else "(in memory)"
        return self._putResult(
            ctNode, liver, np.asarray(result.tumor.array) > 0, result.probability.array, result.lesions,
            result.threshold, getattr(trained, "min_lesion_mm3", 0.0), modelName,
            outputSegmentationNode, replaceEdited, showProbability,
        )

    def startSegment(
        self,
        ctNode,
        liverSegmentationNode=None,
        liverSegmentId=None,
        roiNode=None,
        model=None,
        threshold=None,
        outputSegmentationNode=None,
        replaceEdited=False,
        showProbability=False,
        threads=None,
        inProcess=False,
    ) -> SegmentJob | SegmentThreadJob:
        """`segment` in a background process (`livertumorseg segment`), so the GUI never waits.

        The CT and the liver region are written to a scratch folder here (uncompressed: fast),
        the command line segments them (one core left to Slicer), and `finishSegment(job)` puts
        its result into the scene the way `segment` does. `model` is None (active), a version
        name or a model folder. `job.poll()` returns its progress dicts (stages prepare, network,
        postprocess, done; `describeProgress(info, job.stageSpans)` for a progress bar).
        `threads`: torch threads of the job (default: all cores but one, left to the GUI).
        `inProcess`: run it on a worker thread of this process instead (SegmentThreadJob: for a
        server that keeps the engine loaded; `threads` then does not apply, the process's torch
        threads are used). The Slicer widget keeps the process: running out of memory there
        ends the child, not Slicer.
        """
        if ctNode is None:
            raise InputError("no CT volume selected; choose the CT to segment")
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise InputError("a background Segment needs a model folder or version name; use segment() for a model in memory")
        self._checkOutput(ctNode, outputSegmentationNode)
        modelFolder = self.modelPath(model)
        if not (modelFolder / "model.pt").is_file():
            raise InputError(f"no model at {modelFolder}; choose another model or Retrain")
        threshold, minLesion = self._modelThreshold(modelFolder, threshold)
        image = mrml.volume_from_node(ctNode)
        liver = self.liverMask(ctNode, liverSegmentationNode, liverSegmentId, roiNode)
        request = {
            "ct": ctNode, "output": outputSegmentationNode, "replaceEdited": bool(replaceEdited),
            "showProbability": bool(showProbability), "threshold": threshold, "minLesion": minLesion,
            "model": str(modelFolder), "region": liver is not None,
        }
        if inProcess:
            trained = self.loadModel(modelFolder)
            self._checkMemory(image, liver, trained)
            return self._track(SegmentThreadJob(image, liver, trained, threshold, request))

        import SimpleITK as sitk

        scratch = Path(tempfile.gettempdir())
        fsutil.clean_stale_temps(scratch)  # scratch folders of a Slicer that crashed or was killed
        folder = Path(tempfile.mkdtemp(prefix=fsutil.temp_prefix("LiverTumorSeg-segment"), dir=scratch))
        try:
            sitk.WriteImage(image.to_sitk(), str(folder / "image.nrrd"), False)
            command = [
                pythonExecutable(), "-m", "LiverTumorSegLib", "segment", str(folder / "image.nrrd"),
                "--out", str(folder / "tumor.nrrd"), "--prob", str(folder / "prob.nrrd"),
                "--model", str(modelFolder.resolve()), "--threshold", f"{threshold:.17g}",
                "--progress-json", "--threads", str(_backgroundThreads() if threads is None else max(1, int(threads))),
            ]
            if liver is not None:
                sitk.WriteImage(image.with_array(liver.astype(np.uint8)).to_sitk(), str(folder / "liver.nrrd"), False)
                command += ["--liver", str(folder / "liver.nrrd")]
            packageParent = str(Path(__file__).resolve().parents[2])
            return self._track(SegmentJob(command, env=_childEnvironment(), cwd=packageParent, folder=folder,
                                          request=request))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def finishSegment(self, job: SegmentJob | SegmentThreadJob):
        """Put a finished background Segment into the scene; returns (segmentationNode, lesionTableNode).

        Raises Cancelled when it was cancelled and InputError when it failed or when the CT was
        removed meanwhile. The job's scratch folder is removed in any case.
        """
        from ..core.inference import lesions_in_box

        if not job.finished:
            raise InputError("the segmentation is still running; wait for it to finish (or cancel it)")
        try:
            if job.cancelled:
                if job.sceneClosed:
                    raise Cancelled("segmentation was cancelled because the scene was closed")
                raise Cancelled("segmentation was cancelled; the output segmentation was not changed")
            if job.error:
                raise InputError(job.error)
            request = job.request
            ctNode, output = request["ct"], request["output"]
            if ctNode.GetScene() is None:
                raise InputError("the CT was removed from the scene while it was being segmented")
            if output is not None and output.GetScene() is None:
                output = None  # the chosen output was deleted meanwhile: a new node instead
            image = mrml.volume_from_node(ctNode)
            if isinstance(job, SegmentThreadJob):
                probability, tumor, liver = job.output.probability.array, job.output.tumor.array > 0, job.liver
            else:
                probability = _readArray(job.folder / "prob.nrrd").astype(np.float32, copy=False)
                tumor = _readArray(job.folder / "tumor.nrrd") > 0
                liver = _readArray(job.folder / "liver.nrrd") > 0 if request["region"] else None
            if probability.shape != image.shape or tumor.shape != image.shape:
                raise InputError("the CT changed while it was being segmented; segment it again")
            box = _boundingBox(tumor)  # measured on the CT's geometry now (it may have moved meanwhile)
            lesions = lesions_in_box(tumor, image, probability, box) if box else []
            return self._putResult(
                ctNode, liver, tumor, probability, lesions, request["threshold"], request["minLesion"],
                request["model"], output, request["replaceEdited"], request["showProbability"],
            )
        finally:
            job.cleanup()

    @staticmethod
    def _checkMemory(image, liver, trained) -> None:
        """InputError when segmenting would not fit in the free memory (memory.py)."""
        from ..storage.memory import memory_problem
        from ..core.features import liver_box

        settings = getattr(trained, "feature_settings", None)
        margin, work = (settings.margin_mm, settings.spacing_mm) if settings is not None else (12.0, 2.0)
        box = None
        if liver is not None:
            z0, z1, y0, y1, x0, x1 = liver_box(liver, image.shape, image.spacing_zyx, margin)
            box = (z1 - z0, y1 - y0, x1 - x0)
        problem = memory_problem(image.shape, image.spacing_zyx, box, work_mm=work)
        if problem:
            raise InputError(problem.replace("give a liver mask (--liver)", "choose the liver segment"))

    def _checkOutput(self, ctNode, outputSegmentationNode) -> None:
        if outputSegmentationNode is not None and outputSegmentationNode.GetTransformNodeID() != ctNode.GetTransformNodeID():
            raise InputError(
                f"segmentation '{outputSegmentationNode.GetName()}' is under another transform than the CT; "
                "choose 'Create new segmentation' as output"
            )

    def _modelThreshold(self, modelFolder: Path, threshold) -> tuple[float, float]:
        """(decision threshold, smallest lesion mm^3) for a model folder: from its model.json
        (save_model writes both), else from the model file itself."""
        meta = _readJson(modelFolder / "model.json")
        own, minimum = _number(meta.get("threshold")), _number(meta.get("min_lesion_mm3"))
        if own is None or minimum is None:
            trained = self.loadModel(modelFolder)
            own, minimum = float(trained.threshold), float(trained.min_lesion_mm3)
        threshold = own if threshold is None else float(threshold)
        if not 0.0 < threshold < 1.0:
            raise InputError(f"threshold {threshold} is outside (0, 1); use e.g. 0.5")
        return threshold, minimum

    def _putResult(self, ctNode, liver, tumor, probability, lesions, threshold, minLesion, modelName,
                   outputSegmentationNode, replaceEdited, showProbability):
        """Write one Segment result (arrays on the CT grid) into the scene: the tumor segment, the
        kept probability map, the lesion table, the attributes re-thresholding needs, the display."""
        from ..storage import images as lio

        probability = np.asarray(probability, dtype=np.float32)
        if liver is not None:
            probability = _floorInsideLiver(probability, liver)
        segmentationNode = outputSegmentationNode
        if segmentationNode is None:
            segmentationNode = mrml.new_segmentation_node(self.scene, ctNode, f"{ctNode.GetName()} liver tumor")
        self._writeTumorSegment(segmentationNode, np.asarray(tumor, dtype=bool), ctNode, replaceEdited, lio.TUMOR_SEGMENT)
        segmentationNode.SetNodeReferenceID(mrml.CT_ROLE, ctNode.GetID())
        segmentationNode.SetAttribute(THRESHOLD_ATTRIBUTE, f"{float(threshold):.6g}")
        segmentationNode.SetAttribute(MIN_LESION_ATTRIBUTE, f"{float(minLesion):.6g}")
        segmentationNode.SetAttribute(REGION_ATTRIBUTE, "0" if liver is None else "1")
        segmentationNode.SetAttribute(MODEL_ATTRIBUTE, modelName)

        probabilityNode = self._keepProbability(segmentationNode, ctNode, probability)
        tableNode = self._lesionTable(segmentationNode)
        mrml.update_lesion_table(tableNode, lesions)
        self._show(segmentationNode, probabilityNode if showProbability else None)
        return segmentationNode, tableNode

    def rethreshold(self, segmentationNode, threshold: float, replaceEdited=False):
        """Threshold the kept probability map again (no network run); returns the updated lesion table node."""
        from ..core.inference import mask_from_probability
        from ..core.lesions import lesion_table

        if not 0.0 < float(threshold) < 1.0:
            raise InputError(f"threshold {threshold} is outside (0, 1)")
        probabilityNode = self.probabilityNode(segmentationNode)
        ctNode = segmentationNode.GetNodeReference(mrml.CT_ROLE) if segmentationNode else None
        if probabilityNode is None or ctNode is None:
            raise InputError("this segmentation has no kept probability map; run Segment first")
        segmentId = self.tumorSegmentId(segmentationNode)
        if segmentId and not replaceEdited and mrml.segment_was_edited(segmentationNode, segmentId, ctNode):
            raise InputError(
                "the tumor segment was edited since it was computed; re-thresholding would replace "
                "your edits (confirm to replace them, or segment into a new segmentation)"
            )
        ct = mrml.volume_from_node(ctNode)
        probability = mrml.volume_from_node(probabilityNode).array.astype(np.float32)
        minimum = float(segmentationNode.GetAttribute(MIN_LESION_ATTRIBUTE) or 0.0)
        region = probability > 0 if segmentationNode.GetAttribute(REGION_ATTRIBUTE) == "1" else None
        mask = np.asarray(mask_from_probability(probability, region, float(threshold), ct.spacing_zyx, minimum), dtype=bool)
        from ..storage import images as lio

        self._writeTumorSegment(segmentationNode, mask, ctNode, True, lio.TUMOR_SEGMENT)
        segmentationNode.SetAttribute(THRESHOLD_ATTRIBUTE, f"{float(threshold):.6g}")
        tableNode = self._lesionTable(segmentationNode)
        mrml.update_lesion_table(tableNode, lesion_table(mask, ct, probability))
        return tableNode

    def tumorSegmentId(self, segmentationNode) -> str | None:
        """Id of the Logic's tumor segment in a segmentation node, None if it has none (any more)."""
        if segmentationNode is None:
            return None
        segmentId = segmentationNode.GetAttribute(TUMOR_SEGMENT_ATTRIBUTE)
        if segmentId and segmentationNode.GetSegmentation().GetSegment(segmentId) is not None:
            return segmentId
        return None

    def editedTumorSegmentId(self, segmentationNode, ctNode=None) -> str | None:
        """The Logic's tumor segment if the user edited it since it was computed (ask before replacing)."""
        segmentId = self.tumorSegmentId(segmentationNode)
        if segmentId is None:
            return None
        ctNode = ctNode or segmentationNode.GetNodeReference(mrml.CT_ROLE)
        if ctNode is None or mrml.segment_was_edited(segmentationNode, segmentId, ctNode):
            return segmentId
        return None

    def probabilityNode(self, segmentationNode):
        return segmentationNode.GetNodeReference(mrml.PROBABILITY_ROLE) if segmentationNode else None

    def lesionTableNode(self, segmentationNode):
        return segmentationNode.GetNodeReference(mrml.TABLE_ROLE) if segmentationNode else None

    def lesionRows(self, tableNode) -> tuple[list[str], list[list]]:
        """(column titles, rows) of a lesion table node, for a front end that draws its own table."""
        if tableNode is None:
            return [], []
        return mrml.table_rows(tableNode)

    def lesionCentroid(self, tableNode, row: int) -> tuple[float, float, float]:
        """RAS centre (mm) of the lesion in a table row."""
        header, rows = mrml.table_rows(tableNode)
        if not 0 <= row < len(rows):
            raise InputError(f"no lesion in row {row}")
        columns = [header.index(name) for name in ("Centroid R", "Centroid A", "Centroid S")]
        return tuple(float(rows[row][c]) for c in columns)

    def jumpToLesion(self, tableNode, row: int) -> tuple[float, float, float]:
        """Centre all slice views on the lesion of a table row; returns its RAS position."""
        ras = self.lesionCentroid(tableNode, row)
        mrml.jump_slices_to(self.scene, ras)
        return ras

    def _writeTumorSegment(self, segmentationNode, mask, ctNode, replaceEdited, info) -> str:
        segmentId = self.tumorSegmentId(segmentationNode)
        if segmentId and (replaceEdited or not mrml.segment_was_edited(segmentationNode, segmentId, ctNode)):
            return mrml.write_segment(segmentationNode, mask, ctNode, segment_id=segmentId)
        segmentId = mrml.write_segment(
            segmentationNode, mask, ctNode, name=self._freeSegmentName(segmentationNode, info.name),
            color=info.color, terminology=info.terminology,
        )
        segmentationNode.SetAttribute(TUMOR_SEGMENT_ATTRIBUTE, segmentId)
        return segmentId

    @staticmethod
    def _freeSegmentName(segmentationNode, name: str) -> str:
        segmentation = segmentationNode.GetSegmentation()
        taken = {segmentation.GetSegment(s).GetName() for s in mrml.segment_ids(segmentationNode)}
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name} {n}"
        return candidate

    def _keepProbability(self, segmentationNode, ctNode, probability):
        node = self.probabilityNode(segmentationNode)
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{segmentationNode.GetName()} probability")
            node.SetAttribute(PROBABILITY_MAP_ATTRIBUTE, "1")
            segmentationNode.SetNodeReferenceID(mrml.PROBABILITY_ROLE, node.GetID())
        if node.GetDisplayNode() is None:
            # Before the voxels: a new display node measures the window / level of what the volume
            # holds, a pass over the whole CT grid (0.7 s for 512 x 512 x 200) for a range we fix.
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 1.0)
        mrml.set_array_like(node, probability, ctNode)
        # As an overlay: a heat colour map, and near-zero probability transparent.
        display.AutoThresholdOff()
        display.SetThreshold(PROBABILITY_SHOWN_FROM, 1.0)
        display.ApplyThresholdOn()
        if self.scene.GetNodeByID(PROBABILITY_COLORS) is not None:
            display.SetAndObserveColorNodeID(PROBABILITY_COLORS)
        return node

    def _lesionTable(self, segmentationNode):
        node = self.lesionTableNode(segmentationNode)
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{segmentationNode.GetName()} lesions")
            segmentationNode.SetNodeReferenceID(mrml.TABLE_ROLE, node.GetID())
        return node

    def _show(self, segmentationNode, probabilityNode=None) -> None:
        display = segmentationNode.GetDisplayNode()
        if display is None:
            segmentationNode.CreateDefaultDisplayNodes()
            display = segmentationNode.GetDisplayNode()
        display.SetVisibility(True)
        display.SetVisibility2D(True)
        display.SetVisibility3D(True)
        segmentationNode.CreateClosedSurfaceRepresentation()  # 3D views show the closed surface
        if probabilityNode is not None:
            mrml.show_as_foreground(self.scene, probabilityNode)

    # ---- case library --------------------------------------------------------------------
    def addCase(
        self,
        ctNode,
        liverSegmentationNode,
        liverSegmentId,
        tumorSegmentationNode,
        tumorSegmentId,
        caseId=None,
        notes="",
    ) -> str:
        """Save CT + liver + (corrected) tumor mask as a new training case; returns the case id."""
        if liverSegmentationNode is None or not liverSegmentId:
            raise InputError(
                "adding a case needs the liver as a segment (an ROI box is not a liver outline); "
                "segment the liver first, e.g. with the Segment Editor or TotalSegmentator"
            )
        if tumorSegmentationNode is None or not tumorSegmentId:
            raise InputError("no tumor segment chosen; run Segment, correct the result, then add the case")
        image = mrml.volume_from_node(ctNode)
        liver = mrml.segment_to_mask(liverSegmentationNode, liverSegmentId, ctNode)
        tumor = mrml.segment_to_mask(tumorSegmentationNode, tumorSegmentId, ctNode)
        if not liver.any():
            raise InputError(f"the liver segment '{liverSegmentId}' is empty; draw the liver first")
        labels = np.zeros(image.shape, dtype=np.uint8)
        labels[liver] = 1
        labels[tumor] = 2
        return self.library.add_case(
            image, Volume(labels, image.spacing, image.origin, image.direction),
            source=f"3D Slicer: {ctNode.GetName()}", notes=notes, case_id=caseId,
        )

    def listCases(self):
        return self.library.list_cases()

    def removeCase(self, caseId: str) -> None:
        self.library.remove_case(caseId)

    # ---- files: loading inputs and writing results (Slicer has Add Data and Save; a front end
    # without them, such as the web app, loads and downloads through these) ------------------
    def loadVolume(self, path, name=None):
        """A CT file (.nrrd, .nii(.gz), .mha/.mhd) or DICOM series folder as a new volume node.

        Read by the engine's reader, so a bad file fails with the command line's own message
        (InputError: a PNG, a 2D image, a colour image, a non-uniform DICOM series...)."""
        from ..storage import images as lio

        image = lio.read_image(path, keep_integer=True)
        return mrml.add_volume_node(self.scene, image, name or _stemOf(path))

    def loadLiverSegmentation(self, path, ctNode, name=None):
        """A liver mask file (any nonzero voxel is liver; LiTS labels and Slicer .seg.nrrd with a
        liver segment work as is) as a new segmentation node on the CT's grid; returns
        (segmentationNode, liverSegmentId)."""
        from ..storage import images as lio

        mask = lio.read_liver_mask(path, reference=mrml.volume_from_node(ctNode))
        node = mrml.new_segmentation_node(self.scene, ctNode, name or f"{ctNode.GetName()} liver")
        segmentId = mrml.write_segment(node, mask, ctNode, name=lio.LIVER_SEGMENT.name, color=lio.LIVER_SEGMENT.color,
                                       terminology=lio.LIVER_SEGMENT.terminology)
        return node, segmentId

    def loadCase(self, caseId: str):
        """A library case's CT and liver (liver and tumor labels) into the scene, to segment it
        again; returns (ctNode, liverSegmentationNode, liverSegmentId)."""
        from ..storage import images as lio

        image, labels = self.library.load_case(caseId)
        ctNode = mrml.add_volume_node(self.scene, image, f"case {caseId}")
        node = mrml.new_segmentation_node(self.scene, ctNode, f"case {caseId} liver")
        segmentId = mrml.write_segment(node, labels.array > 0, ctNode, name=lio.LIVER_SEGMENT.name,
                                       color=lio.LIVER_SEGMENT.color, terminology=lio.LIVER_SEGMENT.terminology)
        return ctNode, node, segmentId

    def removeNodes(self, *nodes) -> None:
        """Take inputs or results out of the scene (a front end replacing its CT); a Segment
        result goes with its kept probability map and lesion table. None and removed nodes are skipped."""
        for node in nodes:
            if node is None or node.GetScene() is None:
                continue
            if node.IsA("vtkMRMLSegmentationNode"):
                for kept in (self.probabilityNode(node), self.lesionTableNode(node)):
                    if kept is not None and kept.GetScene() is not None:
                        self.scene.RemoveNode(kept)
            self.scene.RemoveNode(node)

    def exportResult(self, segmentationNode, folder, baseName="result") -> dict:
        """Write the tumor segment as it is now (with the user's corrections) the way the command
        line writes a result: `<base>.seg.nrrd` (Slicer segmentation), `<base>-labelmap.nrrd`
        (uint8, 1 = tumor) and `<base>-lesions.csv` (the lesion table, measured on that segment).
        Returns {"segmentation", "labelmap", "lesions"} -> path."""
        from ..storage import images as lio
        from ..core.lesions import lesion_table
        from ..storage.lesion_csv import write_lesion_csv

        segmentId = self.tumorSegmentId(segmentationNode)
        ctNode = segmentationNode.GetNodeReference(mrml.CT_ROLE) if segmentationNode else None
        if segmentId is None or ctNode is None:
            raise InputError("there is no tumor result to save; run Segment first")
        ct = mrml.volume_from_node(ctNode)
        mask = mrml.segment_to_mask(segmentationNode, segmentId, ctNode)
        probabilityNode = self.probabilityNode(segmentationNode)
        probability = mrml.volume_from_node(probabilityNode).array if probabilityNode is not None else None
        tumor = ct.with_array(mask.astype(np.uint8))
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"segmentation": folder / f"{baseName}.seg.nrrd", "labelmap": folder / f"{baseName}-labelmap.nrrd",
                 "lesions": folder / f"{baseName}-lesions.csv"}
        lio.write_segmentation(paths["segmentation"], tumor, [lio.TUMOR_SEGMENT])
        lio.write_labelmap(tumor, paths["labelmap"])
        write_lesion_csv(lesion_table(mask, ct, probability), paths["lesions"])
        return paths

    # ---- training ------------------------------------------------------------------------
    def trainingCommand(self, outPath, minutes=5.0, maxSteps=None, seed=0, initVersion=None) -> list[str]:
        """`python -m LiverTumorSegLib train LIBRARY --out NEW --init ACTIVE --progress-json ...`."""
        init = self.library.model_path(initVersion) if initVersion else self.library.active_model_path()
        command = [
            pythonExecutable(), "-m", "LiverTumorSegLib", "train", str(self.libraryPath.resolve()),
            "--out", str(Path(outPath).resolve()), "--progress-json",
            "--minutes", f"{float(minutes):g}", "--seed", str(int(seed)),
            "--threads", str(_backgroundThreads()),
        ]
        if (init / "model.pt").is_file():
            command += ["--init", str(init.resolve())]
        if maxSteps is not None:
            command += ["--max-steps", str(int(maxSteps))]
        return command

    def startTraining(self, minutes=5.0, maxSteps=None, seed=0, initVersion=None) -> TrainingJob:
        """Fine-tune the active model (or `initVersion`) on all library cases in a background process.

        The new version is written to `library.new_version_path()`; it does not become active by
        itself (see `setActiveModel`).
        """
        minutes = _number(minutes)
        if minutes is None or minutes <= 0:
            raise InputError("the training time must be a positive number of minutes, e.g. 5")
        if maxSteps is not None and int(maxSteps) < 1:
            raise InputError(f"the number of training steps must be at least 1, not {maxSteps}")
        if not self.listCases():
            raise InputError(f"no cases in {self.libraryPath}; add corrected cases first")
        outPath = self.library.new_version_path()
        command = self.trainingCommand(outPath, minutes, maxSteps, seed, initVersion)
        packageParent = str(Path(__file__).resolve().parents[2])  # `-m` finds the package from here
        return self._track(TrainingJob(command, env=_childEnvironment(), cwd=packageParent, outPath=outPath))

    def train(self, minutes=5.0, maxSteps=None, seed=0, initVersion=None, progress=None, timeout=None) -> ModelInfo:
        """Blocking `startTraining` for scripts; returns the new version's ModelInfo."""
        job = self.startTraining(minutes, maxSteps, seed, initVersion)
        job.wait(timeout=timeout, progress=progress)
        return ModelInfo.from_folder(job.outPath)


def _stemOf(path) -> str:
    """A node name from a file or folder name: 'ct' for ct.nii.gz, ct.nrrd or a DICOM folder 'ct'."""
    name = Path(path).name
    for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name
