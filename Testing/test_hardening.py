"""Hostile but realistic input, the way a new user meets it (issue 10, reviews/2026-12-01-reliability-probe.md).

Every case runs the real `livertumorseg` command in its own process on real files.

- REFUSALS: exit code 2, exactly one line (besides warnings) that names the problem and the fix,
  and nothing written or changed anywhere in the test's folders (hidden temps included).
- WARNINGS: the run succeeds, a `warning:` line names the problem and the fix, the outputs exist.

To add the next case, add a row to one of the two tables: `command` builds the arguments from
the `World` (the files below), `says` lists what the message must contain. `restricted=True`
runs it without root's permission override, for read-only folders.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.storage import fsutil
from LiverTumorSegLib.storage import images
from LiverTumorSegLib.errors import InputError
from LiverTumorSegLib.storage.modelstore import default_model_path
from LiverTumorSegLib.data.phantom import PhantomSettings, make_phantom
from LiverTumorSegLib.volume import Volume

# Root ignores permission bits: read-only cases run with the capabilities that let it dropped.
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
SETPRIV = shutil.which("setpriv")
RESTRICT = [SETPRIV, "--bounding-set=-dac_override,-dac_read_search,-fowner"] if AS_ROOT and SETPRIV else []
RUN_TIMEOUT_S = 300


class World:
    """The files the cases use, all under one root (so "nothing written" is checked everywhere)."""

    def __init__(self, root: Path, cases_dir: Path):
        self.root = root
        self.cases = cases_dir  # two good phantom cases (conftest)
        self.model = default_model_path()
        inp = root / "in"
        inp.mkdir()
        case = make_phantom(3, PhantomSettings.small(n_tumors=(2, 3)))
        self.case = case
        self.ct = inp / "ct.nrrd"
        self.liver = inp / "liver.nrrd"
        images.write_image(case.image, self.ct)
        images.write_labelmap(case.labels, self.liver)
        self.tumor_seg = inp / "tumor.seg.nrrd"  # what `segment --out x.seg.nrrd` writes
        images.write_segmentation(self.tumor_seg, case.labels.with_array((case.labels.array == 2).astype(np.uint8)),
                               [images.TUMOR_SEGMENT])
        self.lits_no_tumor = inp / "lits_no_tumor.nrrd"  # a LiTS truth of a tumor-free case: 0/1 only
        images.write_labelmap(case.labels.with_array((case.labels.array > 0).astype(np.uint8)), self.lits_no_tumor)
        self.empty_pred = inp / "empty_pred.nrrd"
        images.write_labelmap(case.labels.with_array(np.zeros(case.labels.shape, np.uint8)), self.empty_pred)
        self.full_liver = inp / "liver_full.nrrd"
        images.write_labelmap(case.labels.with_array(np.ones(case.labels.shape, np.uint8)), self.full_liver)
        self.mr_like = inp / "mr_like.nrrd"  # no negative values, liver far above any HU
        hu = case.image.array.astype(np.float32)
        images.write_image(case.image.with_array(np.clip((hu + 1000.0) * 0.75, 0, 1500).astype(np.int16)), self.mr_like)
        self.thick, self.thick_liver = inp / "thick.nrrd", inp / "thick_liver.nrrd"
        thick_ct, thick_liver = resample_z(case.image, 50.0), resample_z(case.labels, 50.0)
        images.write_image(thick_ct, self.thick)
        images.write_labelmap(thick_liver, self.thick_liver)
        self.spacing0 = inp / "spacing0.nrrd"
        write_raw_nrrd(self.spacing0, case.image.array[:8], spacings=(2.0, 2.0, 0.0))
        self.corrupt = inp / "corrupt.nrrd"
        self.corrupt.write_bytes(self.ct.read_bytes()[:400])
        self.a_file = inp / "notes.txt"
        self.a_file.write_text("a file, not a folder\n")
        self.dicom_gap = inp / "dicom_gap"
        shutil.copytree(Path(__file__).parent / "Data" / "totalsegmentator" / "example_ct_dicom", self.dicom_gap)
        slices = sorted(self.dicom_gap.iterdir())
        slices[len(slices) // 2].unlink()  # an incomplete transfer: one slice in the middle missing
        self.out = root / "out"
        self.out.mkdir()
        self.mine = self.out / "mine.nrrd"
        self.mine.write_bytes(b"the user's own file")
        (self.out / "folder.nrrd").mkdir()
        self.ro = root / "readonly"
        self.ro.mkdir()
        (self.ro / "existing.txt").write_text("kept\n")
        self.ro.chmod(0o555)
        self.libs = root / "libraries"
        self.bad_labels = make_library(self.libs / "bad_labels", [case], relabel={2: 4})
        self.all_broken = make_library(self.libs / "all_broken", [case, case], corrupt_image=(0, 1))


def resample_z(volume: Volume, slice_mm: float) -> Volume:
    """The same physical extent with slices `slice_mm` apart (nearest neighbour)."""
    image = volume.to_sitk()
    size = list(image.GetSize())
    spacing = list(image.GetSpacing())
    size[2] = max(2, int(round(size[2] * spacing[2] / slice_mm)))
    spacing[2] = slice_mm
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor, image.GetOrigin(), spacing,
                        image.GetDirection(), 0, image.GetPixelID())
    return Volume.from_sitk(out)


def write_raw_nrrd(path: Path, array: np.ndarray, spacings) -> None:
    """A hand-written NRRD (as some exporters write them), here with the spacings given."""
    z, y, x = array.shape
    directions = " ".join(f"({','.join(f'{s if i == j else 0:g}' for j in range(3))})" for i, s in enumerate(spacings))
    header = (f"NRRD0004\ntype: int16\ndimension: 3\nspace: left-posterior-superior\nsizes: {x} {y} {z}\n"
              f"space directions: {directions}\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
              "space origin: (0,0,0)\n\n")
    path.write_bytes(header.encode() + array.astype("<i2").tobytes())


def make_library(root: Path, cases: list, relabel: dict | None = None, corrupt_image=(), crop_label=()) -> Path:
    """A folder of case folders (image.nrrd + label.nrrd) from phantom cases, some made broken."""
    for i, case in enumerate(cases):
        folder = root / f"case-{i}"
        folder.mkdir(parents=True)
        labels = case.labels.array.copy()
        for old, new in (relabel or {}).items():
            labels[case.labels.array == old] = new
        images.write_image(case.image, folder / "image.nrrd")
        label_volume = case.labels.with_array(labels)
        if i in crop_label:  # a label map covering only the middle slices (same physical space)
            image = label_volume.to_sitk()
            z = image.GetSize()[2]
            label_volume = Volume.from_sitk(image[:, :, z // 4 : 3 * z // 4])
        images.write_labelmap(label_volume, folder / "label.nrrd")
        if i in corrupt_image:
            data = (folder / "image.nrrd").read_bytes()
            (folder / "image.nrrd").write_bytes(data[: len(data) // 2])  # a truncated copy
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory, phantom_case_dirs) -> World:
    root = tmp_path_factory.mktemp("hardening")
    made = World(root, phantom_case_dirs[0].parent)
    yield made
    made.ro.chmod(0o755)  # so pytest can remove it


def run(args, restricted: bool = False, cwd: Path | None = None, umask: int | None = None, timeout=RUN_TIMEOUT_S,
        env: dict | None = None):
    command = [sys.executable, "-m", "LiverTumorSegLib", *map(str, args)]
    if restricted:
        if AS_ROOT and not RESTRICT:
            pytest.skip("running as root without setpriv: read-only folders cannot be tested")
        command = RESTRICT + command
    env = dict(os.environ, PYTHONWARNINGS="default", **(env or {}))
    # Decoded as UTF-8 (what the child writes: tqdm's bar), not by this process's locale, which
    # GDCM's DICOM writer in test_images resets to "C" for the rest of the session.
    return subprocess.run(command, capture_output=True, encoding="utf-8", cwd=cwd, timeout=timeout, env=env,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def snapshot(root: Path) -> dict:
    """Every file and folder under root (hidden ones too) with its size, time and content hash."""
    state = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest = hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        state[str(path.relative_to(root))] = (info.st_size if path.is_file() else 0, info.st_mtime_ns, digest)
    return state


def message_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not warnings."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("warning:")]


# ---- refusals: exit 2, one line naming the problem and the fix, nothing written -----------------
@dataclass
class Bad:
    row: str  # issue 10's row number and case
    command: Callable[[World], list]
    says: tuple  # fragments of the one error line: the problem and the fix (case-insensitive)
    restricted: bool = False
    never_says: tuple = ()
    env: dict | None = None


def seg(w: World, *extra) -> list:
    return ["segment", w.ct, "--liver", w.liver, *extra]


REFUSALS = [
    Bad("1 --out in a read-only folder", lambda w: seg(w, "--out", w.ro / "t.seg.nrrd"),
        ("--out", "cannot be written", "permission denied", "choose a folder"), restricted=True),
    Bad("1 --prob in a read-only folder", lambda w: seg(w, "--out", w.out / "t.nrrd", "--prob", w.ro / "p.nrrd"),
        ("--prob", "cannot be written", "permission denied"), restricted=True),
    Bad("1 --lesions in a read-only folder", lambda w: seg(w, "--out", w.out / "t.nrrd", "--lesions", w.ro / "l.csv"),
        ("--lesions", "cannot be written", "permission denied"), restricted=True),
    Bad("1 --out in a folder that cannot be created", lambda w: seg(w, "--out", w.ro / "new" / "sub" / "t.nrrd"),
        ("cannot be written", "readonly (permission denied)"), restricted=True),
    Bad("1 --out through a file", lambda w: seg(w, "--out", w.a_file / "t.nrrd"),
        ("notes.txt is a file, not a folder", "choose a folder")),
    Bad("1 --out naming an existing folder", lambda w: seg(w, "--out", w.out / "folder.nrrd", "--overwrite"),
        ("is an existing folder", "file name")),
    Bad("2 one of several outputs cannot be written", lambda w: seg(w, "--out", w.out / "t.seg.nrrd", "--lesions",
                                                                   w.out / "l.csv", "--prob", w.ro / "p.nrrd"),
        ("--prob", "cannot be written"), restricted=True),
    Bad("3 --out and --prob the same path", lambda w: seg(w, "--out", w.out / "same.nrrd", "--prob", w.out / "same.nrrd"),
        ("--out and --prob are the same file", "own name")),
    Bad("4 --out is the CT (with --overwrite)", lambda w: seg(w, "--out", w.ct, "--overwrite"),
        ("is the ct being read", "new file")),
    Bad("4 --out is the liver mask, spelled differently", lambda w: seg(w, "--out", w.out / ".." / "in" / "liver.nrrd",
                                                                       "--overwrite"),
        ("is the liver mask being read", "new file")),
    Bad("4 --out replacing the user's file needs --overwrite", lambda w: seg(w, "--out", w.mine),
        ("already exists", "--overwrite")),
    Bad("5 .mhd refused before reading anything", lambda w: ["segment", w.root / "no-such-ct.nrrd", "--out",
                                                            w.out / "t.mhd"],
        ("unknown output type", "use one of .seg.nrrd, .nrrd, .nii.gz, .nii, .mha"), never_says=(".mha, .mhd", "does not exist")),
    Bad("6 DICOM series with a slice missing", lambda w: ["segment", w.dicom_gap, "--out", w.out / "t.nrrd"],
        ("has a gap", "1 slice(s) are missing", "export the complete series"), never_says=("WARNING",)),
    Bad("7 evaluate: a tumor-free LiTS truth (0/1 only)", lambda w: ["evaluate", w.empty_pred, w.lits_no_tumor],
        ("only labels 0 and 1", "--truth-labels lits", "--truth-labels mask")),
    Bad("8 --model naming model.json (the shipped one)", lambda w: seg(w, "--out", w.out / "t.nrrd", "--model",
                                                                      w.model / "model.json"),
        ("model.json", "give the model folder", "model.pt"), never_says=("damaged", "backup")),
    Bad("11 a tumor-only .seg.nrrd as --liver", lambda w: ["segment", w.ct, "--liver", w.tumor_seg, "--out",
                                                          w.out / "t.nrrd"],
        ("no liver segment", "'liver tumor'", "give the liver segmentation")),
    Bad("12 train --minutes nan", lambda w: ["train", w.cases, "--out", w.out / "m", "--minutes", "nan"],
        ("--minutes nan", "positive number")),
    Bad("12 train --minutes inf", lambda w: ["train", w.cases, "--out", w.out / "m", "--minutes", "inf"],
        ("--minutes inf", "positive number")),
    Bad("12 train --max-steps 0", lambda w: ["train", w.cases, "--out", w.out / "m", "--max-steps", "0"],
        ("--max-steps 0", "at least 1")),
    Bad("12 train --seed -1", lambda w: ["train", w.cases, "--out", w.out / "m", "--seed", "-1"],
        ("--seed -1", "0 or more")),
    Bad("12 phantom --seed -1", lambda w: ["phantom", w.out / "cases", "--seed", "-1"], ("--seed -1", "0 or more")),
    Bad("12 demo --minutes nan", lambda w: ["demo", "--out", w.out / "demo", "--minutes", "nan"],
        ("--minutes nan", "positive number")),
    Bad("13 train with label values other than 0/1/2", lambda w: ["train", w.bad_labels, "--out", w.out / "m"],
        ("label values 4", "0 background, 1 liver, 2 tumor", "relabel")),
    Bad("15 a library where no case is usable", lambda w: ["train", w.all_broken, "--out", w.out / "m"],
        ("none of the 2 cases is usable", "case-0, case-1", "damaged")),
    Bad("18 spacing 0", lambda w: ["segment", w.spacing0, "--out", w.out / "t.nrrd"],
        ("invalid voxel spacing", "positive number of mm", "fix the spacing"), never_says=("give NRRD",)),
    Bad("18 a damaged image file", lambda w: ["segment", w.corrupt, "--out", w.out / "t.nrrd"],
        ("damaged", "export it again"), never_says=("give NRRD",)),
    Bad("1 phantom into a read-only folder", lambda w: ["phantom", w.ro / "cases", "--small"],
        ("cannot be written", "permission denied", "choose a folder"), restricted=True),
    Bad("10 MR-like intensities without a liver mask: the liver cannot be found",
        lambda w: ["segment", w.mr_like, "--out", w.out / "t.nrrd"],
        ("no liver can be found automatically", "give a liver mask with --liver")),
    Bad("Also: a CT too big for the free memory", lambda w: ["segment", w.ct, "--out", w.out / "t.nrrd"],
        ("needs about", "gb of memory", "0.5 gb are free", "give a liver mask (--liver)"),
        env={"LIVERTUMORSEG_MAX_MEMORY_GB": "0.5"}),
    Bad("1 train --out in a read-only folder", lambda w: ["train", w.cases, "--out", w.ro / "m"],
        ("--out", "cannot be written", "permission denied"), restricted=True),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[case.row for case in REFUSALS])
def test_refused_with_one_line_and_nothing_written(world, case):
    before = snapshot(world.root)
    result = run(case.command(world), restricted=case.restricted, cwd=world.root, env=case.env)
    lines = message_lines(result.stderr)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    text = lines[0].lower()
    for fragment in case.says:
        assert fragment.lower() in text, (fragment, lines[0])
    for fragment in case.never_says:
        assert fragment.lower() not in result.stderr.lower(), (fragment, result.stderr)
    assert snapshot(world.root) == before  # nothing written, nothing changed, no temp left


# ---- warnings: the run goes on, and a line says what is wrong and what to do ---------------------
@dataclass
class Warned:
    row: str
    command: Callable[[World], list]
    says: tuple  # fragments of one warning line
    outputs: Callable[[World], list]  # what the run must have written


def _train_mixed(w: World) -> list:
    """One good case, one whose label map covers only the middle slices, one with a damaged CT."""
    lib = w.libs / "mixed"
    if not lib.exists():
        make_library(lib, [w.case, make_phantom(4, PhantomSettings.small(n_tumors=(2, 3))), w.case],
                     crop_label=(1,), corrupt_image=(2,))
    return ["train", lib, "--out", w.root / "models" / "mixed", "--max-steps", "1", "--minutes", "3",
            "--synthetic-copies", "0", "--seed", "0"]


WARNINGS = [
    Warned("9 liver mask covering the whole image",
           lambda w: ["segment", w.ct, "--liver", w.full_liver, "--out", w.root / "w9.nrrd"],
           ("covers 100% of the ct", "not a liver outline", "give the liver segmentation"),
           lambda w: [w.root / "w9.nrrd"]),
    Warned("10 MR-like intensities (0-1500, no negatives)",
           lambda w: ["segment", w.mr_like, "--liver", w.liver, "--out", w.root / "w10.nrrd"],
           ("liver's median value", "not ct in hounsfield units"), lambda w: [w.root / "w10.nrrd"]),
    Warned("10 50 mm slices", lambda w: ["segment", w.thick, "--liver", w.thick_liver, "--out", w.root / "w10c.nrrd"],
           ("50 mm apart", "thinner reconstruction"), lambda w: [w.root / "w10c.nrrd"]),
    Warned("14 train: a label map covering only part of the CT", _train_mixed,
           ("case case-1", "covers only", "trained as background", "label the whole ct"),
           lambda w: [w.root / "models" / "mixed" / "model.pt"]),
    Warned("15 train: one broken case is skipped, named", _train_mixed,
           ("skipping case case-2", "damaged", "training on the other 2 case(s)", "repair or remove"),
           lambda w: [w.root / "models" / "mixed" / "model.pt"]),
]
_RUNS: dict = {}


@pytest.mark.parametrize("case", WARNINGS, ids=[case.row for case in WARNINGS])
def test_warned_and_done(world, case):
    command = case.command(world)
    key = tuple(map(str, command))
    if key not in _RUNS:  # rows that share one run (a training) run it once
        _RUNS[key] = run(command, cwd=world.root)
    result = _RUNS[key]
    assert result.returncode == 0, result.stderr[-3000:]
    warnings_ = [line.lower() for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any(all(f.lower() in line for f in case.says) for line in warnings_), (case.says, warnings_)
    for path in case.outputs(world):
        assert Path(path).is_file(), path


# ---- rows that are not one command ----------------------------------------------------------
def test_row2_outputs_are_all_or_nothing_when_a_write_fails(tmp_path):
    """The last of three outputs fails while being written: none of them appears, no temp is left."""
    grid = Volume(np.zeros((4, 5, 6), np.uint8), (1.0, 1.0, 2.0))
    first, second, third = tmp_path / "a.seg.nrrd", tmp_path / "b.nrrd", tmp_path / "c.nrrd"
    with pytest.raises(InputError, match="integer labels"):
        with fsutil.StagedOutputs() as staged:
            images.write_segmentation(staged.path_for(first), grid, [images.TUMOR_SEGMENT])
            images.write_image(grid, staged.path_for(second))
            images.write_labelmap(grid.with_array(np.full(grid.shape, 0.5, np.float32)), staged.path_for(third))
            staged.commit()
    assert list(tmp_path.iterdir()) == []
    with fsutil.StagedOutputs() as staged:  # and when all succeed, all appear
        images.write_segmentation(staged.path_for(first), grid, [images.TUMOR_SEGMENT])
        images.write_image(grid, staged.path_for(second))
        staged.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.seg.nrrd", "b.nrrd"]


def test_row3_4_outputs_with_overwrite_replace_only_the_named_outputs(world, tmp_path):
    """--overwrite replaces earlier outputs (and only them): the CT and mask are untouched."""
    out, prob = tmp_path / "t.seg.nrrd", tmp_path / "p.nrrd"
    out.write_bytes(b"old")
    prob.write_bytes(b"old")
    inputs = {p: p.read_bytes() for p in (world.ct, world.liver)}
    result = run(seg(world, "--out", out, "--prob", prob, "--overwrite"))
    assert result.returncode == 0, result.stderr
    assert images.is_segmentation_file(out) and images.read_image(prob).array.max() <= 1.0
    assert all(p.read_bytes() == data for p, data in inputs.items())


def test_row7_tumor_free_lits_truth_scores_an_empty_prediction_as_perfect(world):
    import json

    result = run(["evaluate", world.empty_pred, world.lits_no_tumor, "--truth-labels", "lits"])
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["dice"] == 1.0 and scores["truth_volume_ml"] == 0.0 and scores["n_true_lesions"] == 0
    result = run(["evaluate", world.lits_no_tumor, world.lits_no_tumor, "--truth-labels", "mask"])
    assert result.returncode == 0 and json.loads(result.stdout)["truth_volume_ml"] > 100


def dead_pid() -> int:
    """The id of a process that has just exited (what a SIGKILLed writer leaves in its temp names)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_row16_temps_of_a_killed_save_are_cleaned_by_the_next_save(tmp_path):
    """A model save SIGKILLed half-way leaves its hidden temp folder (with part of model.pt); the
    next save into that models folder removes it. Temps of a live process are kept."""
    from LiverTumorSegLib.storage.modelstore import load_model, save_model

    models = tmp_path / "models"
    models.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = fsutil.temp_prefix("x").split(fsutil.TEMP_MARK)[1].rsplit("-", 2)[0]
        stale = models / f".v001{fsutil.TEMP_MARK}{host}-{dead_pid()}-abcd1234"
        stale.mkdir()
        (stale / ".model.tmp-partial.pt").write_bytes(b"\0" * 1000)
        live = models / f".v002{fsutil.TEMP_MARK}{host}-{sleeper.pid}-efgh5678"
        live.mkdir()
        other_host = models / f".v003{fsutil.TEMP_MARK}otherhost-{dead_pid()}-ijkl9012"
        other_host.mkdir()
        stale_file = models / f".ACTIVE{fsutil.TEMP_MARK}{host}-{dead_pid()}-mnop3456"  # a killed plain write
        stale_file.write_text("v00")
        save_model(load_model(default_model_path()), models / "v004")
        assert not stale.exists() and not stale_file.exists()
        assert live.exists() and other_host.exists()  # still being written / not ours to judge
        assert (models / "v004" / "model.pt").is_file()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_row17_outputs_cases_and_models_follow_the_umask(world, tmp_path, umask, file_mode, dir_mode):
    from LiverTumorSegLib.storage.modelstore import load_model, save_model

    out = tmp_path / "seg"
    result = run(seg(world, "--out", out / "t.seg.nrrd", "--prob", out / "p.nrrd", "--lesions", out / "l.csv"),
                 umask=umask)
    assert result.returncode == 0, result.stderr
    result = run(["phantom", tmp_path / "cases", "--cases", "1", "--small"], umask=umask)
    assert result.returncode == 0, result.stderr
    old = os.umask(umask)
    try:
        save_model(load_model(default_model_path()), tmp_path / "models" / "v001")
    finally:
        os.umask(old)
    files = [out / "t.seg.nrrd", out / "p.nrrd", out / "l.csv", tmp_path / "models" / "v001" / "model.pt",
             tmp_path / "models" / "v001" / "model.json"] + sorted((tmp_path / "cases").glob("*/*"))
    folders = [out, tmp_path / "models" / "v001"] + sorted((tmp_path / "cases").glob("*"))
    assert len(files) == 8
    for path in files:
        assert path.stat().st_mode & 0o777 == file_mode, (path, oct(path.stat().st_mode))
    for path in folders:
        assert path.stat().st_mode & 0o777 == dir_mode, (path, oct(path.stat().st_mode))


# ---- Also: two `train` runs on one library --------------------------------------------------
def test_second_train_on_a_library_is_refused_and_a_dead_holder_does_not_block(world, tmp_path):
    from LiverTumorSegLib.cli import TRAIN_LOCK

    lock = world.cases / TRAIN_LOCK
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from LiverTumorSegLib.storage.fsutil import exclusive_lock\n"
         f"with exclusive_lock({str(lock)!r}, 'training'):\n    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run(["train", world.cases, "--out", tmp_path / "m", "--max-steps", "1"])
        lines = message_lines(result.stderr)
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert "another training is already running" in lines[0] and f"pid {holder.pid}" in lines[0]
        assert "wait for it" in lines[0] and not (tmp_path / "m").exists()
        holder.send_signal(signal.SIGKILL)  # its lock file stays behind, the lock itself dies with it
        holder.wait()
        assert lock.exists()
        with fsutil.exclusive_lock(lock, "training"):
            with pytest.raises(InputError, match="another training"):
                with fsutil.exclusive_lock(lock, "training"):
                    pass
        assert not lock.exists()  # a finished holder removes it
    finally:
        holder.kill()
        holder.wait()


# ---- Also: big volumes are refused up front when they cannot fit --------------------------------
def test_memory_estimate_refuses_a_whole_ct_that_cannot_fit():
    from LiverTumorSegLib.storage.memory import memory_problem, segment_peak_bytes

    shape, spacing = (2000, 512, 512), (0.8, 0.75, 0.75)
    problem = memory_problem(shape, spacing, None, available=8 * 10**9)
    assert problem and "whole CT (no liver mask)" in problem and "--liver" in problem and "512x512x2000" in problem
    liver_box = (300, 300, 350)
    assert segment_peak_bytes(shape, spacing, liver_box) < segment_peak_bytes(shape, spacing, None)
    assert memory_problem((1000, 512, 512), (1.0, 0.75, 0.75), liver_box, available=8 * 10**9) is None
