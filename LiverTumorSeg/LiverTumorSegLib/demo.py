"""`livertumorseg demo`: the whole job end to end on generated data.

Writes phantom cases, fine-tunes the shipped default model (or trains from scratch when none is
shipped) on the tumors of a few training cases, segments held-out cases, compares with the
classical threshold floor, and leaves files a user can open in 3D Slicer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .errors import InputError

TRAIN_CASES, TEST_CASES = 3, 3


def run_demo(out: Path, seed: int = 0, minutes: float = 3.0, quick: bool = False) -> dict:
    from . import io as lio
    from .baseline import fit_threshold_baseline
    from .inference import segment
    from .library import CaseLibrary, find_case_folders
    from .metrics import evaluate_case, summarize
    from .modelstore import default_model_path, load_model, save_model
    from .phantom import PhantomSettings, write_phantom_cases
    from .training import TrainSettings, train_model

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} is not empty; remove it or pass another --out folder")
    settings = PhantomSettings.small() if quick else None
    minutes = min(minutes, 0.5) if quick else minutes

    print(f"1/4 writing {TRAIN_CASES} training and {TEST_CASES} held-out phantom cases to {out}")
    library = CaseLibrary(out / "library")
    write_phantom_cases(library.cases_dir, TRAIN_CASES, seed, settings)
    test_dir = out / "held_out"
    write_phantom_cases(test_dir, TEST_CASES, seed + 1000, settings)
    train = [_load(folder) for folder in find_case_folders(library.root)]
    test = [_load(folder) for folder in find_case_folders(test_dir)]
    n_tumors = sum(info.tumor_count for info in library.list_cases())

    default = default_model_path()
    init = load_model(default) if (default / "model.pt").is_file() else None
    start = "fine-tuning the shipped default model" if init else "training from scratch"
    print(f"2/4 {start} on {n_tumors} tumors for up to {minutes:g} min")
    t0 = time.perf_counter()
    model = train_model(
        [(name, image, labels) for name, image, labels in train],
        TrainSettings(seed=seed, minutes=minutes),
        init=init,
        progress=_printer(),
    )
    train_s = time.perf_counter() - t0
    version = library.new_version_path()
    save_model(model, version)
    library.set_active(version.name)
    print(f"\n   model {version.name} written ({train_s:.0f} s)")

    print("3/4 segmenting held-out cases")
    baseline = fit_threshold_baseline([(img, lab.array > 0, lab.array == 2) for _, img, lab in train])
    net_rows, floor_rows, seconds = [], [], []
    first = None
    for name, image, labels in test:
        liver, truth = labels.array > 0, labels.array == 2
        t0 = time.perf_counter()
        result = segment(image, liver, model)
        seconds.append(time.perf_counter() - t0)
        net_rows.append(evaluate_case(result.tumor.array > 0, truth, image.spacing_zyx))
        floor_rows.append(evaluate_case(baseline.segment(image, liver), truth, image.spacing_zyx))
        print(f"   {name}: Dice {net_rows[-1]['dice']:.3f} (threshold floor {floor_rows[-1]['dice']:.3f}), {seconds[-1]:.1f} s")
        if first is None:
            first = (name, image, labels, result)

    print("4/4 writing results")
    name, image, labels, result = first
    lio.write_image(image, out / f"{name}_ct.nrrd")
    lio.write_segmentation(out / f"{name}_tumor.seg.nrrd", result.tumor, [lio.TUMOR_SEGMENT])
    png = write_overlay_png(out / f"{name}_overlay.png", image, labels.array == 2, result.tumor.array > 0)
    report = {
        "training": {"cases": len(train), "tumors": n_tumors, "seconds": round(train_s, 1), "init": str(default) if init else None},
        "mhpnet": summarize(net_rows),
        "threshold_floor": {**summarize(floor_rows), "threshold_hu": baseline.threshold_hu},
        "segment_seconds": [round(s, 2) for s in seconds],
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    net, floor = report["mhpnet"], report["threshold_floor"]
    print(
        f"\nMHP-Net: per-case Dice {_fmt(net['dice_mean'])}, global Dice {_fmt(net['dice_global'])}, "
        f"lesion F1 {_fmt(net['lesion_f1_mean'])}\n"
        f"Threshold floor: per-case Dice {_fmt(floor['dice_mean'])}, global Dice {_fmt(floor['dice_global'])}, "
        f"lesion F1 {_fmt(floor['lesion_f1_mean'])}\n"
        f"Open {out / (name + '_ct.nrrd')} and {out / (name + '_tumor.seg.nrrd')} in 3D Slicer; overlay: {png}"
    )
    return report


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _load(folder: Path):
    from .library import read_case_folder

    return (folder.name, *read_case_folder(folder))


def _printer():
    def report(info: dict) -> None:
        if info.get("stage") == "train" and info.get("step", 0) % 25 == 0:
            loss = info.get("loss")
            print(f"\r   step {info.get('step')}/{info.get('total') or '?'}  loss {loss if loss is None else round(loss, 3)}  "
                  f"{info.get('elapsed_s', 0):.0f} s", end="", flush=True)
    return report


def write_overlay_png(path: Path, image, truth: np.ndarray, pred: np.ndarray) -> Path:
    """One axial slice through the largest true tumor: CT, truth (green) and prediction (red) outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax(truth.sum(axis=(1, 2)))) if truth.any() else image.shape[0] // 2
    sy, sx = image.spacing_zyx[1], image.spacing_zyx[2]
    fig, ax = plt.subplots(figsize=(6, 6 * image.shape[1] * sy / (image.shape[2] * sx)), dpi=100)
    ax.imshow(np.clip(image.array[z], -160, 240), cmap="gray", aspect=sy / sx)
    if truth[z].any():
        ax.contour(truth[z], levels=[0.5], colors="lime", linewidths=1.2)
    if pred[z].any():
        ax.contour(pred[z], levels=[0.5], colors="red", linewidths=1.2)
    ax.set_title(f"slice {z}: truth (green), MHP-Net (red)")
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
