"""`livertumorseg batch`: many CTs (a CSV, or a folder of DICOM series / case folders / image
files) to one results folder: `results.csv` (one row per case) and each case's outputs in
`<out>/<case>/` (tumor.dcm, a DICOM SEG, when the CT is a DICOM series, else tumor.seg.nrrd;
lesions.csv; case.json, its row and input hash).

Each case runs the same engine calls as `segment` (storage reads, the liver found by the shipped
liver network when the case has no mask, the memory check, core.inference.segment, the same
writers) in a worker that loads the models once. Locally a
process pool sized to the cores; with `--scheduler ADDRESS` the same function on the workers of
an existing Dask distributed cluster (Dask schedules, retries the cases of a worker that died,
and its workers keep the model between cases).

Resumable: a case is complete when its case.json holds the hash of its inputs' bytes, the model's
and the settings' (`case_key`) and its outputs still have the bytes it recorded; a rerun skips it. case.json is written last,
after the outputs are renamed into place, so a case cut short (Ctrl-C, a killed worker) has no
case.json, or an old one with another hash, and is redone. A case that fails is one row with its
one-line reason; the others go on. results.csv is rewritten atomically after every case.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import sys
import time
import uuid
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import InputError

RESULT_COLUMNS = ("case", "status", "error", "liver_ml", "tumor_ml", "burden_pct", "lesion_count",
                  "largest_diameter_mm", "model_version", "seconds")
CASE_FILE = "case.json"
RESULTS_FILE = "results.csv"
IMAGE_NAMES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
HASH_CHUNK = 1 << 20
EXIT_CANCELLED = 130  # as the command line's other commands (128 + SIGINT)


@dataclass(frozen=True)
class Case:
    """One CT to segment: `name` (unique; its output folder), the CT (file or DICOM series folder)
    and its liver mask (any mask `segment --liver` reads), or None."""

    name: str
    ct: str
    liver: str | None = None


@dataclass(frozen=True)
class BatchSettings:
    """What every case shares. model_digest: sha256 of the model's files (part of each case's key);
    threads: torch threads per worker."""

    out: str
    model: str
    model_digest: str
    threshold: float | None = None
    threads: int = 1


# ---- finding the cases ---------------------------------------------------------------------
def _safe_name(text: str) -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._")
    return name or "case"


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _holds_dicom_series(folder: Path) -> bool:
    """True when the folder itself holds DICOM files other than SEGs (a series, as a PACS exports it)."""
    from .storage.dicom_seg import is_dicom_seg

    return any(p.is_file() and _is_dicom_file(p) and not is_dicom_seg(p) for p in sorted(folder.iterdir()))


def cases_from_csv(path: Path) -> list[Case]:
    """Rows with a `ct` column and optional `liver` and `case` columns; relative paths are relative
    to the CSV's folder; the case name defaults to the CT's name."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "ct" not in rows[0]:
        raise InputError(f"{path} needs a header row with a 'ct' column (and optionally 'liver' and 'case'), "
                         "then one row per case")
    def resolve(text: str) -> str:
        return str(Path(text) if Path(text).is_absolute() else path.parent / text)

    cases = []
    for i, row in enumerate(rows, start=2):
        ct = (row.get("ct") or "").strip()
        if not ct:
            raise InputError(f"{path}, line {i}: no CT path; give one per row (or delete the row)")
        liver = (row.get("liver") or "").strip() or None
        name = (row.get("case") or "").strip() or _stem(Path(ct).name)
        cases.append(Case(_safe_name(name), resolve(ct), resolve(liver) if liver else None))
    return cases


def _stem(name: str) -> str:
    """A file name without its image suffix (ct.nii.gz -> ct); a folder's name as it is."""
    lower = name.lower()
    suffix = next((s for s in sorted(IMAGE_NAMES, key=len, reverse=True) if lower.endswith(s)), "")
    return name[: len(name) - len(suffix)]


def cases_from_folder(folder: Path) -> list[Case]:
    """Case folders (image.nrrd + label.nrrd: the label's liver and tumor are the liver mask),
    folders holding a DICOM series (no liver mask), and image files, anywhere under `folder`; a
    case's name is its path under `folder`."""
    from .storage.library import is_case_folder

    cases = []

    def visit(path: Path) -> None:
        name = _safe_name("_".join(path.relative_to(folder).parts)) if path != folder else _safe_name(folder.name)
        if is_case_folder(path):
            cases.append(Case(name, str(path / "image.nrrd"), str(path / "label.nrrd")))
            return
        if _holds_dicom_series(path):
            cases.append(Case(name, str(path)))
            return
        for child in sorted(path.iterdir()):
            if child.is_dir():
                visit(child)
            elif child.name.lower().endswith(IMAGE_NAMES) and not child.name.lower().endswith(".seg.nrrd"):
                parts = child.parent.relative_to(folder).parts + (_stem(child.name),)
                cases.append(Case(_safe_name("_".join(parts)), str(child)))

    visit(folder)
    return cases


def find_cases(source) -> list[Case]:
    """The cases of a CSV file or a folder; InputError when there are none or two share a name."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source} does not exist; give a CSV of cases or a folder of DICOM series / case folders")
    cases = cases_from_csv(source) if source.is_file() else cases_from_folder(source)
    if not cases:
        raise InputError(f"no cases in {source}: expected DICOM series folders, case folders (image.nrrd + label.nrrd) "
                         "or image files, or a CSV with a 'ct' column")
    names = [case.name for case in cases]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"case names {', '.join(twice[:5])} occur more than once in {source}; give each case its own "
                         "name (the CSV's 'case' column)")
    return cases


# ---- one case --------------------------------------------------------------------------------
def _hash_path(digest, path: Path) -> None:
    """Feed a file's bytes, or every file under a folder (sorted, with its relative name), to `digest`."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
                digest.update(chunk)


def files_digest(*paths) -> str:
    """sha256 of the bytes of these files / folders (a missing path counts as absent)."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        digest.update(b"<none>" if not path.exists() else b"<path>")
        if path.exists():
            _hash_path(digest, path)
    return digest.hexdigest()


def model_digest(model_path) -> str:
    """sha256 of the model folder's model.pt and model.json (what decides its output)."""
    path = Path(model_path)
    folder = path if path.is_dir() else path.parent
    return files_digest(folder / "model.pt", folder / "model.json")


def case_key(case: Case, settings: BatchSettings) -> str:
    """What a case's outputs depend on: its input bytes, the model's, the threshold, this version."""
    from . import __version__

    inputs = files_digest(case.ct, *([case.liver] if case.liver else []))
    text = json.dumps([inputs, settings.model_digest, settings.threshold, __version__, case.liver is None])
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=2)
def cached_model(model_path: str, digest: str):
    """The model, loaded once per worker process (the digest keys a changed model file)."""
    from .storage.modelstore import load_model

    return load_model(Path(model_path))


def _completed_row(folder: Path, key: str) -> dict | None:
    """The row stored by a complete earlier run with the same key, else None (absent, other key,
    an output missing or changed)."""
    from .storage.fsutil import read_json_object

    stored, problem = read_json_object(folder / CASE_FILE)
    if problem or stored.get("key") != key or not isinstance(stored.get("outputs"), dict):
        return None
    if not all(files_digest(folder / name) == digest for name, digest in stored["outputs"].items()):
        return None  # an output removed, damaged or replaced since
    return stored.get("row")


def _row(case: Case, status: str, error: str = "", **numbers) -> dict:
    row = {column: "" for column in RESULT_COLUMNS}
    row.update(case=case.name, status=status, error=error, **numbers)
    return row


def run_case(case: Case, settings: BatchSettings) -> dict:
    """Segment one case into `<out>/<case.name>/` and return its results row; a case whose outputs
    are complete for the same key is skipped (its stored row, status 'skipped'). Any error becomes
    a 'failed' row with the one-line reason: one case never stops the others. A done case's
    warnings (not HU, a mask outside the CT, ...) go in its error column."""
    start = time.perf_counter()
    folder = Path(settings.out) / case.name
    try:
        key = case_key(case, settings)
        stored = _completed_row(folder, key)
        if stored is not None:
            return {**stored, "status": "skipped"}
        with warnings.catch_warnings(record=True) as caught:  # into the case's row: printed, they would
            warnings.simplefilter("always")                     # interleave between workers
            numbers, outputs, note = _segment_case(case, settings, folder)
        notes = [note] if note else []
        ours = [w for w in caught if "LiverTumorSeg" in str(w.filename)]  # a library's once-per-process ones would
        notes += [f"warning: {w.message}".replace("\n", " ") for w in ours]  # differ between workers
        row = _row(case, "done", "; ".join(notes), seconds=round(time.perf_counter() - start, 2), **numbers)
        from .storage.fsutil import write_json_atomic

        write_json_atomic(folder / CASE_FILE, {"key": key, "case": asdict(case), "row": row,
                                               "outputs": {name: files_digest(folder / name) for name in outputs}})
        return row
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001  a broken case costs its row, never the run
        return failed_row(case, exc, time.perf_counter() - start)


def failed_row(case: Case, exc: BaseException, seconds: float = 0.0) -> dict:
    """A 'failed' row whose error is the exception's message on one line (its type too, for a bug)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    reason = text if isinstance(exc, (InputError, OSError)) else f"{type(exc).__name__}: {text}"
    return _row(case, "failed", reason, seconds=round(seconds, 2))


def _found_liver(image):
    """A case without a liver mask, as `segment` without --liver: the liver found by the shipped
    liver network and checked (bool, the CT's grid); InputError (the case's row) when no plausible
    liver is found or the search would not fit in memory. What the checks cleaned is warned."""
    from .core.liver_checks import find_plausible_liver
    from .storage.memory import liver_memory_problem
    from .storage.modelstore import shipped_liver_network

    problem = liver_memory_problem(image.shape, image.spacing_zyx, "give the case a liver mask (the CSV's liver column)")
    if problem:
        raise InputError(problem)
    check = find_plausible_liver(image, shipped_liver_network())
    for note in check.notes:
        warnings.warn(f"liver found automatically: {note}")
    return check.mask.array > 0


def _segment_case(case: Case, settings: BatchSettings, folder: Path) -> tuple[dict, list, str]:
    """(numbers for the row, output file names, a note) of one case, its outputs committed together."""
    import numpy as np
    import torch

    from .cli_outputs import write_tumor_output
    from .core.inference import segment
    from .storage import images
    from .storage.fsutil import StagedOutputs
    from .storage.lesion_csv import write_lesion_csv
    from .storage.memory import segment_memory_problem

    torch.set_num_threads(max(1, settings.threads))
    model = cached_model(settings.model, settings.model_digest)
    image = images.read_image(case.ct, keep_integer=True)
    liver = images.read_liver_mask(case.liver, reference=image) if case.liver else _found_liver(image)
    problem = segment_memory_problem(image, liver, model.feature_settings.margin_mm, model.feature_settings.spacing_mm)
    if problem:
        raise InputError(problem)
    result = segment(image, liver, model, threshold=settings.threshold)
    note, dicom = "", Path(case.ct).is_dir()
    if dicom:
        from .storage.dicom_seg import source_datasets

        try:
            source_datasets(case.ct)
        except InputError as exc:  # the numbers stand; only the SEG cannot be written
            note, dicom = f"no DICOM SEG ({exc}); wrote tumor.seg.nrrd", False
    tumor_name = "tumor.dcm" if dicom else "tumor.seg.nrrd"
    with StagedOutputs() as staged:
        if dicom:
            from .storage.dicom_seg import write_tumor_seg

            write_tumor_seg(staged.path_for(folder / tumor_name), result.tumor, case.ct, model.meta.get("version", ""),
                            result.threshold)
        else:
            write_tumor_output(staged.path_for(folder / tumor_name), result.tumor, liver)
        write_lesion_csv(result.lesions, staged.path_for(folder / "lesions.csv"))
        staged.commit()
    voxel_ml = image.voxel_volume_mm3 / 1000.0
    tumor_ml = float(np.count_nonzero(result.tumor.array)) * voxel_ml
    liver_ml = float(np.count_nonzero(liver)) * voxel_ml
    numbers = {
        "liver_ml": round(liver_ml, 2),
        "tumor_ml": round(tumor_ml, 3),
        "burden_pct": "" if not liver_ml else round(100.0 * tumor_ml / liver_ml, 3),
        "lesion_count": len(result.lesions),
        "largest_diameter_mm": round(max((l.longest_axial_diameter_mm for l in result.lesions), default=0.0), 2),
        "model_version": model.meta.get("version", ""),
    }
    return numbers, [tumor_name, "lesions.csv"], note


# ---- the run ---------------------------------------------------------------------------------
def write_results(path: Path, rows: list[dict]) -> None:
    """results.csv, atomically (a reader or a Ctrl-C never sees half a table)."""
    from .storage.fsutil import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def default_workers(cores: int | None = None) -> int:
    """One worker per core, at most 8: each holds one CT and the model (a few GB for a big CT)."""
    return max(1, min(8, cores or os.cpu_count() or 1))


def run_batch(cases: list[Case], settings: BatchSettings, workers: int | None = None, scheduler=None,
              progress: bool = True) -> list[dict]:
    """Run every case; returns the rows in case order. `scheduler`: a Dask scheduler address (or a
    distributed Cluster / Client) to run on; None: a local process pool of `workers` processes.
    results.csv holds the finished cases after each one; on KeyboardInterrupt the running cases are
    cancelled (their staged outputs removed) and the table holds those finished."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    order = [case.name for case in cases]

    def finished(row: dict) -> None:
        rows[row["case"]] = row
        write_results(out / RESULTS_FILE, [rows[name] for name in order if name in rows])
        bar.set_postfix(failed=sum(r["status"] == "failed" for r in rows.values()), refresh=False)
        bar.update(1)

    from tqdm import tqdm

    with tqdm(total=len(cases), desc="cases", unit="case", disable=not progress, dynamic_ncols=True) as bar:
        if scheduler is None:
            _run_local(cases, settings, workers or default_workers(), finished)
        else:
            _run_dask(cases, settings, scheduler, finished)
    return [rows[name] for name in order]


def _run_local(cases, settings, workers: int, finished) -> None:
    import multiprocessing

    # spawn: a forked child would inherit torch's thread pools in whatever state the parent left them.
    with ProcessPoolExecutor(max_workers=min(workers, len(cases)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(settings.threads,)) as pool:
        case_of = {pool.submit(run_case, case, settings): case for case in cases}
        pending = set(case_of)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        finished(future.result())
                    except BrokenProcessPool as exc:  # a worker was killed (out of memory?): its cases fail
                        finished(failed_row(case_of[future], exc))
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _run_dask(cases, settings, scheduler, finished) -> None:
    from distributed import Client, as_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        # Keys unique to this run: a key the scheduler still remembers from an earlier run would be
        # answered with that run's row instead of running (and skipping) the case again.
        run_id = uuid.uuid4().hex[:12]
        futures = client.map(run_case, cases, settings=settings, pure=False,
                             key=[f"livertumorseg-{case.name}-{run_id}" for case in cases])
        case_of = {future.key: case for future, case in zip(futures, cases)}
        try:
            for future in as_completed(futures):
                try:
                    finished(future.result())
                except Exception as exc:  # noqa: BLE001  e.g. KilledWorker: the case killed every worker it ran on
                    finished(failed_row(case_of[future.key], exc))
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        if client is not scheduler:
            client.close()


def batch_command(args) -> int:
    """`livertumorseg batch`: check the arguments, run, print one summary line. Exit 0 even when
    some cases failed (they are rows of the table); 2 for arguments that cannot work."""
    from .storage.fsutil import unwritable_reason
    from .storage.modelstore import default_model_path, load_model

    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers} must be at least 1")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise InputError(f"--threshold {args.threshold} is outside (0, 1); use e.g. 0.5")
    out = Path(args.out)
    if out.is_file():
        raise InputError(f"--out {out} is a file; give a folder for the results")
    reason = unwritable_reason(out / RESULTS_FILE)
    if reason:
        raise InputError(f"--out {out} cannot be written: {reason}; choose a folder you can write to")
    cases = find_cases(args.cases)
    model_path = Path(args.model) if args.model else default_model_path()
    load_model(model_path)  # a bad model is reported once, before any case
    workers = args.workers or default_workers()
    # On a cluster each worker runs one case per Dask thread: one torch thread each (start workers
    # with --nthreads 1 and --nworkers = cores); locally the cores are shared out between workers.
    threads = args.threads or (1 if args.scheduler else max(1, (os.cpu_count() or 1) // workers))
    settings = BatchSettings(str(out), str(model_path), model_digest(model_path), args.threshold, threads)
    try:
        rows = run_batch(cases, settings, workers=workers, scheduler=args.scheduler)
    except KeyboardInterrupt:
        print(f"cancelled; the cases finished so far are kept ({out / RESULTS_FILE}), none half-written: run the same "
              "command again to resume", file=sys.stderr)
        return EXIT_CANCELLED
    counts = {status: sum(row["status"] == status for row in rows) for status in ("done", "skipped", "failed")}
    print(f"{len(rows)} case(s): {counts['done']} done, {counts['skipped']} skipped (done before), "
          f"{counts['failed']} failed -> {out / RESULTS_FILE}")
    return 0
