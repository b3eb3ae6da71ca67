"""The command line's outputs before and during a run: every output path is checked (type,
writable, not an input, not another output, not an existing file unless --overwrite) before any
work, and progress is printed as JSON lines for the Slicer module or as a bar for people.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError
from .protocol import progress_line

IMAGE_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha")  # single files: one rename covers them (not .mhd + .raw)
LABEL_SUFFIXES = (".seg.nrrd",) + IMAGE_SUFFIXES
DICOM_SUFFIXES = (".dcm",)  # a DICOM SEG (segment --out); `--out-format dicom-seg` allows any name


def check_output(path: str | None, overwrite: bool, suffixes=LABEL_SUFFIXES, option: str = "--out") -> Path | None:
    """Refuse outputs that would replace a user's file, that no reader would recognise, or that
    cannot be written (read-only folder, a file where a folder should be, an existing folder)."""
    from .storage.fsutil import unwritable_reason

    if path is None:
        return None
    out = Path(path)
    if not str(out).lower().endswith(tuple(suffixes)):
        raise InputError(f"{option} {out}: unknown output type; use one of {', '.join(suffixes)}")
    if out.is_dir():
        raise InputError(f"{option} {out} is an existing folder; give a file name for the output, not a folder")
    if out.exists() and not overwrite:
        raise InputError(f"{option} {out} already exists; choose another name or pass --overwrite")
    reason = unwritable_reason(out)
    if reason:
        raise InputError(f"{option} {out} cannot be written: {reason}; choose a folder you can write to")
    return out


def check_tumor_output(path: str, overwrite: bool, out_format: str, image: str) -> tuple[Path, bool]:
    """(checked --out path, whether it is a DICOM SEG). A DICOM SEG is chosen by `--out-format
    dicom-seg` (any name) or a .dcm name, and only for a CT read from a DICOM series folder: a SEG
    must reference the CT's own DICOM slices."""
    dicom = out_format == "dicom-seg" or str(path).lower().endswith(DICOM_SUFFIXES)
    if dicom and not Path(image).is_dir():
        raise InputError(
            f"--out {path}: a DICOM SEG references the CT's DICOM slices, but {image} is not a DICOM series folder; "
            "give the CT as its DICOM folder, or write --out as .seg.nrrd (or .nrrd/.nii.gz)"
        )
    return check_output(path, overwrite, LABEL_SUFFIXES + DICOM_SUFFIXES if not dicom else ("",)), dicom


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.abspath(a) == os.path.abspath(b)


def check_distinct(outputs: dict, inputs: dict) -> None:
    """No output may be another output or one of the inputs (even with --overwrite: the CT or
    mask being read would be replaced by the result)."""
    named = [(option, path) for option, path in outputs.items() if path is not None]
    for i, (option, path) in enumerate(named):
        for other, other_path in named[:i]:
            if _same_file(path, other_path):
                raise InputError(f"{other} and {option} are the same file {path}; give each output its own name")
        for what, source in inputs.items():
            if source is not None and _same_file(path, Path(source)):
                raise InputError(f"{option} {path} is the {what} being read; write the result to a new file")


def make_progress_printer(as_json: bool):
    """A progress callback: JSON lines for the Slicer module, a tqdm bar for people."""
    if as_json:
        def report(info: dict) -> None:
            print(progress_line(info), flush=True)
        return report, lambda: None

    from tqdm import tqdm

    bars: dict = {}

    def report(info: dict) -> None:
        stage = info.get("stage", "")
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bars.clear()
            bar = bars[stage] = tqdm(total=info.get("total") or None, desc=stage, unit="step", dynamic_ncols=True)
        if info.get("total"):
            bar.total = info["total"]
        bar.n = int(info.get("step", bar.n))
        if "loss" in info and info["loss"] is not None:
            bar.set_postfix(loss=f"{info['loss']:.3f}", refresh=False)
        bar.refresh()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return report, close


def write_tumor_output(out: Path, tumor, liver=None) -> None:
    """`.seg.nrrd` -> Slicer segmentation with a 'Liver tumor' segment and, when a liver was used,
    a 'Liver' segment under it (the tumors are part of the liver); else a uint8 labelmap (1 = tumor)."""
    from dataclasses import replace

    import numpy as np

    from .storage import images

    if str(out).lower().endswith(".seg.nrrd"):
        if liver is None:
            images.write_segmentation(out, tumor, [images.TUMOR_SEGMENT])
            return
        labels = np.where(tumor.array > 0, 2, np.asarray(liver, dtype=np.uint8)).astype(np.uint8)
        images.write_segmentation(out, tumor.with_array(labels), [replace(images.TUMOR_SEGMENT, value=2), images.LIVER_SEGMENT])
    else:
        images.write_labelmap(tumor, out)


def write_liver_output(out: Path, liver) -> None:
    """`--liver-out`: `.seg.nrrd` -> a 'Liver' segment; else a uint8 labelmap (1 = liver)."""
    from .storage import images

    if str(out).lower().endswith(".seg.nrrd"):
        images.write_segmentation(out, liver, [images.LIVER_SEGMENT])
    else:
        images.write_labelmap(liver, out)
