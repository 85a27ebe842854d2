"""Running the real review server and driving it in Debian's Chromium (Playwright), for the browser tests
and the web app benchmark.

The server is the ``layer-ensembles review`` command in a child process on a free loopback port; the
browser is ``/usr/bin/chromium`` (never a Playwright download). Views reach the page as JPEG frames in
``<img class="image-display-area">``: a check waits until each has a decoded frame with non-uniform pixels.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LayerEnsemblesSegmentation"
DEMO_MODEL = MODULE_DIR / "Resources" / "Models" / "hippocampus_le3d.pt"
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--metrics-recording-only",
]
VIEW_SELECTOR = "img.image-display-area"


def browser_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.is_file():
        return (
            "Debian's Chromium is not installed at /usr/bin/chromium "
            "(apt-get install -y chromium, as .ci/run does)"
        )
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ReviewServer:
    """``layer-ensembles review`` in a child process; ``url`` once it answers."""

    def __init__(
        self,
        inputs: list[Path],
        out: Path,
        model: Path = DEMO_MODEL,
        extra: list[str] | None = None,
        log: Path | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.out = out
        self.log_path = log or out.parent / f"server-{self.port}.log"
        environment = dict(
            os.environ,
            PYTHONPATH=str(MODULE_DIR),
            VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow",
            PYTHONUNBUFFERED="1",
        )
        command = [
            sys.executable,
            "-m",
            "LayerEnsemblesLib.cli",
            "review",
            *map(str, inputs),
            "--model",
            str(model),
            "--out",
            str(out),
            "--port",
            str(self.port),
            *(extra or []),
        ]
        self.started = time.monotonic()
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )

    def wait_ready(self, timeout: float = 120.0, query: str = "") -> float:
        """Seconds from start until the page answers (redirects followed; ``query``: e.g. the token)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"review server exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + query, timeout=2) as response:  # follows the 302
                    if response.status == 200:
                        return time.monotonic() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"review server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(line for line in text.splitlines() if line.strip())[-4000:]

    def kill(self) -> None:
        """As a crash would: SIGKILL, no clean-up (the review file must already hold everything)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self._log.close()

    def rss_bytes(self) -> int:
        """Resident memory of the server process tree (the engine child included while it runs)."""
        total = 0
        pids = [self.process.pid]
        children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        pids += [int(pid) for pid in children.stdout.split()]
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                continue
        return total


def copy_cases(source: Path, names: list[str], target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in names:
        copies.append(Path(shutil.copy2(source / "imagesTr" / f"{name}.nii.gz", target / f"{name}.nii.gz")))
    return copies


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)


def view_image(page, index: int) -> np.ndarray:
    """The view's current frame as an (h, w, 3) uint8 array (an element screenshot of its <img>)."""
    from PIL import Image

    png = page.locator(VIEW_SELECTOR).nth(index).screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def views_drawn(page) -> list[int]:
    """Per view: the intensity range of its decoded frame (0 when not drawn yet or uniform)."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('img.image-display-area')).map(img => {
        if (!img.complete || !img.naturalWidth) return 0;
        const canvas = document.createElement('canvas');
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const context = canvas.getContext('2d');
        context.drawImage(img, 0, 0);
        const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
        let low = 255, high = 0;
        for (let i = 0; i < data.length; i += 4) {
            low = Math.min(low, data[i]); high = Math.max(high, data[i]);
        }
        return high - low; })""")


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if (last is not None) if isinstance(last, np.ndarray) else bool(last):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {message} (last: {last!r})")


def wait_views(page, count: int = 3, timeout: float = 60.0) -> list[int]:
    page.wait_for_selector(VIEW_SELECTOR, timeout=timeout * 1000)
    return wait_until(
        lambda: (lambda r: r if len(r) >= count and all(v > 0 for v in r[:count]) else None)(
            views_drawn(page)
        ),
        timeout,
        message="slice views drawn with non-uniform pixels",
    )


def state(page, name: str):
    return page.evaluate(f"() => window.trame.state.get({json.dumps(name)})")


def wait_cases_done(page, count: int, timeout: float = 240.0) -> list[dict]:
    def done():
        rows = state(page, "le_rows") or []
        scored = [row for row in rows if row["score"] is not None]
        return (
            rows
            if len(scored) >= count and not state(page, "le_running") and state(page, "le_has_result")
            else None
        )

    return wait_until(done, timeout, 0.5, f"{count} cases segmented and one shown")


def wait_frame_change(
    page, index: int, before: np.ndarray, timeout: float = 10.0, interval: float = 0.3
) -> np.ndarray:
    """The view's frame once it differs from ``before`` (frames stream asynchronously)."""

    def changed():
        now = view_image(page, index)
        return now if now.shape != before.shape or np.abs(now.astype(int) - before).max() > 40 else None

    return wait_until(changed, timeout, interval, f"view {index} to redraw")


def wait_frame_stable(page, index: int, timeout: float = 20.0, pause: float = 0.7) -> np.ndarray:
    """The view's frame once two captures ``pause`` seconds apart are identical (no redraw pending)."""
    previous = [view_image(page, index)]

    def stable():
        page.wait_for_timeout(pause * 1000)
        now = view_image(page, index)
        same = now.shape == previous[0].shape and np.array_equal(now, previous[0])
        previous[0] = now
        return now if same else None

    return wait_until(stable, timeout, 0.0, f"view {index} to settle")


def read_review(out: Path) -> dict[str, dict]:
    path = out / "review.json"
    if not path.is_file():
        return {}
    return {row["case"]: row for row in json.loads(path.read_text())["cases"]}


def assert_only_the_stroke_changed(before: np.ndarray, after: np.ndarray, painted: int = 1) -> None:
    """``after`` is ``before`` plus one paint stroke in an axial view, and nothing else: some voxels
    changed, all to the painted segment's label, all in one axial slice, and no foreground was lost."""
    changed = before != after
    assert changed.any(), "the stroke painted nothing"
    assert np.all(after[changed] == painted), "a changed voxel is not the painted segment"
    slices = np.unique(np.nonzero(changed)[0])
    assert len(slices) == 1, f"the stroke changed voxels in slices {slices.tolist()}, not in one"
    lost = int(np.count_nonzero((before > 0) & (after == 0)))
    assert lost == 0, f"{lost} foreground voxel(s) the reviewer did not touch were lost"


def model_labels(review_row: dict) -> np.ndarray:
    """The model's segmentation of a reviewed case, from its results bundle with the case's kept heads."""
    import SimpleITK as sitk
    from LayerEnsemblesLib.inference.bundle import load_bundle

    first, last = (int(v) for v in review_row["kept_heads"].split("-"))
    prediction = load_bundle(review_row["bundle"], device="cpu", head_range=(first - 1, last))
    return sitk.GetArrayFromImage(prediction.segmentation)
