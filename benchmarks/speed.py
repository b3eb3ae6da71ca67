"""Speed benchmark: `segment` wall time per stage and peak memory on 512 x 512 x N CTs, and
training time to a fixed validation Dice, for MHP-Net and the 3D U-Net baseline in the same run.

Volumes: one full-size phantom at 0.8 x 0.8 x 2.5 mm (512 x 512, 88 slices, with its liver mask)
extended in z by mirror-tiling the image (the liver mask stays the phantom's own, as in a long
scan where the liver is one part of the body), written as .nrrd with images.write_image.
Per (size, model) one fresh subprocess (so ru_maxrss is that size's peak): one warm-up, then
`repeats` timed runs of read (images.read_image + images.read_liver_mask) -> segment -> write
(images.write_segmentation .seg.nrrd); medians per stage (SegmentResult.timings plus our read/write).
Training time to a fixed validation Dice: runs from scratch with max_steps = chunk_steps x 1, 2,
4, ... (training is deterministic, so each is the start of the longer one); the first run whose
validation Dice reaches the target gives the time (its own wall time, preparation included).
Timing rows (cached apart from training) record which model they were measured with.

Resumable: finished pieces are cached under benchmarks/work/speed/ (training and timing apart). Writes
(atomically) <out>/speed.json and <out>/speed.png.

    python benchmarks/speed.py              # sizes 100 200 400 600, 5 repeats (make bench)
    python benchmarks/speed.py --quick      # a couple of minutes
    python benchmarks/speed.py --tiny --out /tmp/x   # seconds, for the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import benchcommon as bc

ARCHS = ("mhpnet", "unet3d")
STAGES = ("read_s", "crop_resample_s", "normalize_s", "hessian_s", "network_s", "to_input_grid_s", "spots_s", "threshold_s",
          "lesions_s", "write_s")
PRESETS = {
    "full": dict(matrix=512, sizes=[100, 200, 400, 600], repeats=5, warmup=1, large_repeats=None, train_phantom="medium",
                 train_tumors=7, target_dice=0.8, chunk_steps=20, max_chunks=6, patch_size=None),
    "quick": dict(matrix=512, sizes=[100], repeats=2, warmup=1, large_repeats=None, train_phantom="small",
                  train_tumors=4, target_dice=0.3, chunk_steps=6, max_chunks=2, patch_size=32),
    "tiny": dict(matrix=128, sizes=[16], repeats=1, warmup=0, large_repeats=None, train_phantom="small",
                 train_tumors=2, target_dice=0.05, chunk_steps=2, max_chunks=1, patch_size=16),
}
SPACING_XYZ = (0.8, 0.8, 2.5)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--tiny", action="store_true")
    p.add_argument("--sizes", type=int, nargs="+", help="slice counts (default 100 200 400 600)")
    p.add_argument("--repeats", type=int, help="timed runs per size after one warm-up (median reported)")
    p.add_argument("--large-repeats", type=int, help="timed runs for sizes > 200 (default: --repeats)")
    p.add_argument("--target-dice", type=float, help="validation Dice the training-time measurement stops at")
    p.add_argument("--chunk-steps", type=int)
    p.add_argument("--max-chunks", type=int)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's: one per core)")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results (results/<preset> for --quick/--tiny)")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- volumes ----------------------------------------------------------------------------------

def make_volume(n_slices: int, matrix: int, folder: Path) -> tuple[Path, Path]:
    """image_<n>.nrrd (int16 HU) and liver_<n>.nrrd (uint8) on a matrix x matrix x n grid."""
    from LiverTumorSegLib.storage import images
    from LiverTumorSegLib.data.phantom import PhantomSettings, make_phantom
    from LiverTumorSegLib.volume import Volume

    image_path, liver_path = folder / f"image_{matrix}_{n_slices}.nrrd", folder / f"liver_{matrix}_{n_slices}.nrrd"
    if image_path.exists() and liver_path.exists():
        return image_path, liver_path
    inplane = SPACING_XYZ[0] * 512 / matrix
    settings = PhantomSettings.full(matrix=matrix, inplane_mm=(inplane, inplane), slice_mm=(SPACING_XYZ[2],) * 2,
                                    z_extent_mm=(220.0, 220.0), max_slices=128)
    case = make_phantom(42, settings)
    img, liver = case.image.array, case.labels.array > 0
    n0 = img.shape[0]
    if n_slices >= n0:
        before = (n_slices - n0) // 2
        after = n_slices - n0 - before
        img = np.pad(img, ((before, after), (0, 0), (0, 0)), mode="symmetric")
        liver = np.pad(liver, ((before, after), (0, 0), (0, 0)))
    else:
        z0 = max(0, int(np.flatnonzero(liver.any(axis=(1, 2))).mean()) - n_slices // 2)
        z0 = min(z0, n0 - n_slices)
        img, liver = img[z0 : z0 + n_slices], liver[z0 : z0 + n_slices]
    origin = case.image.origin
    images.write_image(Volume(img.astype(np.int16), case.image.spacing, origin), image_path)
    images.write_labelmap(Volume(liver.astype(np.uint8), case.image.spacing, origin), liver_path)
    return image_path, liver_path


# ---- training time to a fixed validation Dice ---------------------------------------------------

def train_to_target(arch: str, config: dict, models_dir: Path, seed: int = 0) -> dict:
    """Training time to a validation Dice target: runs from scratch with max_steps doubling
    (chunk_steps, 2x, 4x, ...; max_chunks runs). Training is deterministic for a seed and has no
    schedule tied to max_steps, so the N-step run is exactly the first N steps of a longer run and
    its own wall time is the time to reach its Dice. The last model trained is saved for timing."""
    import small_data
    from LiverTumorSegLib.storage.modelstore import save_model
    from LiverTumorSegLib.training.train import TrainSettings, train_model


    # The small-data benchmark's seed-0 training set with exactly train_tumors tumors (3 cases for 7).
    chosen = small_data.training_sets(0, {"ks": [config["train_tumors"]], "phantom": config["train_phantom"]})
    cases = [(cid, img, lab) for cid, img, lab, _ in chosen[config["train_tumors"]]]
    extra = {"patch_size": config["patch_size"]} if config.get("patch_size") else {}
    history, model, reached, cost = [], None, None, 0.0
    for i in range(config["max_chunks"]):
        steps = config["chunk_steps"] * 2**i
        t = time.perf_counter()
        model = train_model(cases, TrainSettings(seed=seed, arch=arch, minutes=600.0, max_steps=steps, **extra))
        wall = time.perf_counter() - t
        cost += wall
        dice = model.meta.get("validation", {}).get("dice")
        history.append({"steps": int(model.meta.get("steps") or 0), "wall_s": round(wall, 2),
                        "train_seconds": model.meta.get("train_seconds"), "validation_dice": dice})
        bc.log(f"  {arch}: {steps} steps from scratch, {wall:.0f} s, validation Dice {dice}")
        if dice is not None and dice >= config["target_dice"]:
            reached = history[-1]
            break
    folder = models_dir / arch
    if not folder.exists():
        save_model(model, folder)
    return {
        "arch": arch, "target_dice": config["target_dice"], "reached": reached is not None,
        "seconds_to_target": reached["wall_s"] if reached else None, "steps_to_target": reached["steps"] if reached else None,
        "final_validation_dice": history[-1]["validation_dice"], "wall_s": history[-1]["wall_s"], "history": history,
        "measurement_cost_s": round(cost, 1), "method": "from scratch, max_steps doubling",
        "validation_mode": model.meta.get("validation", {}).get("mode"), "n_parameters": model.meta.get("n_parameters"),
        "training_cases": [c[0] for c in cases],
    }


# ---- timing worker (fresh process per size and model) -------------------------------------------

def peak_rss_mib() -> float:
    """This process's peak resident memory (MiB). VmHWM belongs to the process's own address space;
    ru_maxrss would also count the parent's size at fork time (Linux carries it across exec)."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(spec: dict) -> dict:
    """Runs in a fresh subprocess: warm-up + repeats of read -> segment -> write; peak RSS."""
    import tempfile

    threads = bc.set_threads(spec.get("threads"))
    from LiverTumorSegLib.storage import images
    from LiverTumorSegLib.core.inference import segment
    from LiverTumorSegLib.storage.modelstore import load_model

    model = load_model(spec["model"])
    rss_before_mib = peak_rss_mib()
    runs = []
    warmup = int(spec.get("warmup", 1))
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(warmup + spec["repeats"]):
            t0 = time.perf_counter()
            image = images.read_image(spec["image"])
            liver = images.read_liver_mask(spec["liver"], image)
            t1 = time.perf_counter()
            result = segment(image, liver, model)
            t2 = time.perf_counter()
            images.write_segmentation(Path(tmp) / f"tumor{i}.seg.nrrd", result.tumor, [images.TUMOR_SEGMENT])
            t3 = time.perf_counter()
            row = {k: float(v) for k, v in result.timings.items()}
            row.update(read_s=t1 - t0, segment_s=t2 - t1, write_s=t3 - t2, total_s=t3 - t0, n_lesions=len(result.lesions))
            runs.append(row)
            del image, liver, result
    timed = runs[warmup:]
    medians = {k: float(np.median([r[k] for r in timed])) for k in timed[0] if k != "n_lesions"}
    return {
        "shape_zyx": spec["shape"], "arch": spec["arch"], "threads": threads, "repeats": spec["repeats"],
        "warmup_runs": warmup, "warmup_total_s": runs[0]["total_s"] if warmup else None, "median": medians,
        "totals_s": [r["total_s"] for r in timed], "segment_s": [r["segment_s"] for r in timed],
        "n_lesions": runs[-1]["n_lesions"],
        "peak_rss_mib": peak_rss_mib(),
        "rss_after_model_load_mib": rss_before_mib,
    }


def run_worker(spec: dict, result_path: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    bc.write_json(result_path, result)
    return result


def time_command_line(image: Path, liver: Path, repeats: int, warmup: int, threads: int | None) -> dict:
    """`livertumorseg segment` end to end, as a user runs it (issue 8's 6 s target): a fresh
    process per run, the shipped default model, interpreter start, imports, reading, writing the
    .seg.nrrd and exit included; wall time from here, CPU and peak memory from the OS's account
    of that one finished child (wait4: RUSAGE_CHILDREN would give the largest child so far, here
    a timing worker)."""
    import tempfile

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "LiverTumorSegLib", "segment", str(image), "--liver", str(liver),
               "--out", str(Path(tmp) / "tumor.seg.nrrd"), "--overwrite"]
        if threads:
            cmd += ["--threads", str(threads)]
        for _ in range(warmup + repeats):
            with open(Path(tmp) / "stderr.txt", "w+") as err:
                t = time.perf_counter()
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
                _, status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - t
                proc.returncode = os.waitstatus_to_exitcode(status)
                if proc.returncode != 0:
                    err.seek(0)
                    raise RuntimeError(f"livertumorseg segment failed ({proc.returncode}):\n{err.read()[-3000:]}")
            runs.append({"wall_s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
                         "peak_rss_mib": round(usage.ru_maxrss / 1024.0, 1)})
    timed = runs[warmup:]
    return {
        "command": "livertumorseg segment IMAGE --liver LIVER --out OUT.seg.nrrd (default model"
                   + (f", --threads {threads})" if threads else ", default threads)"),
        "repeats": repeats, "warmup_runs": warmup, "runs": timed,
        **{f"median_{k}": float(np.median([r[k] for r in timed])) for k in ("wall_s", "cpu_s", "peak_rss_mib")},
    }


# ---- report -----------------------------------------------------------------------------------

def plot(result: dict, path: Path) -> Path:
    plt = bc.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    timing = result["segment"]
    colors = {"mhpnet": "C0", "unet3d": "C3"}
    for arch in ARCHS:
        rows = [r for r in timing if r["arch"] == arch]
        if not rows:
            continue
        z = [r["shape_zyx"][0] for r in rows]
        med = [r["median"]["total_s"] for r in rows]
        lo = [min(r["totals_s"]) for r in rows]
        hi = [max(r["totals_s"]) for r in rows]
        axes[0].errorbar(z, med, yerr=[np.subtract(med, lo), np.subtract(hi, med)], marker="o", capsize=3,
                         color=colors[arch], label=f"{arch}: read + segment + write")
        axes[0].plot(z, [r["median"]["segment_s"] for r in rows], linestyle="--", color=colors[arch],
                     label=f"{arch}: segment only")
        axes[2].plot(z, [r["peak_rss_mib"] for r in rows], marker="o", color=colors[arch], label=arch)
    axes[0].axhline(10, color="0.5", linestyle=":", label="10 s target (200 slices)")
    matrix, spacing = result["volume"]["matrix"], result["volume"]["spacing_xyz_mm"]
    axes[0].set_xlabel(f"slices ({matrix} x {matrix} x N, {spacing[0]:g} x {spacing[1]:g} x {spacing[2]:g} mm)")
    axes[0].set_ylabel("wall time, median (s); bars: min-max")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    rows = [r for r in timing if r["arch"] == "mhpnet"] or timing
    labels = [str(r["shape_zyx"][0]) for r in rows]
    bottom = np.zeros(len(rows))
    for stage in STAGES:
        values = np.asarray([r["median"].get(stage, 0.0) for r in rows])
        axes[1].bar(labels, values, bottom=bottom, label=stage[:-2])
        bottom += values
    axes[1].set_title(f"{rows[0]['arch'] if rows else ''} stages (median)")
    axes[1].set_xlabel("slices")
    axes[1].set_ylabel("s")
    axes[1].legend(fontsize=7)
    axes[2].set_xlabel("slices")
    axes[2].set_ylabel("peak resident memory of the process (MiB)")
    axes[2].set_ylim(bottom=0)
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(f"segment speed on {m['cpu_count']} CPU cores ({m['cpu_model']}), torch threads {result['threads']}",
                 fontsize=9)
    fig.tight_layout()
    bc.save_figure(fig, path)
    plt.close(fig)
    return path


def ratios(segment_rows: list, training: dict) -> dict:
    """U-Net / MHP-Net for each size's median total, segment and network time and peak memory."""
    out = {}
    by = {(r["arch"], r["shape_zyx"][0]): r for r in segment_rows}
    for (arch, n), r in by.items():
        other = by.get(("unet3d", n))
        if arch != "mhpnet" or other is None:
            continue
        out[str(n)] = {
            "total_s": other["median"]["total_s"] / r["median"]["total_s"],
            "segment_s": other["median"]["segment_s"] / r["median"]["segment_s"],
            "network_s": other["median"]["network_s"] / max(r["median"]["network_s"], 1e-9),
            "peak_rss": other["peak_rss_mib"] / r["peak_rss_mib"],
        }
    t_m, t_u = training.get("mhpnet", {}), training.get("unet3d", {})
    train_ratio = None
    if t_m.get("seconds_to_target") and t_u.get("seconds_to_target"):
        train_ratio = t_u["seconds_to_target"] / t_m["seconds_to_target"]
    return {"unet3d_over_mhpnet_by_slices": out, "training_seconds_to_target": train_ratio}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(bc.finite_or_none(worker(json.loads(args.worker)))))
        return {}
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    args.out = args.out or bc.results_dir(preset)
    config = dict(PRESETS[preset])
    for key in ("sizes", "repeats", "large_repeats", "target_dice", "chunk_steps", "max_chunks"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    config["threads"] = args.threads
    threads = bc.set_threads(args.threads)
    key_config = {k: config[k] for k in ("train_phantom", "train_tumors", "target_dice", "chunk_steps", "max_chunks",
                                           "patch_size", "threads")}
    root = args.work or bc.WORK_DIR / "speed"
    work = root / f"{preset}-train-{bc.config_key(key_config)}"
    timing_dir = root / f"{preset}-timing-{bc.config_key({k: config[k] for k in ('matrix', 'warmup', 'threads')})}"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    bc.log(f"speed: preset {preset}, cache {work}, torch threads {threads}")
    machine_before = bc.machine()

    training = {}
    for arch in ARCHS:
        path = work / f"train_{arch}.json"
        if path.exists() and (work / "models" / arch).exists():
            training[arch] = bc.read_json(path)
            continue
        bc.log(f"training {arch} to validation Dice {config['target_dice']}")
        training[arch] = train_to_target(arch, config, work / "models")
        bc.write_json(path, training[arch])

    segment_rows = []
    for n in config["sizes"]:
        image_path, liver_path = make_volume(n, config["matrix"], root / "volumes")
        repeats = config["repeats"] if n <= 200 or not config["large_repeats"] else config["large_repeats"]
        for arch in ARCHS:
            path = timing_dir / f"segment_{arch}_{config['matrix']}x{n}_r{repeats}.json"
            if path.exists():
                segment_rows.append(bc.read_json(path))
                continue
            spec = {"image": str(image_path), "liver": str(liver_path), "model": str(work / "models" / arch),
                    "arch": arch, "repeats": repeats, "warmup": config["warmup"], "threads": args.threads,
                    "shape": [n, config["matrix"], config["matrix"]]}
            row = run_worker(spec, path)
            row["model_info"] = {k: training[arch].get(k) for k in ("history", "method")}
            bc.write_json(path, row)
            segment_rows.append(row)
            m = row["median"]
            bc.log(f"{arch} {config['matrix']}x{config['matrix']}x{n}: total {m['total_s']:.2f} s (read {m['read_s']:.2f}, "
                   f"hessian {m['hessian_s']:.2f}, network {m['network_s']:.2f}, write {m['write_s']:.2f}), "
                   f"peak {row['peak_rss_mib']:.0f} MiB")

    cli_slices = 200 if 200 in config["sizes"] else config["sizes"][0]
    image_path, liver_path = make_volume(cli_slices, config["matrix"], root / "volumes")
    cli_path = timing_dir / f"command_line_{config['matrix']}x{cli_slices}_r{config['repeats']}.json"
    if cli_path.exists():
        command_line = bc.read_json(cli_path)
    else:
        command_line = {"shape_zyx": [cli_slices, config["matrix"], config["matrix"]],
                        **time_command_line(image_path, liver_path, config["repeats"], config["warmup"], args.threads)}
        bc.write_json(cli_path, command_line)
    bc.log(f"command line end to end, {config['matrix']}x{config['matrix']}x{cli_slices}: median "
           f"{command_line['median_wall_s']:.2f} s wall over {command_line['repeats']} runs")

    result = {
        **bc.result_header("speed", "speed.py", preset, config),
        "threads": threads,
        "machine": machine_before,
        "machine_after": bc.machine(),
        "volume": {"matrix": config["matrix"], "spacing_xyz_mm": [SPACING_XYZ[0] * 512 / config["matrix"]] * 2 + [SPACING_XYZ[2]],
                   "source": "full-size phantom (seed 42, 88 slices), mirror-tiled in z; liver mask = the phantom's liver"},
        "stages": {"read_s": "images.read_image + images.read_liver_mask", "crop_resample_s/normalize_s/hessian_s": "prepare_case",
                   "network_s": "network over the liver box incl. tile stitching", "to_input_grid_s": "probability back to the CT grid",
                   "threshold_s": "threshold + speck removal", "lesions_s": "lesion table",
                   "write_s": "images.write_segmentation (.seg.nrrd)"},
        "training_to_target": training,
        "segment": segment_rows,
        "command_line": command_line,
        "ratios": ratios(segment_rows, training),
        "wall_s_this_invocation": round(time.perf_counter() - start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    bc.write_json(args.out / "speed.json", result)
    plot(result, args.out / "speed.png")
    bc.log(f"wrote {args.out / 'speed.json'}")
    return result


if __name__ == "__main__":
    main()
