"""The map page in a real browser: headless Chromium uploads a scene, the prediction and legend show."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cdp import CHROMIUM, Browser
from conftest import write_tif

from eoforge.package import ClassInfo, PackageMeta, save_package

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs the Debian chromium package")

COLORS = {10: "#e31a1c", 20: "#33a02c", 30: "#1f78b4"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    import uvicorn
    from helpers import PickBand0

    from eoforge.serve import ServeSettings, create_app

    meta = PackageMeta(
        arch="test-pick-band0",
        encoder="none",
        bands=["b0", "b1", "b2"],
        mean=[0.0] * 3,
        std=[1.0] * 3,
        nodata=None,
        chip_size=32,
        classes=[ClassInfo(i, name, COLORS[i]) for i, name in ((10, "water"), (20, "forest"), (30, "urban"))],
        tile=64,
        overlap=16,
    )
    pkg = save_package(tmp_path / "model", PickBand0(3, 3), meta, {}, onnx=False)
    port = _free_port()
    srv = uvicorn.Server(
        uvicorn.Config(create_app(pkg, ServeSettings()), host="127.0.0.1", port=port, log_level="warning")
    )
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(timeout=20)


def test_drop_a_scene_see_the_prediction_and_legend(server: str, tmp_path: Path) -> None:
    from PIL import Image

    # band 0 picks the class: three vertical stripes (water | forest | urban); bands 1-2 give the image texture
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 0.4, (3, 96, 144)).astype(np.float32)
    a[0] = np.repeat(np.arange(144)[None, :] // 48, 96, 0).astype(np.float32)
    scene = write_tif(tmp_path / "scene.tif", a)
    with Browser() as b:
        b.goto(server + "/")
        b.wait_for("document.querySelectorAll('#legend li').length === 3")  # legend from GET /model
        b.set_file("#file", scene)
        status = b.wait_for(
            "(() => { const t = document.getElementById('status').textContent; "
            "return t.startsWith('done') || document.getElementById('status').className === 'error' ? t : ''; })()",
            timeout=60,
        )
        assert status == "done: scene.tif", status
        assert b.evaluate("document.getElementById('download').getAttribute('href')").endswith("/result")
        legend = b.evaluate("[...document.querySelectorAll('#legend li')].map(li => li.textContent)")
        assert [t.split(" ")[0].rstrip("0123456789.") for t in legend] == ["water", "forest", "urban"]
        assert all(t.endswith(" ha") for t in legend)  # areas from GET /jobs/{id}/result?format=json
        time.sleep(0.3)
        blended = b.screenshot(tmp_path / "map-page.png")  # default opacity 0.7: image shows through
        b.evaluate("(() => { const o = document.getElementById('opacity'); o.value = 1; "
                   "o.dispatchEvent(new Event('input')); })()")  # fmt: skip
        time.sleep(0.3)
        opaque = b.screenshot(tmp_path / "opaque.png")
        b.evaluate("document.getElementById('show-map').click()")  # hide the prediction
        time.sleep(0.3)
        hidden = b.screenshot(tmp_path / "hidden.png")
        assert b.errors() == []
    keep = os.environ.get("EOFORGE_SCREENSHOT_DIR")
    if keep:
        shutil.copy(blended, Path(keep) / "map-page.png")

    def pixels(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)

    for color in COLORS.values():
        rgb = tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))
        # each class colour covers a map stripe (far more than its 16x16 legend swatch)
        assert (pixels(opaque) == rgb).all(1).sum() > 2000, color
        assert (pixels(blended) == rgb).all(1).sum() < 1000, color  # only the legend swatch is exact
        assert (pixels(hidden) == rgb).all(1).sum() < 1000, color
