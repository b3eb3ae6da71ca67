"""Convert the whole-liver U-Net of pyliverlesionseg 0.3 (Apache-2.0) to the weights the product
ships: Resources/Models/liver/liver_unet.npz (float16; LiverTumorSegLib.core.liver_network).

    pip download pyliverlesionseg==0.3 --no-deps --only-binary=:all: --python-version 3.6 -d WHEEL_DIR
    python scripts/convert_liver_model.py WHEEL_DIR/pyliverlesionseg-0.3-py3-none-any.whl

Needs h5py, which only this script uses (not a product dependency: pip install h5py, anywhere).
The HDF5 file is a Keras 2.2 weights file: one group per layer, the 15 `conv3d_<k>` groups hold
a kernel (kx, ky, kz, Cin, Cout) and a bias. They are numbered in the order the network was built
(encoder 1-8, decoder 9-14, output 15) and sorted here by that number (the file lists them
alphabetically); a Keras kernel is a cross-correlation like torch's, so it is only transposed to
(Cout, Cin, kx, ky, kz). The file's `header/voxel_size` must be [3, 3, 3] mm, the grid core/liver.py
resamples to. The result is written atomically and is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LiverTumorSeg"))

from LiverTumorSegLib.core.liver_network import CONVOLUTIONS, liver_network_from_arrays  # noqa: E402

MEMBER = "pyliverlesionseg/trained_models/model_unet_ct_mr_liv_seg_resize_1.5mm_med_3_resize_3mm_20201011_dice_loss_val_binary_dice_mean.hdf5"
OUT = ROOT / "Resources" / "Models" / "liver" / "liver_unet.npz"


def read_kernels(hdf5_bytes: bytes) -> dict:
    """{'conv<k>.weight': (Cout, Cin, kx, ky, kz) float32, 'conv<k>.bias': (Cout,)} from the HDF5 file."""
    try:
        import h5py
    except ImportError:
        sys.exit("convert_liver_model.py needs h5py (only this script does): pip install h5py, then run it again")
    weights = {}
    with h5py.File(io.BytesIO(hdf5_bytes), "r") as f:
        voxel = list(np.asarray(f["header/voxel_size"], dtype=float))
        if voxel != [3.0, 3.0, 3.0]:
            sys.exit(f"header/voxel_size is {voxel}, not [3, 3, 3] mm: not the model core/liver.py was written for")
        names = sorted((n for n in f.keys() if re.fullmatch(r"conv3d_\d+", n)), key=lambda n: int(n.split("_")[1]))
        if len(names) != len(CONVOLUTIONS):
            sys.exit(f"{len(names)} convolution layers in the file, {len(CONVOLUTIONS)} expected")
        for k, name in enumerate(names, start=1):
            group = f[name][name]
            kernel = np.asarray(group["kernel:0"], dtype=np.float32)
            bias = np.asarray(group["bias:0"], dtype=np.float32)
            weights[f"conv{k}.weight"] = np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2))
            weights[f"conv{k}.bias"] = bias
    return weights


def write_npz(weights: dict, path: Path, dtype) -> None:
    """An uncompressed .npz with fixed member times (zip stores them): the same input gives the
    same bytes. Written to a temp file and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name in sorted(weights):
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.asarray(weights[name], dtype=dtype), allow_pickle=False)
                info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, buffer.getvalue())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the shipped file is read by everyone
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", help="pyliverlesionseg-0.3-py3-none-any.whl (or the .hdf5 file itself)")
    parser.add_argument("--out", default=str(OUT), help=f"output .npz (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--float32", action="store_true", help="keep float32 (default float16)")
    args = parser.parse_args(argv)
    source = Path(args.wheel)
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as z:
            data = z.read(MEMBER)
    else:
        data = source.read_bytes()
    print(f"source sha256 {hashlib.sha256(data).hexdigest()}")
    weights = read_kernels(data)
    liver_network_from_arrays(weights)  # shapes checked against the network before anything is written
    dtype = np.float32 if args.float32 else np.float16
    out = Path(args.out)
    write_npz(weights, out, dtype)
    worst = max(float(np.max(np.abs(w.astype(dtype).astype(np.float32) - w))) for w in weights.values())
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {dtype.__name__}, "
          f"{sum(w.size for w in weights.values())} parameters, largest rounding {worst:.2e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
