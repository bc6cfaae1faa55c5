"""What `prepare` wrote: :class:`PreparedScene` and its ``scene.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affine import Affine

from eoforge.config import IGNORE_INDEX
from eoforge.errors import InputError
from eoforge.geo import Grid


@dataclass(frozen=True)
class PreparedScene:
    """What `prepare` wrote: paths and the scene metadata every later stage needs."""

    root: Path
    grid: Grid
    bands: list[str]
    class_ids: list[int]
    class_names: list[str]
    colors: list[str]
    mean: list[float]
    std: list[float]
    class_counts: list[int]
    sources: list[Any]
    nodata: float | list[float | None] | None
    nodata_rule: str = "all"
    lost_to_nodata: list[int] | None = None
    band_descriptions: list[str] | None = None
    recipe: dict[str, Any] | None = None
    normalization: dict[str, Any] | None = None
    label_facts: dict[str, Any] | None = None
    """What prepare found in the labels: rows, rows without class/geometry, geometry types, repaired polygons,
    classes without pixels (shown in the report)."""
    temporal: dict[str, Any] | None = None  # time stacks: dates, dropped_dates (valid fraction), interpolate
    band_stats: dict[str, list[float]] | None = None
    band_gaps: dict[str, float] | None = None
    """Under ``nodata_rule: all``: per band, the share of the valid pixels where it is nodata (filled with its
    mean there); bands without gaps are left out. None: not recorded (older scenes, the pooled record)."""
    scenes: list[str] | None = None
    """With ``inputs.scenes``: this record covers the run (pooled statistics, summed class counts, the first
    scene's grid) and each scene is prepared in ``root/<name>/`` (:meth:`parts`)."""

    def parts(self) -> list[tuple[str, PreparedScene]]:
        """``(name, scene)`` of every prepared scene: this one (name ``""``) when the run has one scene."""
        if not self.scenes:
            return [("", self)]
        return [(name, PreparedScene.load(self.root / name)) for name in self.scenes]

    @property
    def image(self) -> Path:
        return self.root / "image.tif"

    @property
    def labels(self) -> Path:
        return self.root / "labels.tif"

    def to_json(self) -> dict[str, Any]:
        return {
            "grid": {
                "crs": self.grid.crs,
                "transform": list(self.grid.transform)[:6],
                "height": self.grid.height,
                "width": self.grid.width,
            },
            "bands": self.bands,
            "classes": [
                {"index": i, "id": cid, "name": n, "color": c, "pixels": k, "lost_to_nodata": lost}
                for i, (cid, n, c, k, lost) in enumerate(
                    zip(
                        self.class_ids,
                        self.class_names,
                        self.colors,
                        self.class_counts,
                        self.lost_to_nodata or [0] * len(self.class_ids),
                        strict=True,
                    )
                )
            ],
            "ignore_index": IGNORE_INDEX,
            "stats": {"mean": self.mean, "std": self.std},
            "sources": self.sources,
            "nodata": self.nodata,
            "nodata_rule": self.nodata_rule,
            "band_descriptions": self.band_descriptions,
            "recipe": self.recipe,
            "normalization": self.normalization,
            "label_facts": self.label_facts,
            **({"band_stats": self.band_stats} if self.band_stats is not None else {}),
            **({"band_gaps": self.band_gaps} if self.band_gaps is not None else {}),
            **({"scenes": self.scenes} if self.scenes is not None else {}),
        } | ({"temporal": self.temporal} if self.temporal else {})

    @classmethod
    def load(cls, root: str | Path) -> PreparedScene:
        root = Path(root)
        meta_path = root / "scene.json"
        if not meta_path.is_file():
            raise InputError(f"{meta_path}: not found; run `eoforge prepare` first")
        m = json.loads(meta_path.read_text())
        g = m["grid"]
        return cls(
            root=root,
            grid=Grid(g["crs"], Affine(*g["transform"]), g["height"], g["width"]),
            bands=m["bands"],
            class_ids=[c["id"] for c in m["classes"]],
            class_names=[c["name"] for c in m["classes"]],
            colors=[c["color"] for c in m["classes"]],
            mean=m["stats"]["mean"],
            std=m["stats"]["std"],
            class_counts=[c["pixels"] for c in m["classes"]],
            sources=m["sources"],
            nodata=m["nodata"],
            nodata_rule=m.get("nodata_rule", "any"),  # scenes prepared before the rule existed used 'any'
            lost_to_nodata=[int(c.get("lost_to_nodata", 0)) for c in m["classes"]],
            band_descriptions=m.get("band_descriptions"),
            recipe=m.get("recipe"),
            normalization=m.get("normalization"),
            label_facts=m.get("label_facts"),
            temporal=m.get("temporal"),
            band_stats=m.get("band_stats"),
            band_gaps=m.get("band_gaps"),
            scenes=m.get("scenes"),
        )
