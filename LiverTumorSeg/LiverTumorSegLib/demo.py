"""`livertumorseg demo`: a radiologist's story, end to end.

On the real case when it is there (`--real-case FOLDER`, which `make demo` fills with `pip
download`; evaluation/real_case.py): half A of a real contrast CT is the radiologist's annotated
case, half B what they segment next. Without it, on generated phantoms (training and held-out
cases), and the console and metrics.json say so. The shipped default model segments the held-out
data; then Retrain fine-tunes it on the annotated tumors (as the Slicer module's Retrain does,
rehearsal and intensity floor included); the new model segments the same data. Dice and tumors
found by size (5-10, 10-20, > 20 mm) before and after, next to the classical threshold floor
fitted on the same annotated tumors, go to metrics.json and the console. The overlay PNG shows
the first held-out case (chosen before any result): the slice with the most tumor and a slice
through its smallest tumor, found or missed. A CT and the tumor segmentation are left for 3D Slicer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .errors import InputError

TRAIN_CASES, TEST_CASES = 3, 4


def run_demo(out: Path, seed: int = 0, minutes: float = 5.0, quick: bool = False, real_case: Path | None = None) -> dict:
    from .storage import images
    from .core.floor import fit_threshold_baseline
    from .storage.library import CaseLibrary
    from .storage.modelstore import default_model_path, load_model, parent_check_warning, save_model
    from .training.train import TrainSettings, train_model

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} is not empty; remove it or pass another --out folder")
    train_settings = TrainSettings(seed=seed, minutes=min(minutes, 0.5), max_steps=8, rehearsal_cases=1, check_cases=1) \
        if quick else TrainSettings(seed=seed, minutes=minutes)

    library = CaseLibrary(out / "library")
    train, test, data = _real_case_data(library, real_case) if real_case is not None else (None, None, None)
    if train is None:
        if data:
            print(f"1/5 {data}")
        train, test = _phantom_data(library, out, seed, quick)
        data = f"phantoms: {TRAIN_CASES} training and {TEST_CASES} held-out cases" + (f" ({data})" if data else "")
    n_tumors = sum(info.tumor_count for info in library.list_cases())
    floor = fit_threshold_baseline([(img, lab.array > 0, lab.array == 2) for _, img, lab in train])

    default = default_model_path()
    init = load_model(default) if (default / "model.pt").is_file() else None
    stages = {}
    if init is not None:
        print("2/5 the shipped default model on the held-out cases")
        stages["default_model"] = _segment_all(init, test)
    else:
        print("2/5 no shipped default model: training from scratch")
    print(f"3/5 Retrain: {'fine-tuning the default model' if init else 'training'} on {n_tumors} tumors "
          f"({train_settings.max_steps} steps planned, at most {train_settings.minutes:g} min)")
    t0 = time.perf_counter()
    model = train_model([(name, image, labels) for name, image, labels in train], train_settings, init=init,
                        progress=_printer())
    train_s = time.perf_counter() - t0
    version = library.new_version_path()
    save_model(model, version)
    library.set_active(version.name)
    print(f"\n   model {version.name} written ({train_s:.0f} s, {model.meta['steps']} steps)")

    print("4/5 the retrained model and the threshold floor on the same held-out cases")
    stages["retrained"] = _segment_all(model, test)
    stages["threshold_floor"] = _segment_all(floor, test)

    print("5/5 writing results")
    name, image, labels = test[0]
    after = stages["retrained"]["masks"][0]
    before = stages["default_model"]["masks"][0] if "default_model" in stages else None
    images.write_image(image, out / f"{name}_ct.nrrd")
    images.write_segmentation(out / f"{name}_tumor.seg.nrrd", image.with_array(after.view(np.uint8)), [images.TUMOR_SEGMENT])
    png = write_overlay_png(out / f"{name}_overlay.png", image, labels.array == 2, after, before)
    report = {
        "data": data,
        "training": {"cases": len(train), "tumors": n_tumors, "seconds": round(train_s, 1), "steps": model.meta["steps"],
                     "init": str(default) if init else None, "parent_check": model.meta.get("parent_check")},
        "held_out_cases": [c[0] for c in test],
        **{stage: result["summary"] for stage, result in stages.items()},
        "threshold_floor_hu": floor.threshold_hu,
        "segment_seconds": stages["retrained"]["seconds"],
        "overlay_case": name,
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    print(story_table(report))
    check = model.meta.get("parent_check") or {}
    warning = parent_check_warning(model.meta)
    if warning:
        print(f"The new model {version.name} is {warning} (Slicer marks it 'worse than parent'); keep the default model.")
    elif check:
        print(f"The new model {version.name} is not worse than the default model on the check set or your validation case.")
    print(f"Open {out / (name + '_ct.nrrd')} and {out / (name + '_tumor.seg.nrrd')} in 3D Slicer; overlay: {png}")
    return report


def _segment_all(predictor, cases) -> dict:
    """Masks, summary (metrics.summarize) and seconds of a model (or the threshold floor) over cases."""
    from .core.inference import segment
    from .evaluation.metrics import evaluate_case, summarize

    masks, rows, seconds = [], [], []
    for _, image, labels in cases:
        liver, truth = labels.array > 0, labels.array == 2
        t0 = time.perf_counter()
        if hasattr(predictor, "network"):
            mask = segment(image, liver, predictor).tumor.array > 0
        else:
            mask = predictor.segment(image, liver)
        seconds.append(round(time.perf_counter() - t0, 2))
        masks.append(mask)
        rows.append(evaluate_case(mask, truth, image.spacing_zyx))
    return {"masks": masks, "summary": summarize(rows), "seconds": seconds}


def _real_case_data(library, folder: Path):
    """(train, test, what) from the real case in `folder`: half A into the library, half B held
    out; (None, None, why not) when it is not there."""
    from .evaluation.real_case import ASSUMED_SPACING_MM, PACKAGE, find_real_case, read_real_case, split_halves
    from .storage.library import find_case_folders

    try:
        halves = split_halves(*read_real_case(*find_real_case(folder)))
    except InputError as error:
        return None, None, f"the real case is not available ({error}): the demo runs on phantoms instead"
    print(f"1/5 the real case (LiTS 117 from {PACKAGE}, {ASSUMED_SPACING_MM} mm assumed): half A into the case "
          f"library as your annotated case, half B held out")
    library.add_case(*halves["A"], source=f"LiTS 117, half A ({PACKAGE}; CC BY-NC-SA 4.0)", case_id="lits117_half_a")
    train = [_load(case_dir) for case_dir in find_case_folders(library.root)]
    return train, [("lits117_B", *halves["B"])], f"real case: LiTS 117 ({PACKAGE}), Retrain on half A, scored on half B"


def _phantom_data(library, out: Path, seed: int, quick: bool):
    """(train, test): phantom cases written into the library and into out/held_out."""
    from .data.phantom import PhantomSettings, write_phantom_cases
    from .storage.library import find_case_folders

    settings = PhantomSettings.small() if quick else None
    print(f"1/5 writing {TRAIN_CASES} training and {TEST_CASES} held-out phantom cases to {out}")
    write_phantom_cases(library.cases_dir, TRAIN_CASES, seed, settings)
    test_dir = out / "held_out"
    write_phantom_cases(test_dir, TEST_CASES, seed + 1000, settings)
    return [_load(folder) for folder in find_case_folders(library.root)], [_load(folder) for folder in find_case_folders(test_dir)]


STAGE_NAMES = {"default_model": "default model", "retrained": "after Retrain", "threshold_floor": "threshold floor"}


def story_table(report: dict) -> str:
    """Before / after / floor: per-case Dice and tumors found (and lesion precision) by size."""
    from .evaluation.metrics import SIZE_BINS

    bins = [b for b in SIZE_BINS if any(report[s]["lesions_by_size"][b][1] for s in STAGE_NAMES if s in report)]
    header = "| | per-case Dice | " + " | ".join(f"found {b}" for b in bins) + " | lesion precision |"
    lines = [header, "|" + "---|" * (len(bins) + 3)]
    for stage, label in STAGE_NAMES.items():
        if stage not in report:
            continue
        s = report[stage]
        found = [f"{s['lesions_by_size'][b][0]} / {s['lesions_by_size'][b][1]}" for b in bins]
        lines.append(f"| {label} | {_fmt(s['dice_mean'])} | " + " | ".join(found) + f" | {_fmt(s['lesion_precision_pooled'])} |")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _load(folder: Path):
    from .storage.library import read_case_folder

    return (folder.name, *read_case_folder(folder))


def _printer():
    def report(info: dict) -> None:
        if info.get("stage") == "train" and info.get("step", 0) % 25 == 0:
            loss = info.get("loss")
            print(f"\r   step {info.get('step')}/{info.get('total') or '?'}  loss {loss if loss is None else round(loss, 3)}  "
                  f"{info.get('elapsed_s', 0):.0f} s", end="", flush=True)
    return report


def write_overlay_png(path: Path, image, truth: np.ndarray, pred: np.ndarray, before: np.ndarray | None = None) -> Path:
    """Two axial slices of one case: the one with the most tumor, and one through the centre of
    its smallest tumor, whose title says whether it was found. CT, truth (green), prediction
    after Retrain (red) and, when given, the default model's (yellow, dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .core.lesions import equivalent_diameter_mm, label_lesions

    z_most = int(np.argmax(truth.sum(axis=(1, 2)))) if truth.any() else image.shape[0] // 2
    panels = [(z_most, f"slice {z_most}: most tumor")]
    components, n = label_lesions(truth)
    if n:
        sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
        smallest = int(np.argmin(sizes)) + 1
        blob = components == smallest
        z_small = int(round(float(np.mean(np.nonzero(blob)[0]))))
        d = equivalent_diameter_mm(sizes[smallest - 1] * image.voxel_volume_mm3)
        verdict = "found" if (pred & blob).any() else "MISSED"
        if before is not None:
            verdict += f" (default model: {'found' if (before & blob).any() else 'missed'})"
        title = f"smallest tumor, {d:.0f} mm: {verdict}"
        if z_small == z_most:  # one slice shows both
            panels = [(z_most, f"slice {z_most}: most tumor; {title}")]
        else:
            panels.append((z_small, f"slice {z_small}: {title}"))
    sy, sx = image.spacing_zyx[1], image.spacing_zyx[2]
    height = 5.2 * image.shape[1] * sy / (image.shape[2] * sx)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), height + 0.6), dpi=100, squeeze=False)
    for ax, (z, title) in zip(axes[0], panels):
        ax.imshow(np.clip(image.array[z], -160, 240), cmap="gray", aspect=sy / sx)
        for mask, color, style in ((truth, "lime", "solid"), (before, "yellow", "dashed"), (pred, "red", "solid")):
            if mask is not None and mask[z].any():
                ax.contour(mask[z], levels=[0.5], colors=color, linewidths=1.1, linestyles=style)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle("truth (green), after Retrain (red)" + (", default model (yellow, dashed)" if before is not None else ""),
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
