"""The web front end in a real browser: `livertumorseg web` on a free loopback port, driven by
Debian's chromium through Playwright (executable_path: nothing downloads a browser).

The radiologist's loop end to end (upload CT and liver, Segment, the lesion table, paint a voxel
into the tumor segment, Add case, Retrain with a tiny budget, the new version in the model list,
back to the old one, download the result), with screenshots checked for content; and bad uploads
(a PNG, a 2D image) showing the command line's own message while the server keeps running.

Screenshots go to the test's tmp folder; LIVERTUMORSEG_WEB_SCREENSHOT=path also writes the
README's picture there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trame_slicer")
pytest.importorskip("slicer")
playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("LIVERTUMORSEG_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no system chromium at {CHROMIUM} (.ci/run installs it with apt-get)", allow_module_level=True)

PACKAGE_PARENT = Path(__file__).resolve().parents[1] / "LiverTumorSeg"
START_TIMEOUT_S = 60
SEGMENT_TIMEOUT_S = 180
TRAIN_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def not_blank(png: Path, min_std: float = 20.0, min_levels: int = 60) -> bool:
    """A picture with content: grey levels spread out (an empty slice view has std ~3, the empty 3D
    view's gradient ~8; a CT slice or the 3D surfaces 38 and more)."""
    from PIL import Image

    grey = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    return float(grey.std()) >= min_std and len(np.unique(grey.astype(np.uint8))) >= min_levels


def cli_error(path: Path) -> str:
    """The one line `livertumorseg segment` prints for a bad CT (run on the file's bare name)."""
    run = subprocess.run([sys.executable, "-m", "LiverTumorSegLib", "segment", path.name, "--out", "out.seg.nrrd"],
                         capture_output=True, text=True, cwd=path.parent,
                         env={**os.environ, "PYTHONPATH": str(PACKAGE_PARENT)})
    assert run.returncode == 2, run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), line
    return line[len("error: "):]


@pytest.fixture(scope="module")
def case(tmp_path_factory, data_dir):
    """A real CT (TotalSegmentator's small abdomen) with three synthetic tumors, and its liver."""
    from LiverTumorSegLib.storage import images
    from LiverTumorSegLib.data.synthesis import synthesize_tumors
    from LiverTumorSegLib.evaluation.test_sets import load_reference_cases

    folder = tmp_path_factory.mktemp("webcase")
    name, image, liver = load_reference_cases(data_dir)[0]
    ct, labels, _ = synthesize_tumors(image, liver, 7, n_tumors=(3, 3), radius_mm=(7.0, 16.0))
    images.write_image(ct, folder / "ct.nii.gz")
    images.write_labelmap(labels.with_array((labels.array > 0).astype(np.uint8)), folder / "liver.nii.gz")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`livertumorseg web` in its own process on a free loopback port; (url, process, start time, log)."""
    library = tmp_path_factory.mktemp("weblibrary")
    port = free_port()
    log_path = library.parent / "web-server.log"
    log = open(log_path, "w", encoding="utf-8")
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "LiverTumorSegLib", "web", "--port", str(port), "--library", str(library)],
        stdout=log, stderr=subprocess.STDOUT, cwd=PACKAGE_PARENT, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(PACKAGE_PARENT)},
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = started + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        if "LiverTumorSeg web: " in log_path.read_text(errors="replace"):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the server did not start in {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
    yield {"url": url, "process": process, "started": started, "log": log_path, "library": library}
    process.send_signal(signal.SIGINT)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1500, "height": 950}, accept_downloads=True)
    page = context.new_page()
    page.goto(server["url"])
    page.wait_for_selector("#lts-segment", timeout=START_TIMEOUT_S * 1000)
    yield page
    context.close()


def message(page) -> str:
    return page.inner_text("#lts-message") if page.locator("#lts-message").count() else ""


def wait_message(page, text: str, timeout_s: float) -> str:
    page.wait_for_selector(f"#lts-message:has-text({text!r})", timeout=timeout_s * 1000)
    return message(page)


def upload(page, which: str, path: Path) -> None:
    page.set_input_files(f"#upload-{which} input[type=file]", str(path))


def view_shots(page, folder: Path, prefix: str) -> list[Path]:
    """A screenshot of each of the four views (three slice views and 3D)."""
    images = page.locator("#lts-views img")
    assert images.count() == 4, images.count()
    shots = []
    for i in range(4):
        path = folder / f"{prefix}-view{i}.png"
        images.nth(i).screenshot(path=str(path))
        shots.append(path)
    return shots


def test_bad_upload_shows_the_command_line_message_and_the_server_keeps_running(page, server, tmp_path, totalseg_dir):
    import SimpleITK as sitk

    png = tmp_path / "photo.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((24, 24, 3), 128, np.uint8), isVector=True), str(png))
    flat = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((24, 24), np.int16)), str(flat))
    for bad in (png, flat):
        expected = cli_error(bad)
        upload(page, "ct", bad)
        shown = wait_message(page, bad.name, 30)
        assert shown == f"Could not load the CT: {expected}", shown
        assert server["process"].poll() is None, "the server died on a bad upload"
        assert "CT: none" in page.inner_text("#lts-ct-name")
    page.screenshot(path=str(tmp_path / "bad-upload.png"))
    # Still serving: a good CT loads (a DICOM series zipped in its folder), and a fresh page comes up.
    import zipfile

    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for dicom in sorted((totalseg_dir / "example_ct_dicom").iterdir()):
            zipped.write(dicom, f"example_ct_dicom/{dicom.name}")
    upload(page, "ct", archive)
    wait_message(page, "Loaded CT 'example_ct_dicom'", 60)
    # No liver mask: Segment finds the liver, shows it as a segment and takes it as the liver input.
    assert "Segment finds it" in page.inner_text("#lts-liver-name") and page.locator("#lts-segment").is_enabled()
    page.click("#lts-segment")
    wait_message(page, "lesion(s) found", SEGMENT_TIMEOUT_S)
    assert "found automatically" in page.inner_text("#lts-liver-name")
    other = page.context.new_page()
    other.goto(server["url"])
    other.wait_for_selector("#lts-segment", timeout=30000)
    other.close()


def test_the_whole_loop_in_the_browser(page, server, case, tmp_path):
    from LiverTumorSegLib.storage import images

    upload(page, "ct", case / "ct.nii.gz")
    wait_message(page, "Loaded CT 'ct'", 60)
    upload(page, "liver", case / "liver.nii.gz")
    wait_message(page, "Loaded the liver mask", 60)
    assert page.locator("#lts-segment").is_enabled()

    page.click("#lts-segment")
    page.wait_for_selector("#lts-segment-progress", timeout=10000)  # the progress bar while it runs
    found = wait_message(page, "lesion(s) found", SEGMENT_TIMEOUT_S)
    lesions = int(found.split(" lesion(s)")[0])
    rows = page.locator("#lts-lesions tr.lts-row")
    assert lesions >= 1 and rows.count() == lesions, (found, rows.count())
    assert "not corrected" in page.inner_text("#lts-tumor-status")

    rows.first.click()
    wait_message(page, "Views centred on lesion 1", 20)
    time.sleep(1.5)  # the views re-render after the jump
    shots = view_shots(page, tmp_path, "segmented")
    blank = [p.name for p in shots if not not_blank(p)]
    assert not blank, f"blank views: {blank} in {tmp_path}"
    screenshot = os.environ.get("LIVERTUMORSEG_WEB_SCREENSHOT")
    page.screenshot(path=str(tmp_path / "page-segmented.png"))
    if screenshot:
        page.screenshot(path=screenshot)
    assert not_blank(tmp_path / "page-segmented.png")

    # Correct: the Paint tool on the tumor segment, a short stroke in the axial view (bottom right),
    # below the lesion the views are centred on (inside the CT, beside the tumor: new tumor voxels).
    page.locator("#lts-editor button:has(i.mdi-brush)").first.click()
    axial = page.locator("#lts-views img").nth(3)
    box = axial.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.50, box["y"] + box["height"] * 0.64)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.53, box["y"] + box["height"] * 0.65, steps=4)
    page.mouse.up()
    page.wait_for_selector("#lts-tumor-status:has-text('corrected (edited')", timeout=20000)
    page.locator("#lts-editor button:has(i.mdi-cursor-default)").first.click()  # paint off

    page.click("#lts-add-case")
    added = wait_message(page, "Added case", 60)
    case_id = added.split("Added case ")[1].strip()
    assert "1 case(s)" in page.inner_text("#lts-case-count")
    assert case_id in page.inner_text("#lts-case-list")
    # Open and Remove follow the shared rules: blocked until a library case is chosen.
    assert not page.locator("#lts-open-case").is_enabled() and not page.locator("#lts-remove-case").is_enabled()
    page.locator(".v-select", has=page.locator("#lts-case-select")).locator(".v-field").click()
    page.locator(".v-overlay .v-list-item", has_text=case_id).first.click()
    page.wait_for_selector("#lts-remove-case:enabled", timeout=10000)
    assert page.locator("#lts-open-case").is_enabled()

    # Retrain with a tiny budget: a new version appears; Use it, then back to the shipped one.
    page.fill("#lts-train-steps", "2")
    page.fill("#lts-train-minutes", "1")
    page.click("#lts-retrain")
    page.wait_for_selector("#lts-train-progress", timeout=20000)
    page.wait_for_selector("#lts-train-text:has-text('New model')", timeout=TRAIN_TIMEOUT_S * 1000)
    version = page.inner_text("#lts-train-text").split("New model ")[1].split(":")[0]
    models = page.locator("#lts-models .lts-model")
    assert models.count() == 2, page.inner_text("#lts-models")
    before = page.inner_text("#lts-active-model")
    assert before == "Active model: default"
    models.filter(has_text=version).locator("button").click()
    page.wait_for_selector(f"#lts-active-model:has-text('{version}')", timeout=20000)
    assert (server["library"] / "models" / "ACTIVE").read_text().strip() == version
    models.filter(has_text="default").locator("button").click()  # rollback
    page.wait_for_selector("#lts-active-model:has-text('default')", timeout=20000)
    assert (server["library"] / "models" / "ACTIVE").read_text().strip() == "default"

    # Download the corrected result: a Slicer segmentation with the painted tumor.
    with page.expect_download(timeout=60000) as download:
        page.click("#lts-download-segmentation")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "ct-tumor.seg.nrrd"
    volume, segments = images.read_segmentation(saved)
    assert [s.name for s in segments] == ["Liver tumor"] and volume.array.any()
    page.screenshot(path=str(tmp_path / "page-end.png"))
    assert server["process"].poll() is None
