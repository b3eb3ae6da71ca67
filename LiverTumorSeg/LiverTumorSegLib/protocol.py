"""The command line's protocol with the programs that run it as a background process.

The Slicer side runs `python -m LiverTumorSegLib segment|train ... --progress-json` and reads its
output; the command line writes that output. Both take the command lines and the line format
from here, so neither rebuilds the other's half. Standard library only: importable from the
command line and from the Qt-free Slicer side alike.
"""

from __future__ import annotations

import json

PACKAGE = "LiverTumorSegLib"
PROGRESS_JSON = "--progress-json"  # the option that turns progress into JSON lines
WARNING_PREFIX = "warning:"  # a line the command prints for the user (a case it skipped...)
ERROR_PREFIX = "error:"  # the command's one-line reason for exit code 2


def segment_command(python: str, image, out, prob, model, threshold: float, threads: int, liver=None,
                    liver_out=None) -> list[str]:
    """`python -m LiverTumorSegLib segment IMAGE --out OUT --prob PROB ... --progress-json`:
    the threshold is written with 17 digits so the child uses exactly the caller's float.
    `liver_out`: where the child writes the liver it found (without `liver`)."""
    command = [
        str(python), "-m", PACKAGE, "segment", str(image), "--out", str(out), "--prob", str(prob),
        "--model", str(model), "--threshold", f"{threshold:.17g}", PROGRESS_JSON, "--threads", str(int(threads)),
    ]
    if liver is not None:
        command += ["--liver", str(liver)]
    if liver_out is not None:
        command += ["--liver-out", str(liver_out)]
    return command


def train_command(python: str, cases, out, minutes: float, seed: int, threads: int | None, init=None,
                  max_steps: int | None = None) -> list[str]:
    """`python -m LiverTumorSegLib train CASES --out OUT --progress-json ...` (`init`: the model
    folder to fine-tune from, None trains from scratch; `threads` None: the command's default)."""
    command = [
        str(python), "-m", PACKAGE, "train", str(cases), "--out", str(out), PROGRESS_JSON,
        "--minutes", f"{float(minutes):g}", "--seed", str(int(seed)),
    ]
    if threads is not None:
        command += ["--threads", str(int(threads))]
    if init is not None:
        command += ["--init", str(init)]
    if max_steps is not None:
        command += ["--max-steps", str(int(max_steps))]
    return command


def progress_line(info: dict) -> str:
    """One progress dict ({"stage", "step", "total", ...}) as the line the command prints."""
    return json.dumps(info)


def parse_progress_line(line: str) -> dict | None:
    """The progress dict of a line the command printed, None for any other line."""
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return None
    return info if isinstance(info, dict) and "stage" in info else None

