"""The `livertumorseg` command line: segment, train, evaluate, phantom, demo.

Bad input prints one line naming the problem and the fix, and exits with code 2; nothing is
written half-way (every output is written atomically, and existing outputs are not replaced
unless --overwrite is given).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from .errors import Cancelled, InputError

EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130
LABEL_SUFFIXES = (".seg.nrrd", ".nrrd", ".nii.gz", ".nii", ".mha", ".mhd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livertumorseg",
        description="Liver tumor segmentation in CT with MHP-Net, trained from a handful of cases.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment liver tumors in a CT")
    p.add_argument("image", help="CT: .nrrd, .nii(.gz), .mha/.mhd or a DICOM series folder")
    p.add_argument("--liver", help="liver mask (any nonzero voxel is liver; LiTS labels work as is)")
    p.add_argument("--out", required=True, help="output: .seg.nrrd (Slicer segmentation) or .nrrd/.nii.gz labelmap (1 = tumor)")
    p.add_argument("--model", help="model folder or model.pt (default: the shipped default model)")
    p.add_argument("--prob", help="also write the tumor probability map here (.nrrd/.nii.gz)")
    p.add_argument("--threshold", type=float, help="decision threshold in (0, 1) (default: the model's own)")
    p.add_argument("--lesions", help="also write the lesion table here (.csv)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: one per core)")
    p.add_argument("--progress-json", action="store_true", help="print progress as JSON lines (for the Slicer module)")

    p = sub.add_parser("train", help="train (or fine-tune) a model on a folder of cases")
    p.add_argument("cases", help="case library, or a folder of case folders (image.nrrd + label.nrrd)")
    p.add_argument("--out", required=True, help="new model folder (must not exist: versions are never overwritten)")
    p.add_argument("--init", help="model to fine-tune from (folder or model.pt); earlier cases are replayed")
    p.add_argument("--minutes", type=float, default=5.0,
                   help="time cap in minutes (default 5): training stops early only if the planned steps take longer")
    p.add_argument("--max-steps", type=int, help="planned optimisation steps (default %d); model.json says how many ran" % _default_steps())
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--arch", choices=("mhpnet", "unet3d"), default="mhpnet", help="network (default mhpnet; unet3d is the plain baseline)")
    p.add_argument("--no-hessian", action="store_true", help="train without the Hessian channels (ablation)")
    p.add_argument("--synthetic-copies", type=int, default=None,
                   help="synthetic variants per training case: its tumors pasted elsewhere plus synthesised ones "
                        "(default 1; 0 trains on the given cases only)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: one per core; Slicer passes one less, "
                   "so the application stays responsive)")
    p.add_argument("--progress-json", action="store_true", help="print progress as JSON lines (for the Slicer module)")

    p = sub.add_parser("evaluate", help="compare a predicted tumor mask with the truth; prints JSON")
    p.add_argument("pred", help="predicted labelmap or .seg.nrrd")
    p.add_argument("truth", help="truth labelmap or .seg.nrrd (LiTS labels: 2 = tumor)")
    p.add_argument("--liver", help="restrict both masks to this liver mask")

    p = sub.add_parser("phantom", help="write synthetic abdominal CT cases with known tumors")
    p.add_argument("out_dir", help="folder to write case folders into")
    p.add_argument("--cases", type=int, default=5, help="number of cases (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--small", action="store_true", help="small, fast phantoms (for tests and quick looks)")

    p = sub.add_parser("demo", help="end to end: phantoms -> train on a few tumors -> segment held-out cases")
    p.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=5.0, help="Retrain's time cap in minutes (default 5)")
    p.add_argument("--quick", action="store_true", help="tiny version (about a minute) for tests")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    commands = {"segment": cmd_segment, "train": cmd_train, "evaluate": cmd_evaluate, "phantom": cmd_phantom, "demo": cmd_demo}
    try:
        return commands[args.command](args) or 0
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Cancelled, KeyboardInterrupt):
        print("cancelled; nothing was written", file=sys.stderr)
        return EXIT_CANCELLED


# ---- helpers ---------------------------------------------------------------------------------
def check_output(path: str | None, overwrite: bool, suffixes=LABEL_SUFFIXES) -> Path | None:
    """Refuse outputs that would replace a user's file or that no reader would recognise."""
    if path is None:
        return None
    out = Path(path)
    if not str(out).lower().endswith(tuple(suffixes)):
        raise InputError(f"{out}: unknown output type; use one of {', '.join(suffixes)}")
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; choose another name or pass --overwrite")
    return out


def load_model_arg(path: str | None):
    from .modelstore import default_model_path, load_model

    return load_model(Path(path) if path else default_model_path())


def tumor_mask(labels) -> "np.ndarray":  # noqa: F821
    """Tumor voxels of a labelmap: label 2 when present (LiTS), otherwise any nonzero voxel."""
    import numpy as np

    values = labels.array
    return values == 2 if np.any(values == 2) else values > 0


def set_threads(threads: int | None) -> None:
    """--threads: torch's CPU threads (None: torch's default, one per core)."""
    if threads is None:
        return
    if threads < 1:
        raise InputError(f"--threads {threads} must be at least 1")
    import torch

    torch.set_num_threads(threads)


def make_progress_printer(as_json: bool):
    """A progress callback: JSON lines for the Slicer module, a tqdm bar for people."""
    if as_json:
        def report(info: dict) -> None:
            print(json.dumps(info), flush=True)
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


# ---- commands ---------------------------------------------------------------------------------
def cmd_segment(args) -> int:
    from . import io as lio
    from .inference import segment
    from .lesions import write_lesion_csv

    out = check_output(args.out, args.overwrite)
    prob_out = check_output(args.prob, args.overwrite, (".nrrd", ".nii.gz", ".nii", ".mha"))
    csv_out = check_output(args.lesions, args.overwrite, (".csv",))
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise InputError(f"--threshold {args.threshold} is outside (0, 1); use e.g. 0.5")
    image = lio.read_image(args.image)
    if args.liver:
        liver = lio.read_liver_mask(args.liver, reference=image)
    else:
        warnings.warn("no --liver mask given: segmenting the whole volume (slower, more false positives)")
        liver = None
    set_threads(args.threads)
    model = load_model_arg(args.model)
    report, close = make_progress_printer(args.progress_json) if args.progress_json else (None, lambda: None)
    try:
        result = segment(image, liver, model, threshold=args.threshold, progress=report)
    finally:
        close()
    write_tumor_output(out, result.tumor)
    if prob_out:
        lio.write_image(result.probability, prob_out)
    if csv_out:
        write_lesion_csv(result.lesions, csv_out)
    total_ml = sum(lesion.volume_ml for lesion in result.lesions)
    print(f"{len(result.lesions)} lesion(s), {total_ml:.1f} mL in total, threshold {result.threshold:.2f} -> {out}")
    return 0


def write_tumor_output(out: Path, tumor) -> None:
    """`.seg.nrrd` -> Slicer segmentation with a 'Liver tumor' segment; else a uint8 labelmap."""
    from . import io as lio

    if str(out).lower().endswith(".seg.nrrd"):
        lio.write_segmentation(out, tumor, [lio.TUMOR_SEGMENT])
    else:
        lio.write_labelmap(tumor, out)


def _default_steps() -> int:
    from .training import TrainSettings

    return TrainSettings.__dataclass_fields__["max_steps"].default


def cmd_train(args) -> int:
    from .library import find_case_folders, read_case_folder
    from .modelstore import load_model, save_model
    from .training import TrainSettings, train_model

    out = Path(args.out)
    if out.exists():
        raise InputError(f"{out} already exists; model versions are never overwritten, choose a new folder")
    if args.minutes <= 0:
        raise InputError(f"--minutes {args.minutes} must be positive")
    set_threads(args.threads)
    folders = find_case_folders(args.cases)
    cases = [(folder.name, *read_case_folder(folder)) for folder in folders]
    init = load_model(Path(args.init)) if args.init else None
    budget = {"max_steps": args.max_steps} if args.max_steps else {}
    hessian = {"use_hessian": False} if args.no_hessian else {}
    synthetic = {} if args.synthetic_copies is None else {"synthetic_copies": args.synthetic_copies}
    settings = TrainSettings(seed=args.seed, minutes=args.minutes, arch=args.arch, **budget, **hessian, **synthetic)
    report, close = make_progress_printer(args.progress_json)
    try:
        model = train_model(cases, settings, init=init, progress=report)
    finally:
        close()
    save_model(model, out)
    validation = model.meta.get("validation", {})
    if args.progress_json:
        print(json.dumps({"stage": "done", "model": str(out), "validation": validation}), flush=True)
    else:
        dice = validation.get("dice")
        print(f"model written to {out}" + (f" (validation Dice {dice:.3f})" if dice is not None else "")
              + f", {model.meta['steps']} of {model.meta['steps_planned']} planned steps")
    check = model.meta.get("parent_check") or {}
    if check.get("worse_than_parent"):
        print(f"warning: the new model scores more than {check['tolerance']} Dice below its parent {check['parent']} on "
              f"{' and '.join(check['worse_on'])}; keep using the parent unless your own cases say otherwise",
              file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    from . import io as lio
    from .metrics import evaluate_case

    truth = lio.read_labels(args.truth)
    pred = lio.read_labels(args.pred, reference=truth)
    pred_mask, truth_mask = tumor_mask(pred), tumor_mask(truth)
    if args.liver:
        liver = lio.read_liver_mask(args.liver, reference=truth)
        pred_mask, truth_mask = pred_mask & liver, truth_mask & liver
    print(json.dumps(evaluate_case(pred_mask, truth_mask, truth.spacing_zyx), indent=2))
    return 0


def cmd_phantom(args) -> int:
    from .phantom import PhantomSettings, write_phantom_cases

    if args.cases < 1:
        raise InputError(f"--cases {args.cases}: give at least 1")
    settings = PhantomSettings.small() if args.small else None
    folders = write_phantom_cases(args.out_dir, args.cases, args.seed, settings)
    print(f"{len(folders)} case(s) written to {args.out_dir}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), seed=args.seed, minutes=args.minutes, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
