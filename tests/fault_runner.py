"""`python tests/fault_runner.py ARGS...` = `eoforge ARGS...` with the test models registered and an optional
pause at a chosen point, so a test can send a signal there (EOFORGE_TEST_PAUSE=point, EOFORGE_TEST_MARKER=file).

Points: ``prepare`` (the prepared stack is in its temporary folder, scene.json not yet written), ``fit`` (inside
Lightning's training loop, first training batch), ``predict`` (the class map is in its temporary files, the COG
copy not yet made). At the point the runner writes the marker file and sleeps until a signal ends it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import helpers

POINT = os.environ.get("EOFORGE_TEST_PAUSE", "")
MARKER = os.environ.get("EOFORGE_TEST_MARKER", "")


def pause() -> None:
    with open(MARKER, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)


def install() -> None:
    if POINT == "prepare":
        real_write = Path.write_text

        def write_text(self: Path, *args: Any, **kw: Any) -> int:
            if self.name == "scene.json" and ".tmp" in self.parent.name:
                pause()
            return real_write(self, *args, **kw)

        Path.write_text = write_text  # type: ignore[method-assign]
    elif POINT == "fit":
        real_forward = helpers.TinyConv.forward
        calls = [0]

        def forward(self: helpers.TinyConv, x: Any) -> Any:
            if self.training:
                calls[0] += 1
                if calls[0] == 1:
                    pause()
            return real_forward(self, x)

        helpers.TinyConv.forward = forward  # type: ignore[method-assign]
    elif POINT == "predict":
        import rasterio.shutil

        real_copy = rasterio.shutil.copy

        def copy(*args: Any, **kw: Any) -> Any:
            pause()
            return real_copy(*args, **kw)

        rasterio.shutil.copy = copy


if __name__ == "__main__":
    install()
    from eoforge.cli import main

    main(sys.argv[1:])
