"""Parity of the PyTorch liver port (core/liver*.py) with the original Keras model of
pyliverlesionseg 0.3, run once; how Testing/Data/liver_reference.npz was made.

Two halves in two environments, because TensorFlow is never a project dependency:

1. `original`, in a side venv outside the repository (tensorflow, tf_keras, h5py, numba,
   nibabel, SimpleITK, scipy; pymirc's zoom3d.py read from its wheel): the package's own network
   code (architectures/unet_generalized.py, its Keras 2.2 imports pointed at tf_keras, nothing
   else changed) with the HDF5 weights loaded by Keras, the package's own preprocessing (pymirc
   zoom3d to 1.5 mm, median 3, zoom3d to 3 mm, clip) and post-processing
   (cnn_liver_pred_postprocess, run from its source), and its centred patch placement with the
   nearest-value fill of DeepVoxNet.predict. Its body-crop step is skipped (as in the port).
   Writes WORK/original_<case>.npz and the small test reference.

       SIDE/bin/python scripts/liver_parity.py original --wheel-dir /work/pyliver_x \
           --pymirc /work/pymirc_dl/pymirc/image_operations/zoom3d.py --work /work/parity

2. `compare`, in the project venv: the port on the same CTs; prints the max abs difference of
   the probability maps (same centred box) and each liver Dice against the true mask.

       .venv/bin/python scripts/liver_parity.py compare --work /work/parity [--weights X.npz]
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "Testing" / "Data" / "totalsegmentator"
REFERENCE = ROOT / "Testing" / "Data" / "liver_reference.npz"
HDF5 = "pyliverlesionseg/trained_models/model_unet_ct_mr_liv_seg_resize_1.5mm_med_3_resize_3mm_20201011_dice_loss_val_binary_dice_mean.hdf5"
CASES = {"ct_sm": ("example_ct_sm.nii.gz", "example_ct_sm_liver.nii.gz"),
         "ct_dicom": ("example_ct_dicom", "example_ct_dicom_liver.nii.gz")}
SEGMENT_SIZE = [163, 136, 136]
SMALL_OUTPUT = [28, 28, 28]  # the test reference: a 54^3 box of the small CT through the same weights


# ---- the original, in the side venv ------------------------------------------------------------
def keras_model(wheel_dir: Path, output_size):
    """The package's create_unet_like_model with the liver network's arguments
    (cnn_liver_lesion_seg_CT_MR_functions.unet_liver_predict), Keras 2.2 imports -> tf_keras."""
    source = (wheel_dir / "pyliverlesionseg/architectures/unet_generalized.py").read_text()
    source = source.replace("from keras.models import", "from tf_keras.models import")
    source = source.replace("from keras.layers import", "from tf_keras.layers import")
    source = source.replace("from keras.layers.convolutional import", "from tf_keras.layers import")
    source = source.replace("from keras.layers.advanced_activations import", "from tf_keras.layers import")
    source = source.replace("from keras.layers.normalization import", "from tf_keras.layers import")
    source = source.replace("from keras import regularizers", "from tf_keras import regularizers")
    source = source.replace("from keras import backend as K", "from tf_keras import backend as K")
    namespace = {}
    exec(compile(source, "unet_generalized.py", "exec"), namespace)
    model = namespace["create_unet_like_model"](
        number_input_features=1,
        subsample_factors_per_pathway=[(1, 1, 1), (3, 3, 3), (9, 9, 9), (27, 27, 27)],
        kernel_sizes_per_pathway=[
            [[(3, 3, 1), (3, 3, 3)], [(3, 3, 3), (3, 3, 1)]],
            [[(3, 3, 1), (3, 3, 3)], [(3, 3, 3), (3, 3, 1)]],
            [[(3, 3, 1), (3, 3, 3)], [(3, 3, 3), (3, 3, 1)]],
            [[(3, 3, 3), (3, 3, 3)], []],
        ],
        number_features_per_pathway=[[[20, 40], [40, 20]], [[40, 80], [80, 40]], [[80, 160], [160, 80]], [[160, 160], []]],
        output_size=output_size, padding="same", upsampling="linear", mask_output=False, l2_reg=1e-5, verbose=False)
    model.load_weights(str(wheel_dir / HDF5))
    return model


def package_function(wheel_dir: Path, name: str, namespace: dict):
    """One function of cnn_liver_lesion_seg_CT_MR_functions.py, run from its source (the module
    itself imports pynetdicom, pymirc's DICOM reader and more)."""
    path = wheel_dir / "pyliverlesionseg/cnn_liver_lesion_seg_CT_MR_functions.py"
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    exec(compile(ast.Module([node], []), str(path), "exec"), namespace)
    return namespace[name]


def read_lps_xyz(path: Path):
    """CT as the original reads it: an LPS array indexed (x, y, z) and the voxel size (mm)."""
    if path.is_dir():
        import SimpleITK as sitk

        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        image = reader.Execute()
        assert np.allclose(image.GetDirection(), np.eye(3).ravel()), "only axial identity-direction series here"
        return sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float64), np.array(image.GetSpacing())
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    vol = np.asanyarray(img.dataobj)
    return np.flip(vol, [0, 1]), np.asarray(img.header["pixdim"][1:4])


def original_preprocess(vol, voxsize, zoom3d):
    from scipy.ndimage import median_filter

    target_1, target_2 = np.array([1.5, 1.5, 1.5]), np.array([3.0, 3.0, 3.0])
    resized = zoom3d(vol, voxsize / target_1, cval=0)
    med = median_filter(resized, size=3)
    med = zoom3d(med, target_1 / target_2, cval=0)
    med = np.clip(med / 1000, -0.2, 0.2) * 2.5
    return np.flip(med, [0, 1])


def centred_prediction(model, image, input_size):
    """DeepVoxNet.predict with center sampling: one box centred on the image (ExtractSegment3D2,
    zero outside), its output placed around the centre, the rest of the image filled with the
    nearest predicted value."""
    from scipy import ndimage

    centre = [math.ceil((n - 1) / 2) for n in image.shape]
    box = np.zeros(input_size, dtype=np.float32)
    src, dst = [], []
    for c, n, size in zip(centre, image.shape, input_size):
        start = c - size // 2
        a, b = max(start, 0), min(start + size, n)
        src.append(slice(a, b))
        dst.append(slice(a - start, b - start))
    box[tuple(dst)] = image[tuple(src)]
    out = model.predict(box[None, ..., None], batch_size=1, verbose=0)[0, ..., 0]
    fill = np.full(image.shape, np.nan, dtype=np.float64)
    src, dst = [], []
    for c, n, size, o in zip(centre, image.shape, input_size, out.shape):
        start = c - size // 2 + (size - o) // 2
        a, b = max(start, 0), min(start + o, n)
        dst.append(slice(a, b))
        src.append(slice(a - start, b - start))
    fill[tuple(dst)] = out[tuple(src)]
    return fill[tuple(ndimage.distance_transform_edt(np.isnan(fill), return_distances=False, return_indices=True))]


def run_original(args) -> None:
    import tensorflow as tf
    from scipy import ndimage

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    spec = importlib.util.spec_from_file_location("pymirc_zoom3d", args.pymirc)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    wheel = Path(args.wheel_dir)
    postprocess = package_function(wheel, "cnn_liver_pred_postprocess", {"np": np, "ndimage": ndimage, "time": __import__("time")})
    model = keras_model(wheel, SEGMENT_SIZE)
    input_size = tuple(model.input_shape[1:4])
    pools = [(layer.name, layer.pool_size) for layer in model.layers if "average_pooling" in layer.name]
    print("input", input_size, "output", model.output_shape[1:4], "average pools", pools)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for case, (ct_name, _liver) in CASES.items():
        vol, voxsize = read_lps_xyz(DATA / ct_name)
        image = original_preprocess(vol, voxsize, module.zoom3d).astype(np.float32)
        probability = centred_prediction(model, image, input_size)
        whole = tuple(slice(0, n) for n in vol.shape)  # the body crop skipped
        mask = postprocess(np.squeeze(probability), vol, whole, Th=0.5, flag_flip=True)
        np.savez_compressed(work / f"original_{case}.npz", image=image, probability=probability.astype(np.float32),
                            mask_lps_xyz=(mask > 0).astype(np.uint8), voxsize=voxsize)
        print(case, "3 mm grid", image.shape, "liver voxels", int((mask > 0).sum()))
        if case == "ct_sm":
            write_reference(wheel, image, mask)


def write_reference(wheel: Path, image: np.ndarray, mask: np.ndarray) -> None:
    """A 54^3 box of the small CT's network input around its liver and the original network's
    28^3 output on it (float16 input, so the port reads exactly what Keras read)."""
    small = keras_model(wheel, SMALL_OUTPUT)
    size = np.array(small.input_shape[1:4])
    liver = np.argwhere(np.flip(mask, [0, 1]) > 0)  # RAS like the image
    centre = np.round(liver.mean(axis=0)).astype(int) if len(liver) else np.array(image.shape) // 2
    start = centre - size // 2
    box = np.zeros(tuple(size), dtype=np.float32)
    src, dst = [], []
    for s, n, length in zip(start, size, image.shape):
        a, b = max(s, 0), min(s + n, length)
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    box[tuple(dst)] = image[tuple(src)]
    box16 = box.astype(np.float16)
    out = small.predict(box16.astype(np.float32)[None, ..., None], verbose=0)[0, ..., 0]
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    tmp = REFERENCE.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, input=box16, output=out.astype(np.float32), start=start.astype(np.int64))
    os.replace(tmp, REFERENCE)
    print("reference", REFERENCE, REFERENCE.stat().st_size, "bytes; start", start, "output range", out.min(), out.max())


# ---- the port, in the project venv ----------------------------------------------------------------
def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))


def run_compare(args) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "LiverTumorSeg"))
    from LiverTumorSegLib.core import liver, liver_grid
    from LiverTumorSegLib.core.liver_network import load_liver_network
    from LiverTumorSegLib.storage import images
    from LiverTumorSegLib.storage.modelstore import liver_model_path

    torch.set_num_threads(args.threads)
    network = load_liver_network(args.weights or liver_model_path())
    work = Path(args.work)
    report = {}
    for case, (ct_name, liver_name) in CASES.items():
        original = np.load(work / f"original_{case}.npz")
        ct = images.read_image(str(DATA / ct_name))
        truth = images.read_liver_mask(str(DATA / liver_name), reference=ct)
        image, frame = liver.network_input(ct)
        # The probability on the original's own centred box: the same numbers must come out.
        box = liver_grid.Patch(tuple(liver_grid.centred_start(n, s) for n, s in zip(image.shape, liver.INPUT_SIZE)),
                               liver.INPUT_SIZE, liver.MARGIN)
        with torch.inference_mode():
            out = network(torch.from_numpy(liver_grid.cut_patch(image, box.start, box.size))[None, None])[0, 0].numpy()
        total = np.zeros(image.shape, np.float32)
        count = np.zeros(image.shape, np.uint8)
        liver_grid.paste_output(total, count, out, box.output_start)
        covered = count > 0
        found = liver.find_liver(ct, network)
        original_mask = liver_grid.from_ras(np.flip(original["mask_lps_xyz"], [0, 1]), frame)  # LPS xyz -> RAS -> zyx
        report[case] = {
            "grid_3mm": list(image.shape),
            "input_max_abs_diff": float(np.abs(image - original["image"]).max()),
            "probability_max_abs_diff": float(np.abs(total[covered] - original["probability"][covered]).max()),
            "probability_abs_diff_median_p99": [float(q) for q in np.quantile(
                np.abs(total[covered] - original["probability"][covered]), [0.5, 0.99])],
            "voxels_on_other_side_of_0.5": int(((total > 0.5) != (original["probability"] > 0.5))[covered].sum()),
            "voxels_compared": int(covered.sum()),
            "dice_original": round(dice(original_mask, truth), 4),
            "dice_port": round(dice(found.mask.array, truth), 4),
            "dice_port_vs_original": round(dice(found.mask.array, original_mask), 4),
            "liver_ml_truth": round(float(truth.sum()) * ct.voxel_volume_mm3 / 1000, 1),
            "liver_ml_port": round(found.volume_ml, 1),
            "boxes": len(liver.patches(image)),
            "seconds": {k: round(v, 2) for k, v in found.seconds.items()},
        }
        print(case, json.dumps(report[case]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="half", required=True)
    p = sub.add_parser("original")
    p.add_argument("--wheel-dir", required=True, help="the unpacked pyliverlesionseg 0.3 wheel")
    p.add_argument("--pymirc", required=True, help="pymirc's image_operations/zoom3d.py")
    p.add_argument("--work", required=True)
    p = sub.add_parser("compare")
    p.add_argument("--work", required=True)
    p.add_argument("--weights", help="converted weights (default: the shipped float16 file)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    run_original(args) if args.half == "original" else run_compare(args)


if __name__ == "__main__":
    main()
