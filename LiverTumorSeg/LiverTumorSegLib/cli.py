"""The `livertumorseg` command line: segment, batch, train, evaluate, phantom, web, demo.

Bad input prints one line naming the problem and the fix, and exits with code 2, with nothing
written: every output path is checked (type, writable, not an input, not another output, not an
existing file unless --overwrite; cli_outputs.py) before any work, and the outputs of one run are written to
temps and renamed into place together at the end, so there are all of them or none.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import Cancelled, InputError
from .training.settings import TrainSettings  # light: the train help reads its defaults
from .protocol import ERROR_PREFIX, PROGRESS_JSON, WARNING_PREFIX, progress_line
from .cli_outputs import (IMAGE_SUFFIXES, check_distinct, check_output, check_tumor_output, make_progress_printer,
                          write_liver_output, write_tumor_output)

EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130
# A case library is locked against a second `train` on it (a killed run's file does not block).
TRAIN_LOCK = ".livertumorseg-train.lock"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livertumorseg",
        description="Liver tumor segmentation in CT with MHP-Net, trained from a handful of cases.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment liver tumors in a CT")
    p.add_argument("image", help="CT: .nrrd, .nii(.gz), .mha/.mhd or a DICOM series folder")
    p.add_argument("--liver", help="liver mask (any nonzero voxel is liver; LiTS labels work as is); without it the "
                   "liver is found automatically, and a CT where no plausible liver is found is refused")
    p.add_argument("--out", required=True, help="output: .seg.nrrd (Slicer segmentation: 'Liver tumor' and 'Liver' "
                   "segments) or .nrrd/.nii.gz labelmap (1 = tumor); .dcm: a DICOM SEG referencing the CT's series "
                   "(the CT must be a DICOM folder)")
    p.add_argument("--out-format", choices=("auto", "dicom-seg"), default="auto",
                   help="auto (default): from --out's suffix; dicom-seg: a DICOM SEG whatever the name")
    p.add_argument("--liver-out", help="also write the liver used (.seg.nrrd, or a labelmap: 1 = liver)")
    p.add_argument("--model", help="model folder or model.pt (default: the shipped default model)")
    p.add_argument("--prob", help="also write the tumor probability map here (.nrrd/.nii.gz)")
    p.add_argument("--threshold", type=float, help="decision threshold in (0, 1) (default: the model's own)")
    p.add_argument("--lesions", help="also write the lesion table here (.csv)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: one per core)")
    p.add_argument(PROGRESS_JSON, action="store_true", help="print progress as JSON lines (for the Slicer module)")

    p = sub.add_parser("train", help="train (or fine-tune) a model on a folder of cases")
    p.add_argument("cases", help="case library, or a folder of case folders (image.nrrd + label.nrrd)")
    p.add_argument("--out", required=True, help="new model folder (must not exist: versions are never overwritten)")
    p.add_argument("--init", help="model to fine-tune from (folder or model.pt); earlier cases are replayed")
    p.add_argument("--minutes", type=float, default=5.0,
                   help="time cap in minutes (default 5): training stops early only if the planned steps take longer")
    p.add_argument("--max-steps", type=int,
                   help=f"planned optimisation steps (default {TrainSettings.max_steps}); model.json says how many ran")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--arch", choices=("mhpnet", "unet3d"), default="mhpnet", help="network (default mhpnet; unet3d is the plain baseline)")
    p.add_argument("--no-hessian", action="store_true", help="train without the Hessian channels (ablation)")
    p.add_argument("--synthetic-copies", type=int, default=None,
                   help="synthetic variants per training case: its tumors pasted elsewhere plus synthesised ones "
                        "(default 1; 0 trains on the given cases only)")
    p.add_argument("--synthesis", choices=("off", "fixed", "auto"), default=None,
                   help="synthetic training data: off; fixed (the copies above, fixed settings); auto (the segmenter "
                        "chooses the synthesis settings and ratio by validation on your held-out cases, in the same "
                        "step budget). Default: fixed (auto measured no better, benchmarks/RESULTS.md); model.json records the choice")
    p.add_argument("--no-spot-pass", action="store_true",
                   help="no spot pass (10-25 mm spots the network misses, fitted on your cases; with --init the "
                        "parent's is kept unless this is given)")
    p.add_argument("--no-intensity-floor", action="store_true",
                   help="no intensity floor (a smoothed HU threshold fitted on your cases, whose lesions the "
                        "network missed are added; leave it on unless your cases mix scanners or contrast phases)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: one per core; Slicer passes one less, "
                   "so the application stays responsive)")
    p.add_argument(PROGRESS_JSON, action="store_true", help="print progress as JSON lines (for the Slicer module)")

    p = sub.add_parser("batch", help="segment many CTs into a results folder (results.csv + each case's outputs); "
                                     "resumable, locally or on a Dask cluster")
    p.add_argument("cases", help="CSV (columns ct, optional liver and case) or a folder of DICOM series folders, case "
                                 "folders (image.nrrd + label.nrrd) or CT files")
    p.add_argument("--out", required=True, help="results folder; run again to resume (finished cases are skipped)")
    p.add_argument("--model", help="model folder or model.pt (default: the shipped default model)")
    p.add_argument("--threshold", type=float, help="decision threshold in (0, 1) (default: the model's own)")
    p.add_argument("--workers", type=int, help="local worker processes (default: one per core, at most 8)")
    p.add_argument("--threads", type=int, help="torch threads per case (default: cores / workers; 1 with --scheduler)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler (e.g. tcp://10.0.0.5:8786): run the cases "
                                       "on its workers instead of locally")

    p = sub.add_parser("evaluate", help="compare a predicted tumor mask with the truth; prints JSON")
    p.add_argument("pred", help="predicted labelmap or .seg.nrrd")
    p.add_argument("truth", help="truth labelmap or .seg.nrrd (LiTS labels: 2 = tumor)")
    p.add_argument("--liver", help="restrict both masks to this liver mask")
    p.add_argument("--truth-labels", choices=("auto", "lits", "mask"), default="auto",
                   help="what the truth's values mean: lits = 0 background, 1 liver, 2 tumor (a LiTS case without "
                        "tumors has only 0/1); mask = any nonzero voxel is tumor; auto (default) = lits when label 2 "
                        "is present, refused when only 0/1 (ambiguous)")

    p = sub.add_parser("phantom", help="write synthetic abdominal CT cases with known tumors")
    p.add_argument("out_dir", help="folder to write case folders into")
    p.add_argument("--cases", type=int, default=5, help="number of cases (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--small", action="store_true", help="small, fast phantoms (for tests and quick looks)")

    p = sub.add_parser("web", help="the Slicer panel's workflow in a web browser (trame-slicer; single user)")
    p.add_argument("--library", help="case library folder (default: %s)" % "~/.livertumorseg/library")
    p.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only; another needs --allow-remote)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other than loopback: anyone who reaches it can read and change your library")

    p = sub.add_parser("demo", help="end to end: the default model, Retrain on annotated tumors, the new model, "
                                    "on the real case (--real-case) or on phantoms")
    p.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=5.0, help="Retrain's time cap in minutes (default 5)")
    p.add_argument("--quick", action="store_true", help="tiny version (about a minute) for tests")
    p.add_argument("--real-case", type=Path, default=None,
                   help="folder holding the real case (LiTS 117 from liver-ct-segmentation-package==1.6.0: its wheel "
                        "or the two MRC files; `make demo` downloads it); phantoms when absent or not there")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("default", category=UserWarning, append=True)  # (a caller's own filters come first)
    warnings.formatwarning = lambda message, category, *a, **k: f"{WARNING_PREFIX} {message}\n"
    commands = {"segment": cmd_segment, "batch": cmd_batch, "train": cmd_train, "evaluate": cmd_evaluate, "phantom": cmd_phantom, "demo": cmd_demo,
                "web": cmd_web}
    try:
        return commands[args.command](args) or 0
    except InputError as exc:
        print(f"{ERROR_PREFIX} {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Cancelled, KeyboardInterrupt):
        print("cancelled; nothing was written", file=sys.stderr)
        return EXIT_CANCELLED
    except MemoryError:
        print("error: ran out of memory; nothing was written: give a liver mask (--liver) or crop the CT to the "
              "liver region, or close other programs", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # disk full, a folder removed or made read-only meanwhile, ...
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        fix = "free some disk space" if exc.errno == errno.ENOSPC else "check the folder and its permissions"
        print(f"error: {exc.strerror or exc}{where}; nothing was written: {fix} and run again", file=sys.stderr)
        return EXIT_BAD_INPUT


def run() -> None:
    """The `livertumorseg` command: `main`, then a quick exit. Tearing torch down at interpreter
    exit costs 0.5-0.6 s per command (benchmarks/RESULTS.md, "Speed"); by the time `main` returns
    its outputs are committed and closed, so only stdio is left to flush. Falls back to a normal
    exit while another thread runs (it would be cut off) or when `main` raised (a bug: the
    traceback must show)."""
    code = main()
    if threading.active_count() > 1:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def one_line(exc: Exception) -> str:
    """An error's message on one line (a library's multi-line text joined)."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip())


# ---- helpers ---------------------------------------------------------------------------------
def load_model_arg(path: str | None):
    from .storage.modelstore import default_model_path, load_model

    return load_model(Path(path) if path else default_model_path())


def tumor_mask(found, labels: str = "auto", role: str = "prediction") -> "np.ndarray":  # noqa: F821
    """Tumor voxels of labels read with storage.images.read_labels_kind. A Slicer segmentation: its tumor
    segments (label 2). A label map: "lits" = label 2; "mask" = any nonzero voxel; "auto" = label
    2 when present; else, for a prediction, any nonzero voxel (this tool's labelmaps are 1 =
    tumor); for a truth with only 0/1, refused: a tumor mask and a tumor-free LiTS case (1 =
    liver) look the same, and guessing wrong turns a liver into one big tumor."""
    import numpy as np

    values = found.volume.array
    if found.from_segmentation or labels == "lits":
        return values == 2
    if labels == "mask":
        return values > 0
    if np.any(values == 2):
        return values == 2
    if role == "truth" and np.any(values == 1) and not np.any(values > 2):
        raise InputError(
            "the truth holds only labels 0 and 1: a tumor mask and a LiTS case without tumors (1 = liver) look the "
            "same; say which with --truth-labels mask or --truth-labels lits"
        )
    return values > 0


def set_threads(threads: int | None) -> None:
    """--threads: torch's CPU threads (None: torch's default, one per core)."""
    if threads is None:
        return
    if threads < 1:
        raise InputError(f"--threads {threads} must be at least 1")
    import torch

    torch.set_num_threads(threads)


# ---- commands ---------------------------------------------------------------------------------
def cmd_segment(args) -> int:
    from .storage import images
    from .storage.fsutil import StagedOutputs
    from .core.inference import segment
    from .storage.lesion_csv import write_lesion_csv
    import numpy as np

    # Every output checked before any work: nothing of the user's replaced, nothing written half.
    out, dicom_seg = check_tumor_output(args.out, args.overwrite, args.out_format, args.image)
    prob_out = check_output(args.prob, args.overwrite, IMAGE_SUFFIXES, option="--prob")
    csv_out = check_output(args.lesions, args.overwrite, (".csv",), option="--lesions")
    liver_out = check_output(args.liver_out, args.overwrite, option="--liver-out")
    check_distinct({"--out": out, "--prob": prob_out, "--lesions": csv_out, "--liver-out": liver_out},
                   {"CT": args.image, "liver mask": args.liver, "model": args.model})
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise InputError(f"--threshold {args.threshold} is outside (0, 1); use e.g. 0.5")
    if dicom_seg:  # the series must be referable by a SEG: refused before any work
        from .storage.dicom_seg import source_datasets

        source_datasets(args.image)
    if args.liver:
        # The CT and its liver are read (SimpleITK, outside Python's lock) while torch is imported
        # and the model loaded: about 1 s of the command's 6. A bad model is still reported first.
        with ThreadPoolExecutor(1, thread_name_prefix="read CT") as pool:
            reading = pool.submit(read_ct_and_liver, args.image, args.liver)
            set_threads(args.threads)
            model = load_model_arg(args.model)
            image, liver = reading.result()
    else:
        set_threads(args.threads)
        model = load_model_arg(args.model)
        header = images.image_header(args.image)
        if header:  # refused before the voxels are even read
            from .storage.memory import liver_memory_problem

            problem = liver_memory_problem(*header, "give a liver mask (--liver)")
            if problem:
                raise InputError(problem)
        image, liver = read_ct_and_liver(args.image, None)
    report, close = make_progress_printer(args.progress_json) if args.progress_json else (None, lambda: None)
    try:
        if liver is None:
            liver = automatic_liver(image, report)
        images.warn_if_implausible_ct(image, liver, Path(args.image).name)
        check_memory(image, liver, model)
        result = segment(image, liver, model, threshold=args.threshold, progress=report)
    finally:
        close()
    with StagedOutputs() as staged:
        if dicom_seg:
            write_dicom_seg_output(staged.path_for(out), result, args.image, model)
        else:
            write_tumor_output(staged.path_for(out), result.tumor, liver)
        if liver_out:
            write_liver_output(staged.path_for(liver_out), image.with_array(liver.view(np.uint8)))
        if prob_out:
            images.write_image(result.probability, staged.path_for(prob_out))
        if csv_out:
            write_lesion_csv(result.lesions, staged.path_for(csv_out))
        staged.commit()
    total_ml = sum(lesion.volume_ml for lesion in result.lesions)
    print(f"{len(result.lesions)} lesion(s), {total_ml:.1f} mL in total, threshold {result.threshold:.2f} -> {out}")
    return 0


def automatic_liver(image, progress=None) -> "np.ndarray":  # noqa: F821
    """The liver found by the bundled liver network (bool, CT grid), or InputError (exit 2) naming
    why no plausible liver was found and asking for --liver. What was cleaned is warned."""
    from .core.liver_checks import find_plausible_liver
    from .storage.modelstore import shipped_liver_network

    check = find_plausible_liver(image, shipped_liver_network(), progress=progress)
    for note in check.notes:
        warnings.warn(f"liver found automatically: {note}")
    print(f"liver found automatically: {check.volume_ml:.0f} mL, mean {check.mean_hu:.0f} HU", file=sys.stderr)
    return check.mask.array > 0


def read_ct_and_liver(image_path, liver_path):
    """The CT (its integer type kept) and, when given, its liver mask on the CT's grid."""
    from .storage import images

    image = images.read_image(image_path, keep_integer=True)
    return image, (images.read_liver_mask(liver_path, reference=image) if liver_path else None)


def check_memory(image, liver, model) -> None:
    """Refuse up front a segmentation that would not fit in the free memory (memory.py)."""
    from .storage.memory import segment_memory_problem

    settings = model.feature_settings
    problem = segment_memory_problem(image, liver, settings.margin_mm, settings.spacing_mm)
    if problem:
        raise InputError(problem)


def write_dicom_seg_output(out: Path, result, dicom_folder, model) -> None:
    """The tumor mask as a DICOM SEG referencing the CT's series (storage/dicom_seg.py)."""
    from .storage.dicom_seg import write_tumor_seg

    write_tumor_seg(out, result.tumor, dicom_folder, model.meta.get("version", "unknown"), result.threshold)


def cmd_batch(args) -> int:
    from .batch import batch_command

    return batch_command(args)


def library_root(cases: str | os.PathLike) -> Path:
    """The folder a `train` run locks: the library (or folder of case folders) it was given, the
    parent of a single case folder."""
    from .storage.library import is_case_folder

    path = Path(cases)
    return path.parent if is_case_folder(path) else path


def read_training_cases(folders: list) -> list:
    """[(case id, CT, labels)] of the usable case folders. A broken case (unreadable file, label
    values other than 0/1/2, no liver, labels off the CT) is skipped with a warning naming it and
    the fix; InputError when none is usable. A label map covering only part of its CT is used
    with a warning (the rest of the CT is trained as background)."""
    from .storage.library import read_case_folder

    cases, problems = [], []
    for folder in folders:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                image, labels = read_case_folder(folder)
        except InputError as exc:
            problems.append((folder, one_line(exc)))
            continue
        for warning in caught:
            warnings.warn(f"case {folder.name}: {warning.message}")
        cases.append((folder.name, image, labels))
    if not cases:
        if len(problems) == 1:
            raise InputError(f"{problems[0][1]} (case {problems[0][0].name}, the only case)")
        names = ", ".join(folder.name for folder, _ in problems)
        raise InputError(f"none of the {len(problems)} cases is usable ({names}); first: {problems[0][1]}")
    for folder, reason in problems:
        warnings.warn(f"skipping case {folder.name} ({reason}); training on the other {len(cases)} case(s): "
                      f"repair or remove {folder}")
    return cases


def cmd_train(args) -> int:
    from .storage.fsutil import exclusive_lock
    from .storage.library import find_case_folders
    from .storage.modelstore import load_model, parent_check_warning, save_model
    from .training.train import train_model

    out = Path(args.out)
    if out.exists():
        raise InputError(f"{out} already exists; model versions are never overwritten, choose a new folder")
    reason = check_model_folder_writable(out)
    if reason:
        raise InputError(f"--out {out} cannot be written: {reason}; choose a folder you can write to")
    if not math.isfinite(args.minutes) or args.minutes <= 0:
        raise InputError(f"--minutes {args.minutes} must be a positive number of minutes, e.g. 5")
    if args.seed < 0:
        raise InputError(f"--seed {args.seed} must be 0 or more")
    if args.max_steps is not None and args.max_steps < 1:
        raise InputError(f"--max-steps {args.max_steps} must be at least 1 (or leave it out for the default)")
    set_threads(args.threads)
    cases = read_training_cases(find_case_folders(args.cases))
    init = load_model(Path(args.init)) if args.init else None
    with exclusive_lock(library_root(args.cases) / TRAIN_LOCK, "training"):
        budget = {} if args.max_steps is None else {"max_steps": args.max_steps}
        hessian = {"use_hessian": False} if args.no_hessian else {}
        synthetic = {} if args.synthetic_copies is None else {"synthetic_copies": args.synthetic_copies}
        synthetic["synthesis"] = args.synthesis or "default"
        settings = TrainSettings(seed=args.seed, minutes=args.minutes, arch=args.arch, spot_pass=not args.no_spot_pass,
                                 intensity_floor=not args.no_intensity_floor, **budget, **hessian, **synthetic)
        report, close = make_progress_printer(args.progress_json)
        try:
            model = train_model(cases, settings, init=init, progress=report)
        finally:
            close()
        save_model(model, out)
    validation = model.meta.get("validation", {})
    from .training.synthesis_search import describe

    synthesis = describe(model.meta.get("synthesis"))
    if args.progress_json:
        print(progress_line({"stage": "done", "model": str(out), "validation": validation, "synthesis": synthesis}), flush=True)
    else:
        dice = validation.get("dice")
        print(f"model written to {out}" + (f" (validation Dice {dice:.3f})" if dice is not None else "")
              + f", {model.meta['steps']} of {model.meta['steps_planned']} planned steps; {synthesis}")
    worse = parent_check_warning(model.meta)
    if worse:
        print(f"{WARNING_PREFIX} the new model is {worse}; keep using the parent unless your own cases say otherwise",
              file=sys.stderr)
    return 0


def check_model_folder_writable(out: Path) -> str | None:
    from .storage.fsutil import unwritable_reason

    return unwritable_reason(out / "model.pt")


def cmd_evaluate(args) -> int:
    from .storage import images
    from .evaluation.metrics import evaluate_case

    truth = images.read_labels_kind(args.truth)
    pred = images.read_labels_kind(args.pred, reference=truth.volume)
    truth_mask = tumor_mask(truth, args.truth_labels, role="truth")
    pred_mask = tumor_mask(pred)
    if args.liver:
        liver = images.read_liver_mask(args.liver, reference=truth.volume)
        pred_mask, truth_mask = pred_mask & liver, truth_mask & liver
    print(json.dumps(evaluate_case(pred_mask, truth_mask, truth.volume.spacing_zyx), indent=2))
    return 0


def cmd_phantom(args) -> int:
    from .data.phantom import PhantomSettings, write_phantom_cases

    from .storage.fsutil import unwritable_reason

    if args.cases < 1:
        raise InputError(f"--cases {args.cases}: give at least 1")
    reason = unwritable_reason(Path(args.out_dir) / "phantom-000")
    if reason:
        raise InputError(f"{args.out_dir} cannot be written: {reason}; choose a folder you can write to")
    if args.seed < 0:
        raise InputError(f"--seed {args.seed} must be 0 or more")
    settings = PhantomSettings.small() if args.small else None
    folders = write_phantom_cases(args.out_dir, args.cases, args.seed, settings)
    print(f"{len(folders)} case(s) written to {args.out_dir}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    if not math.isfinite(args.minutes) or args.minutes <= 0:
        raise InputError(f"--minutes {args.minutes} must be a positive number of minutes, e.g. 5")
    if args.seed < 0:
        raise InputError(f"--seed {args.seed} must be 0 or more")
    from .storage.fsutil import unwritable_reason

    reason = unwritable_reason(Path(args.out) / "metrics.json")
    if reason:
        raise InputError(f"--out {args.out} cannot be written: {reason}; choose a folder you can write to")
    run_demo(Path(args.out), seed=args.seed, minutes=args.minutes, quick=args.quick, real_case=args.real_case)
    return 0


def is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_web(args) -> int:
    """`livertumorseg web`: serve the web front end (LiverTumorSegWeb, imported only here)."""
    from LiverTumorSegWeb import missing_modules

    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} must be between 0 and 65535")
    if not is_loopback(args.host):
        if not args.allow_remote:
            raise InputError(f"--host {args.host} would serve the app (and your case library) beyond this computer; "
                             "pass --allow-remote as well if that is what you want")
        print(f"warning: serving on {args.host}: anyone who can reach port {args.port} can see the images and change "
              "the case library (no login, no encryption)", file=sys.stderr)
    missing = missing_modules()
    if missing:
        raise InputError(f"the web front end needs {', '.join(missing)}, which is not installed; "
                         "install it with `make venv` (or pip install -r requirements.txt)")
    from .storage.library import default_library_path
    from LiverTumorSegWeb.app import serve

    library = Path(args.library).expanduser() if args.library else default_library_path()
    serve(library, host=args.host, port=args.port,
          ready=lambda url: print(f"LiverTumorSeg web: {url} (library {library}); Ctrl+C stops it", flush=True))
    return 0


if __name__ == "__main__":
    run()
