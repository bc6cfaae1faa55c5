"""Point labels: burnt on the right pixels (any CRS), conflicts unlabelled, and they train a pixel MLP."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
from conftest import CRS, TRANSFORM
from shapely.geometry import Point

import eoforge.temporal.models  # noqa: F401  (registers pixel-mlp)
from eoforge.errors import InputError
from eoforge.models import create_model
from eoforge.points import burn_points, read_points
from eoforge.tasks import get_task

CLASSES = {10: "water", 20: "land"}


def centre(row: int, col: int) -> tuple[float, float]:
    x, y = TRANSFORM * (col + 0.5, row + 0.5)
    return float(x), float(y)


def test_points_land_on_their_pixels_in_any_crs(tmp_path: Path) -> None:
    pts = [(*centre(3, 5), 10), (*centre(10, 1), "land"), (*centre(7, 7), 10), (*centre(7, 7), 20)]
    csv = tmp_path / "p.csv"
    csv.write_text("x,y,cls\n" + "".join(f"{x},{y},{c}\n" for x, y, c in pts) + "1e7,1e7,10\n")
    burnt = burn_points(read_points(csv, "cls", crs=CRS), "cls", CLASSES, TRANSFORM, (16, 16), CRS)
    assert burnt[3, 5] == 0 and burnt[10, 1] == 1
    assert burnt[7, 7] == 255  # two classes in one pixel: unlabelled
    assert int((burnt != 255).sum()) == 2
    gdf = gpd.GeoDataFrame({"cls": [20]}, geometry=[Point(centre(12, 9))], crs=CRS).to_crs("EPSG:4326")
    gdf.to_file(tmp_path / "p.gpkg")
    again = burn_points(read_points(tmp_path / "p.gpkg", "cls"), "cls", CLASSES, TRANSFORM, (16, 16), CRS)
    assert again[12, 9] == 1 and int((again != 255).sum()) == 1
    with pytest.raises(InputError, match="needs its CRS"):
        read_points(csv, "cls")
    with pytest.raises(InputError, match="point class '30'"):
        bad = gpd.GeoDataFrame({"cls": [30]}, geometry=[Point(centre(1, 1))], crs=CRS)
        burn_points(bad, "cls", CLASSES, TRANSFORM, (16, 16), CRS)


def test_point_labels_train_a_pixel_mlp() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    h = w = 32
    truth = (np.arange(w)[None, :] >= 16).repeat(h, 0).astype(np.int64)  # left water, right land
    image = np.stack([truth * 1.0, 1 - truth * 1.0]) + rng.normal(0, 0.3, (2, h, w))
    mask = np.full((h, w), 255, dtype=np.int64)
    rows, cols = rng.integers(0, h, 40), rng.integers(0, w, 40)
    mask[rows, cols] = truth[rows, cols]  # 40 labelled points out of 1024 pixels
    task = get_task("pixel")
    model = create_model("pixel-mlp", 2, 2, "w16")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.from_numpy(image).float()[None]
    y = torch.from_numpy(mask)[None]
    loss_fn = task.loss()
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn(model(x), task.target(y))
        loss.backward()
        opt.step()
    model.eval()
    pred = task.predict(model(x))[0].numpy()
    assert (pred == truth).mean() > 0.9  # every pixel, not only the 40 labelled ones
