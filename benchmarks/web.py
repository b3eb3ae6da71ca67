"""The web front end's numbers (issue 12): first page after `livertumorseg web` starts, Segment of a
512 x 512 x 200 CT with its liver in the browser against the command line, and the server's memory.
Writes benchmarks/results/web.json.

    .venv/bin/python benchmarks/web.py                 # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/web.py --starts 1 --segments 1

First page: from starting the server process to the page's Segment button in Debian's chromium
(Playwright, headless), a fresh server each time; the page is opened as soon as the port accepts
a connection (polled with a plain socket, as a user would open it once the URL is printed). Segment: the command line is
`livertumorseg segment ct --liver liver --out x.seg.nrrd` (wall time: Python start, model load,
reading, the network, writing); the browser's is from clicking Segment to the lesion count in the
page (the Logic's Segment on a worker thread of the server, then the result put into the scene
with the closed surfaces and lesion table, the views re-render). `logic_background_segment_s`
times the Slicer panel's path too: a background `livertumorseg segment` process. The CT is
benchmarks/big_volume.py's synthetic one (0.75 x 0.75 x 1 mm, a 2 L liver, 6 tumors), uploaded
before the clock starts. Memory: the server's resident set (VmRSS, and its peak VmHWM) idle after
start, after the upload, and after Segment (the Segment's arrays are in it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PACKAGE_PARENT = REPO / "LiverTumorSeg"
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(PACKAGE_PARENT))

from benchcommon import log, machine, result_header, write_json  # noqa: E402

CHROMIUM = os.environ.get("LIVERTUMORSEG_CHROMIUM", "/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mib(pid: int) -> dict:
    """VmRSS and VmHWM (peak) of a process, MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = round(int(rest.split()[0]) / 1024.0, 1)
    return {"rss_mib": values.get("VmRSS"), "peak_mib": values.get("VmHWM")}


class Server:
    """`livertumorseg web` on a free loopback port, in its own process group."""

    def __init__(self, library: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.started = time.monotonic()
        self.ready = None  # seconds from start to the server's "LiverTumorSeg web: URL" line
        self.process = subprocess.Popen(
            [sys.executable, "-m", "LiverTumorSegLib", "web", "--port", str(self.port), "--library", str(library)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=PACKAGE_PARENT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(PACKAGE_PARENT)},
        )
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        """Note when the server says it listens (the page is built by then)."""
        while self.ready is None and self.process.poll() is None:
            if "LiverTumorSeg web: " in Path(self.log.name).read_text(errors="replace"):
                self.ready = time.monotonic() - self.started
                return
            time.sleep(0.02)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        Path(self.log.name).unlink(missing_ok=True)


def wait_listening(server: Server, timeout_s: float) -> None:
    """Until the server accepts a TCP connection (a plain socket: cheap, unlike asking the browser
    to load a page that is not there yet, which draws an error page every time and took a core
    from the starting server: the first runs of this benchmark did that)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline or server.process.poll() is not None:
                raise
            time.sleep(0.05)


def open_page(browser, server: Server, timeout_s: float = 120.0):
    """The page once its Segment button is there, opened as soon as the server listens."""
    page = browser.new_page(viewport={"width": 1500, "height": 950})
    wait_listening(server, timeout_s)
    page.goto(server.url, timeout=30000)
    page.wait_for_selector("#lts-segment", timeout=30000)
    return page


ALL_VIEWS_SHOWN = ("document.querySelectorAll('#lts-views img').length == 4 && Array.from(document.querySelectorAll("
                   "'#lts-views img')).every(i => i.complete && i.naturalWidth > 0)")


def wait_message(page, text: str, timeout_s: float) -> str:
    page.wait_for_selector(f"#lts-message:has-text({text!r})", timeout=timeout_s * 1000)
    return page.inner_text("#lts-message")


def cli_segment(ct: Path, liver: Path, out: Path) -> float:
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "LiverTumorSegLib", "segment", str(ct), "--liver", str(liver),
                          "--out", str(out), "--overwrite"], capture_output=True, text=True, cwd=PACKAGE_PARENT,
                         env={**os.environ, "PYTHONPATH": str(PACKAGE_PARENT)})
    elapsed = time.monotonic() - start
    if run.returncode != 0:
        raise SystemExit(f"livertumorseg segment failed:\n{run.stderr}")
    log(f"command line: {elapsed:.1f} s ({run.stdout.strip()})")
    return elapsed


def logic_breakdown(ct: Path, liver: Path) -> dict:
    """Where a background Segment's time goes without a browser: the Logic's startSegment (writes
    the CT and liver for the job), the job (`livertumorseg segment --prob`, all cores, as the web
    server runs it), finishSegment (reads the result back, puts it into the scene)."""
    import slicer

    from LiverTumorSegLib.slicer.logic import LiverTumorSegLogic

    logic = LiverTumorSegLogic(libraryPath=Path(tempfile.mkdtemp(prefix="web-bench-logic-")), scene=slicer.vtkMRMLScene())
    ctNode = logic.loadVolume(ct)
    liverNode, liverId = logic.loadLiverSegmentation(liver, ctNode)
    start = time.monotonic()
    job = logic.startSegment(ctNode, liverNode, liverId, threads=os.cpu_count() or 1)
    started = time.monotonic()
    while not job.finished:
        job.poll()
        time.sleep(0.05)
    ended = time.monotonic()
    logic.finishSegment(job)
    done = time.monotonic()
    return {"start_segment": round(started - start, 2), "job": round(ended - started, 2),
            "finish_segment": round(done - ended, 2), "total": round(done - start, 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3, help="fresh server starts timed (default 3)")
    parser.add_argument("--segments", type=int, default=2, help="Segment runs each way (default 2)")
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "web.json")
    parser.add_argument("--work", type=Path, default=BENCH_DIR / "work" / "web")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from big_volume import make_ct

    ct, liver = make_ct(args.slices, args.work)
    library = Path(tempfile.mkdtemp(prefix="web-bench-library-"))
    result = result_header("web", "web.py", "default", {"slices": args.slices, "matrix": 512, "starts": args.starts,
                                                         "segments": args.segments})
    result["machine"] = machine()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        first_pages, readies, views = [], [], []
        for i in range(args.starts):
            server = Server(library)
            try:
                page = open_page(browser, server)
                first_pages.append(round(time.monotonic() - server.started, 2))
                readies.append(round(server.ready, 2) if server.ready is not None else None)
                page.wait_for_function(ALL_VIEWS_SHOWN, timeout=60000)
                views.append(round(time.monotonic() - server.started, 2))
                log(f"first page {i + 1}: {first_pages[-1]:.2f} s after start (server listening at {readies[-1]} s, "
                    f"four views drawn at {views[-1]:.2f} s)")
                page.close()
            finally:
                server.stop()
        result["first_page_s"] = {"runs": first_pages, "median": statistics.median(first_pages),
                                  "server_listening_runs": readies, "views_drawn_runs": views,
                                  "views_drawn_median": statistics.median(views)}
        result["load_average_after_starts"] = [round(v, 2) for v in os.getloadavg()]

        cli_times, web_times, memory = [], [], {}
        server = Server(library)
        try:
            page = open_page(browser, server)
            time.sleep(2)
            memory["idle"] = memory_mib(server.process.pid)
            start = time.monotonic()
            page.set_input_files("#upload-ct input[type=file]", str(ct))
            wait_message(page, "Loaded CT", 600)
            page.set_input_files("#upload-liver input[type=file]", str(liver))
            wait_message(page, "Loaded the liver mask", 600)
            result["upload_ct_and_liver_s"] = round(time.monotonic() - start, 1)
            memory["after_upload"] = memory_mib(server.process.pid)
            for i in range(args.segments):
                cli_times.append(round(cli_segment(ct, liver, args.work / "cli.seg.nrrd"), 2))
                page.click("#lts-segment")
                start = time.monotonic()
                wait_message(page, "Segmenting in the background", 60)  # not the previous run's message
                shown = wait_message(page, "lesion(s) found", 900)
                web_times.append(round(time.monotonic() - start, 2))
                log(f"browser: {web_times[-1]:.1f} s ({shown})")
            memory["after_segment"] = memory_mib(server.process.pid)
            result["load_average_after_segments"] = [round(v, 2) for v in os.getloadavg()]
        finally:
            server.stop()
        browser.close()
    result["segment_512x512x%d_s" % args.slices] = {
        "command_line": {"runs": cli_times, "median": statistics.median(cli_times)},
        "browser": {"runs": web_times, "median": statistics.median(web_times)},
        "browser_minus_command_line_median": round(statistics.median(web_times) - statistics.median(cli_times), 2),
    }
    result["server_memory_mib"] = memory
    result["logic_background_segment_s"] = logic_breakdown(ct, liver)
    log(f"Logic's background Segment: {result['logic_background_segment_s']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    log(f"wrote {args.out}")
    print(json.dumps({k: result[k] for k in result if k not in ("machine", "config")}, indent=1))
    return result


if __name__ == "__main__":
    main()
