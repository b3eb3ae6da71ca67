"""Render Screenshot01.png from a real `livertumorseg segment` run (offscreen VTK, no Slicer needed).

The case: tumors synthesised (synthesis.synthesize_tumors, a seed the default model was not
built with) into one of the real TotalSegmentator CTs in Testing/Data. The command line segments
it with the shipped default model and scores it against the synthetic truth; the picture shows
an axial CT slice through the largest found lesion with the result over it (left) and a 3D view of
the liver and the found tumors (right), in Slicer's segment colours.

    .venv/bin/python scripts/render_screenshot.py            # writes Screenshot01.png
    .venv/bin/python scripts/render_screenshot.py --out /tmp/shot.png --case example_ct_dicom

Needs an OpenGL for offscreen rendering: the pip VTK wheel uses EGL (Mesa's libEGL) here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LiverTumorSeg"))

from LiverTumorSegLib.storage import images  # noqa: E402
from LiverTumorSegLib.data.synthesis import synthesize_tumors  # noqa: E402
from LiverTumorSegLib.evaluation.test_sets import load_reference_cases  # noqa: E402

WIDTH, HEIGHT = 1600, 800
WINDOW_HU = (-160.0, 240.0)
LIVER_RGB = np.array(images.LIVER_SEGMENT.color)
TUMOR_RGB = np.array(images.TUMOR_SEGMENT.color)
TRUTH_RGB = np.array((1.0, 0.85, 0.1))


def make_case(name: str, seed: int, folder: Path) -> dict:
    """Write ct.nrrd, liver.nrrd and truth.nrrd (0/1/2) for the chosen reference CT."""
    cases = {case_name: (image, liver) for case_name, image, liver in load_reference_cases(REPO / "Testing" / "Data")}
    if name not in cases:
        raise SystemExit(f"unknown case {name}; choose one of {', '.join(cases)}")
    image, liver = cases[name]
    ct, labels, tumors = synthesize_tumors(image, liver, seed, n_tumors=(3, 3), radius_mm=(7.0, 16.0))
    folder.mkdir(parents=True, exist_ok=True)
    images.write_image(ct, folder / "ct.nrrd")
    images.write_labelmap(labels.with_array((labels.array > 0).astype(np.uint8)), folder / "liver.nrrd")
    images.write_labelmap(labels, folder / "truth.nrrd")
    return {"case": name, "seed": seed, "tumors": len(tumors)}


def run_cli(*args: str) -> str:
    """`python -m LiverTumorSegLib ...` (the `livertumorseg` command); returns its stdout."""
    result = subprocess.run([sys.executable, "-m", "LiverTumorSegLib", *args], capture_output=True, text=True,
                            cwd=REPO / "LiverTumorSeg")
    if result.returncode != 0:
        raise SystemExit(f"livertumorseg {args[0]} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout.strip()


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, iterations=2)


def slice_rgb(ct, liver, tumor, truth, k: int, size: tuple[int, int]) -> np.ndarray:
    """Axial slice k as RGB (rows top->bottom), radiological view (patient right on the left,
    anterior up), scaled to fit `size` (w, h) with square pixels in mm."""
    from scipy import ndimage

    direction = np.asarray(ct.direction).reshape(3, 3)
    if not np.allclose(np.abs(direction), np.eye(3), atol=1e-3):
        raise SystemExit("the screenshot needs an axis-aligned CT")
    planes = [a[k].astype(np.float32) for a in (ct.array, liver, tumor, truth)]
    # LPS: +x is patient left (screen right), +y posterior (screen down); flip axes that run the other way.
    if direction[0, 0] < 0:
        planes = [p[:, ::-1] for p in planes]
    if direction[1, 1] < 0:
        planes = [p[::-1, :] for p in planes]
    sy, sx = ct.spacing_zyx[1], ct.spacing_zyx[2]
    h_mm, w_mm = planes[0].shape[0] * sy, planes[0].shape[1] * sx
    scale = min(size[0] / w_mm, size[1] / h_mm)
    zoom = (sy * scale, sx * scale)
    gray = ndimage.zoom(planes[0], zoom, order=1)
    masks = [ndimage.zoom(p, zoom, order=1) > 0.5 for p in planes[1:]]
    low, high = WINDOW_HU
    gray = np.clip((gray - low) / (high - low), 0.0, 1.0)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    liver_m, tumor_m, truth_m = masks
    rgb[tumor_m] = 0.45 * rgb[tumor_m] + 0.55 * TUMOR_RGB
    rgb[_outline(liver_m)] = LIVER_RGB
    rgb[_outline(tumor_m)] = TUMOR_RGB
    rgb[_outline(truth_m) & ~tumor_m] = TRUTH_RGB  # where the truth reaches beyond the result
    return rgb


def _image_actor(rgb: np.ndarray):
    import vtk
    from vtk.util import numpy_support

    h, w, _ = rgb.shape
    data = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)[::-1].reshape(-1, 3)  # VTK rows run bottom-up
    image = vtk.vtkImageData()
    image.SetDimensions(w, h, 1)
    array = numpy_support.numpy_to_vtk(np.ascontiguousarray(data), deep=1, array_type=vtk.VTK_UNSIGNED_CHAR)
    array.SetNumberOfComponents(3)
    image.GetPointData().SetScalars(array)
    actor = vtk.vtkImageActor()
    actor.GetMapper().SetInputData(image)
    return actor, (w, h)


def _surface(mask: np.ndarray, ijk_to_ras: np.ndarray, color, opacity: float):
    """Smoothed surface of a (z, y, x) mask in RAS mm."""
    import vtk
    from vtk.util import numpy_support

    nz, ny, nx = mask.shape
    image = vtk.vtkImageData()
    image.SetDimensions(nx + 2, ny + 2, nz + 2)
    image.SetOrigin(-1, -1, -1)
    padded = np.pad(mask.astype(np.uint8), 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(padded.ravel(), deep=1, array_type=vtk.VTK_UNSIGNED_CHAR))
    surface = vtk.vtkDiscreteFlyingEdges3D()
    surface.SetInputData(image)
    surface.SetValue(0, 1)
    smooth = vtk.vtkWindowedSincPolyDataFilter()
    smooth.SetInputConnection(surface.GetOutputPort())
    smooth.SetNumberOfIterations(30)
    smooth.SetPassBand(0.05)
    smooth.NormalizeCoordinatesOn()
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ijk_to_ras[r, c]))
    transform = vtk.vtkTransform()
    transform.SetMatrix(matrix)
    moved = vtk.vtkTransformPolyDataFilter()
    moved.SetInputConnection(smooth.GetOutputPort())
    moved.SetTransform(transform)
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(moved.GetOutputPort())
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOn()
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(normals.GetOutputPort())
    mapper.ScalarVisibilityOff()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*color)
    actor.GetProperty().SetOpacity(opacity)
    actor.GetProperty().SetSpecular(0.2)
    return actor


def _text(message: str, x: int, y: int, size: int, bold: bool = False):
    import vtk

    actor = vtk.vtkTextActor()
    actor.SetInput(message)
    actor.GetPositionCoordinate().SetCoordinateSystemToViewport()  # within its own renderer's half
    actor.GetPositionCoordinate().SetValue(x, y)
    prop = actor.GetTextProperty()
    prop.SetFontSize(size)
    prop.SetColor(1, 1, 1)
    prop.SetBold(bold)
    return actor


def render(ct, liver, tumor, truth, captions: dict, out: Path) -> None:
    import vtk

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(WIDTH, HEIGHT)
    window.SetMultiSamples(8)

    # Left: the axial slice through the largest found lesion.
    from scipy import ndimage

    labels, count = ndimage.label(tumor)
    if count:
        largest = 1 + int(np.argmax(ndimage.sum(tumor, labels, range(1, count + 1))))
        k = int(round(ndimage.center_of_mass(labels == largest)[0]))
    else:
        k = int(np.argmax(liver.sum(axis=(1, 2))))
    panel = (WIDTH // 2 - 40, HEIGHT - 130)
    actor, (w, h) = _image_actor(slice_rgb(ct, liver, tumor, truth, k, panel))
    left = vtk.vtkRenderer()
    left.SetViewport(0.0, 0.0, 0.5, 1.0)
    left.SetBackground(0.0, 0.0, 0.0)
    left.AddActor(actor)
    camera = left.GetActiveCamera()
    camera.ParallelProjectionOn()
    camera.SetFocalPoint(w / 2, h / 2 + 25, 0)
    camera.SetPosition(w / 2, h / 2 + 25, 1000)
    camera.SetParallelScale(HEIGHT / 2)
    left.AddViewProp(_text(captions["left_title"], 20, HEIGHT - 40, 22, bold=True))
    left.AddViewProp(_text(captions["left_legend"], 20, 18, 17))
    window.AddRenderer(left)

    # Right: 3D, liver see-through, found tumors solid, seen from the front and a little from the right.
    right = vtk.vtkRenderer()
    right.SetViewport(0.5, 0.0, 1.0, 1.0)
    right.SetBackground(0.08, 0.09, 0.12)
    right.SetBackground2(0.30, 0.32, 0.40)
    right.GradientBackgroundOn()
    matrix = ct.ijk_to_ras_matrix()
    # ijk_to_ras maps (i, j, k) = (x, y, z) voxel indices; the mask arrays are (z, y, x).
    right.AddActor(_surface(liver, matrix, LIVER_RGB, 0.28))
    if tumor.any():
        right.AddActor(_surface(tumor, matrix, TUMOR_RGB, 1.0))
    right.ResetCamera()
    camera = right.GetActiveCamera()
    center = np.asarray(camera.GetFocalPoint())
    distance = np.linalg.norm(np.asarray(camera.GetPosition()) - center)
    camera.SetPosition(*(center + np.array([0.0, distance, 0.0])))  # anterior, looking posterior
    camera.SetViewUp(0, 0, 1)
    camera.Azimuth(-35)  # towards the patient's right, where the liver is
    camera.Elevation(20)
    camera.OrthogonalizeViewUp()
    right.ResetCamera()
    camera.Zoom(1.05)
    right.AddViewProp(_text(captions["right_title"], 20, HEIGHT - 40, 22, bold=True))
    right.AddViewProp(_text(captions["right_legend"], 20, 18, 17))
    window.AddRenderer(right)

    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(out))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="example_ct_sm", help="reference CT (Testing/Data/totalsegmentator)")
    parser.add_argument("--seed", type=int, default=2026, help="tumor synthesis seed (the default model used 0-based seeds)")
    parser.add_argument("--work", default=str(REPO / "build" / "screenshot"), help="scratch folder")
    parser.add_argument("--out", default=str(REPO / "Screenshot01.png"))
    args = parser.parse_args()

    work = Path(args.work)
    info = make_case(args.case, args.seed, work)
    summary = run_cli("segment", str(work / "ct.nrrd"), "--liver", str(work / "liver.nrrd"), "--out", str(work / "tumor.nrrd"),
                      "--prob", str(work / "prob.nrrd"), "--lesions", str(work / "lesions.csv"), "--overwrite")
    scores = json.loads(run_cli("evaluate", str(work / "tumor.nrrd"), str(work / "truth.nrrd"), "--liver", str(work / "liver.nrrd")))
    ct = images.read_image(work / "ct.nrrd")
    liver = images.read_labels(work / "liver.nrrd", reference=ct).array > 0
    tumor = images.read_labels(work / "tumor.nrrd", reference=ct).array > 0
    truth = images.read_labels(work / "truth.nrrd", reference=ct).array == 2
    dice = scores.get("dice")
    found = summary.split(",")[0]
    captions = {
        "left_title": "CT with the Segment result (default model)",
        "left_legend": (f"{args.case} (real CT, TotalSegmentator test data) + {info['tumors']} synthetic tumors, seed {args.seed}\n"
                        "green: found tumors   orange: liver outline   yellow: synthetic truth outline"),
        "right_title": f"Liver and found tumors: {found}",
        "right_legend": ("Dice against the synthetic truth: " + ("n/a" if dice is None else f"{dice:.2f}")
                         + "\nrendered offscreen with VTK from `livertumorseg segment` output"),
    }
    render(ct, liver, tumor, truth, captions, Path(args.out))
    (work / "screenshot.json").write_text(json.dumps({**info, "segment": summary, "scores": scores}, indent=2))
    print(f"{args.out}: {summary}; Dice {dice}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
