"""Background jobs of the Slicer side: a `livertumorseg` command in a child process (train,
segment), or Segment on a worker thread of this process (a server that keeps the engine loaded).

Qt-free: a front end polls a job from its own timer (a QTimer in Slicer, an asyncio task in the
web page); `poll()` never blocks. The command lines and their progress lines are the command
line's protocol (protocol.py).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import Cancelled, InputError
from ..protocol import ERROR_PREFIX, WARNING_PREFIX, parse_progress_line
from ..volume import Volume
from .rules import SEGMENT_STAGE_SPAN, TRAINING_STAGE_SPAN


def packageParent() -> str:
    """The folder holding LiverTumorSegLib: a child's working folder, so `-m` finds the package."""
    return str(Path(__file__).resolve().parents[2])


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


def childEnvironment() -> dict:
    """Environment for background jobs: Slicer's startup environment inside Slicer (PythonSlicer sets up its own)."""
    try:
        import slicer

        env = dict(slicer.util.startupEnvironment()) if hasattr(slicer, "app") else dict(os.environ)
    except (ImportError, AttributeError):
        env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (packageParent(), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def backgroundThreads() -> int:
    """CPU threads for a background job: one core is left to the front end (training at full width stalls
    the GUI and, sharing cores with it, runs several times slower per step)."""
    return max(1, (os.cpu_count() or 2) - 1)


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
        return [line[len(WARNING_PREFIX):].strip() for line in self.log if line.startswith(WARNING_PREFIX)]

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
            info = parse_progress_line(line)
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
        errors = [line for line in self.log if line.startswith(ERROR_PREFIX)]
        if errors:
            return errors[-1][len(ERROR_PREFIX):].strip()
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
    (the web server): no process to start, no imports, no files to write and read back, which
    would add seconds to every Segment. The network and most of SciPy release the GIL, so the
    front end keeps serving meanwhile. The same surface as
    SegmentJob (poll, finished, latest, elapsed, cancel, stop, error, warnings); finishSegment
    puts the result into the scene on the main thread, as MRML must be used from one thread.
    Cancel is honoured at the next progress report (between network tiles)."""

    what = "segmentation"
    stageSpans = SEGMENT_STAGE_SPAN

    def __init__(self, image: Volume, liver, model, threshold: float, request: dict, find_liver=None):
        """`find_liver(image, progress) -> bool mask`: how to find the liver when `liver` is None."""
        super().__init__()
        self.request = request
        self.image, self.liver = image, liver
        self._find_liver = find_liver
        self.output = None  # inference.SegmentResult once it succeeded
        self._failure: str | None = None
        self._updates: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(model, threshold), name="LiverTumorSeg segment", daemon=True)
        self._thread.start()

    def _run(self, model, threshold: float) -> None:
        from ..core.inference import segment

        try:
            if self.liver is None and self._find_liver is not None:  # found automatically first (InputError if implausible)
                self.liver = self._find_liver(self.image, self._report)
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


# The last line of a Python traceback: "ValueError: ...", "MemoryError", "KeyboardInterrupt".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(:.*)?$")


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
