"""Shared pieces of the benchmark scripts: machine description, threads, atomic JSON, plots.

Imported by the benchmark scripts (run as scripts, so this folder is on sys.path).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
WORK_DIR = BENCH_DIR / "work"


def results_dir(preset: str) -> Path:
    """The full protocol writes benchmarks/results; smaller presets never overwrite it."""
    return RESULTS_DIR if preset == "full" else RESULTS_DIR / preset


def set_threads(threads: int | None) -> int:
    """Torch intra-op threads (None keeps torch's default, one per core). On a machine shared
    with other jobs, one thread is much faster than two oversubscribed ones."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    return int(torch.get_num_threads())


def machine() -> dict:
    """What the numbers were measured on (load average: others' jobs on a shared machine slow ours)."""
    import numpy
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu_used": False,
    }
    try:
        info["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def config_key(config: dict) -> str:
    """Short stable hash of everything that changes a result: the cache folder name."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def write_json(path: Path, data) -> None:
    from LiverTumorSegLib.storage.fsutil import write_json_atomic

    write_json_atomic(path, finite_or_none(data))


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def finite_or_none(value):
    """JSON has no NaN/inf: turn them into None, recursively; numpy scalars into Python numbers."""
    if isinstance(value, dict):
        return {str(k): finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_figure(fig, path: Path) -> Path:
    """savefig through a temporary name (atomic)."""
    from LiverTumorSegLib.storage.fsutil import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def result_header(benchmark: str, script: str, preset: str, config: dict) -> dict:
    """The first keys of every results JSON: what ran, when, with which command and settings."""
    import sys

    return {"benchmark": benchmark, "created": now(), "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:]),
            "preset": preset, "config": config}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
