"""Strict, documented configuration: one pydantic model per stage, composed into :class:`RunConfig`.

Unknown keys are errors (``extra="forbid"``); every field carries a description. Relative paths in a YAML
file are resolved against the file's folder. The resolved config is saved with every run and model.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eoforge.errors import InputError

IGNORE_INDEX = 255
"""Class index of unlabelled pixels in prepared labels, chips and training targets."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelsConfig(_Strict):
    path: Path = Field(description="Vector file (any OGR format) or single-band raster holding the labels.")
    column: str | None = Field(
        default=None,
        description="Attribute column of a vector file holding class ids or class names (vectors need this "
        "or `value`).",
    )
    value: int | None = Field(
        default=None,
        description="Class id burnt for every polygon of a vector file, instead of a column: outlines of one "
        "thing (glaciers, buildings); combine with `background` for a binary mask.",
    )
    ignore_unknown: bool = Field(
        default=False,
        description="Treat label values that are not listed in `classes` as unlabelled instead of failing.",
    )
    background: int | None = Field(
        default=None,
        description="Class id burnt where no polygon lies (vector labels); by default such pixels are unlabelled.",
    )
    all_touched: bool = Field(
        default=False,
        description="Burn every pixel a polygon touches, not only those whose centre is inside.",
    )

    @model_validator(mode="after")
    def _column_or_value(self) -> LabelsConfig:
        if self.column is not None and self.value is not None:
            raise ValueError("give either column or value, not both")
        return self


class InputsConfig(_Strict):
    images: list[str] = Field(
        description="Raster files or glob patterns, stacked band-wise in the order given (globs sorted)."
    )
    bands: list[str] | None = Field(
        default=None, description="Band names in stack order (STAC eo common names where known)."
    )
    nodata: float | None = Field(
        default=None, description="Nodata value for every input band; by default each file's own nodata."
    )
    labels: LabelsConfig = Field(description="Where the training labels are.")
    classes: dict[int, str] = Field(description="Class id -> class name, for every class in the labels.")
    colors: dict[int, str] | None = Field(
        default=None, description="Class id -> colour as '#rrggbb' for maps and plots (a palette by default)."
    )

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, v: dict[int, str]) -> dict[int, str]:
        if len(v) < 2:
            raise ValueError("list at least two classes")
        if len(v) >= IGNORE_INDEX:
            raise ValueError(f"at most {IGNORE_INDEX - 1} classes are supported")
        if any(k < 0 or k > 65534 for k in v):
            raise ValueError("class ids must be between 0 and 65534")
        return dict(sorted(v.items()))

    @model_validator(mode="after")
    def _label_ids_are_classes(self) -> InputsConfig:
        for key in ("value", "background"):
            v = getattr(self.labels, key)
            if v is not None and v not in self.classes:
                raise ValueError(f"labels.{key} {v} is not a class id; use one of {list(self.classes)}")
        return self


class RegionsConfig(_Strict):
    path: Path = Field(
        description="Vector file (any OGR format) of regions; each chip goes to the split of the region that "
        "holds it (chips touching regions of two splits, or outside every region, are dropped)."
    )
    column: str = Field(default="split", description="Column naming each region's split: train, val or test.")


class SplitConfig(_Strict):
    mode: Literal["blocks", "random", "regions"] = Field(
        default="blocks",
        description="blocks: whole spatial blocks go to one split; random: each chip drawn at random (warns: "
        "neighbouring chips of different splits leak spatially); regions: the split named by `regions`.",
    )
    val: float = Field(default=0.15, ge=0.0, lt=1.0, description="Fraction of chips for validation.")
    test: float = Field(default=0.15, ge=0.0, lt=1.0, description="Fraction of chips for the test split.")
    block_size: int | None = Field(
        default=None,
        gt=0,
        description="Side in pixels of the spatial blocks that are assigned to one split as a whole; a chip "
        "whose footprint (grown by half the buffer) touches blocks of two splits is dropped, so no pixel is "
        "shared between splits. Default: 2 x chip size.",
    )
    buffer: int = Field(
        default=0,
        ge=0,
        description="Minimum gap in pixels between chips of different splits (every mode); checked after each "
        "chips run.",
    )
    regions: RegionsConfig | None = Field(
        default=None, description="Regions naming the split of each area (mode: regions)."
    )
    seed: int = Field(default=0, description="Random seed of the block or chip assignment.")

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.mode != "regions" and self.val + self.test >= 0.9:
            raise ValueError("val + test must leave at least 10% of the chips for training")
        if (self.mode == "regions") != (self.regions is not None):
            raise ValueError("give split.regions exactly when split.mode is 'regions'")
        return self


class BalanceConfig(_Strict):
    min_share: float = Field(
        default=0.05,
        gt=0.0,
        lt=0.5,
        description="Target share of labelled pixels for every class present in the scene: chips richest in "
        "the classes below it are added (they may overlap) until each class reaches it or no chip is left.",
    )


class PointsConfig(_Strict):
    per_class: int = Field(
        gt=0, description="Labelled pixels sampled per class and split (all of them where a class has fewer)."
    )
    seed: int = Field(default=0, description="Random seed of the point sample.")


class ChipsConfig(_Strict):
    size: int = Field(default=128, ge=32, description="Chip side in pixels (a multiple of 32 for U-Net).")
    stride: int | None = Field(
        default=None, gt=0, description="Step between grid chips in pixels (default: size)."
    )
    sampler: Literal["grid", "random", "balanced"] = Field(
        default="grid",
        description="grid: a chip every `stride` px, the last row and column shifted to the scene edge; random: "
        "`count` chips at seeded random places; balanced: the grid chips plus chips rich in rare classes until "
        "every class reaches `balance.min_share` of the labelled pixels.",
    )
    count: int | None = Field(default=None, gt=0, description="Number of chips drawn by the random sampler.")
    seed: int = Field(default=0, description="Random seed of the random and balanced samplers.")
    min_valid: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Minimum fraction of non-nodata image pixels in a chip (all-nodata chips are always dropped).",
    )
    min_labelled: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Minimum fraction of labelled pixels in a chip (nodata pixels count as unlabelled); chips "
        "without any labelled pixel are always dropped.",
    )
    balance: BalanceConfig = Field(
        default_factory=BalanceConfig, description="Target class shares of the balanced sampler."
    )
    points: PointsConfig | None = Field(
        default=None,
        description="Also store a stratified sample of labelled pixels per class and split in points.parquet "
        "(GeoParquet, band values included) for pixel models.",
    )
    split: SplitConfig = Field(default_factory=SplitConfig, description="Spatially disjoint splits.")

    @model_validator(mode="after")
    def _count(self) -> ChipsConfig:
        if self.sampler == "random" and self.count is None:
            raise ValueError("chips.sampler 'random' needs chips.count (the number of chips)")
        return self

    @field_validator("size")
    @classmethod
    def _mult32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"chip size must be a multiple of 32 (the U-Net downsamples 5 times), got {v}")
        return v


class ModelConfig(_Strict):
    arch: str = Field(default="unet", description="Model name in the registry (`eoforge models` lists them).")
    encoder: str = Field(default="resnet18", description="Encoder name (segmentation-models-pytorch).")
    weights: str | None = Field(
        default=None,
        description="Pretrained weights: a local file or an http(s) URL (downloaded once into the cache, "
        "$EOFORGE_CACHE or ~/.cache/eoforge). A state dict of the encoder or of the whole model; none by default.",
    )
    weights_sha256: str | None = Field(
        default=None,
        description="Expected SHA-256 (or a prefix of it) of the weights file; checked when given.",
    )


class TrainConfig(_Strict):
    epochs: int = Field(default=20, ge=1, description="Maximum number of epochs.")
    batch_size: int = Field(default=16, ge=1, description="Chips per batch.")
    lr: float = Field(default=1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay.")
    patience: int = Field(
        default=10, ge=1, description="Early stopping: epochs without val mIoU improvement."
    )
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = Field(
        default="32-true", description="Lightning precision; bf16-mixed is ~3x faster on CPUs with AMX."
    )
    accelerator: str = Field(default="auto", description="Lightning accelerator: auto, cpu, gpu.")
    devices: int | str = Field(default=1, description="Lightning devices (1, 2, 'auto').")
    seed: int = Field(default=0, description="Seed of weights init, shuffling and augmentation.")


class PredictConfig(_Strict):
    tile: int | None = Field(
        default=None, description="Inference window side in pixels (multiple of 32; default: 2 x chip size)."
    )
    overlap: int = Field(default=32, ge=0, description="Pixels shared by neighbouring windows.")
    batch_size: int = Field(default=8, ge=1, description="Windows per model call.")


class ComputeConfig(_Strict):
    scheduler: str | None = Field(
        default=None,
        description="Address of a running dask.distributed scheduler (tcp://host:8786) for prepare, chips and "
        "predict; results are identical whichever scheduler runs them.",
    )
    workers: int | None = Field(
        default=None, ge=1, description="Start a local Dask cluster of this many worker processes."
    )
    threads_per_worker: int = Field(default=1, ge=1, description="Threads of each local Dask worker.")
    connect_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to wait for compute.scheduler before failing."
    )

    @model_validator(mode="after")
    def _one_way(self) -> ComputeConfig:
        if self.scheduler is not None and self.workers is not None:
            raise ValueError(
                "give compute.scheduler (a running cluster) or compute.workers (a local one), not both"
            )
        return self


class RunConfig(_Strict):
    inputs: InputsConfig
    chips: ChipsConfig = Field(default_factory=ChipsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    compute: ComputeConfig = Field(
        default_factory=ComputeConfig, description="Dask scheduler used by the stages that scale out."
    )

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def with_compute(cfg: RunConfig, scheduler: str | None, workers: int | None) -> RunConfig:
    """``cfg`` with the CLI's ``--scheduler`` / ``--workers`` replacing its ``compute`` section when given."""
    if scheduler is None and workers is None:
        return cfg
    update = cfg.compute.model_dump() | {"scheduler": scheduler, "workers": workers}
    try:
        compute = ComputeConfig.model_validate(update)
    except ValidationError as exc:
        raise InputError(
            f"--scheduler/--workers: {exc.errors(include_url=False)[0]['msg']}; give one of them"
        ) from None
    return cfg.model_copy(update={"compute": compute})


def resolve_images(patterns: list[str]) -> list[Path]:
    """Expand globs (sorted) and check every file exists."""
    out: list[Path] = []
    for pat in patterns:
        if any(ch in pat for ch in "*?["):
            hits = sorted(glob.glob(pat))
            if not hits:
                raise InputError(f"{pat}: no file matches this pattern; check the path in inputs.images")
            out.extend(Path(h) for h in hits)
        else:
            p = Path(pat)
            if not p.exists():
                raise InputError(f"{p}: file not found; check the path in inputs.images")
            out.append(p)
    return out


def _absolutise(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    inputs = raw.get("inputs")
    if isinstance(inputs, dict):
        imgs = inputs.get("images")
        if isinstance(imgs, str):
            imgs = [imgs]
        if isinstance(imgs, list):
            inputs["images"] = [
                str(base / str(p)) if not Path(str(p)).is_absolute() else str(p) for p in imgs
            ]
        labels = inputs.get("labels")
        if isinstance(labels, dict) and "path" in labels and not Path(str(labels["path"])).is_absolute():
            labels["path"] = str(base / str(labels["path"]))
    chips = raw.get("chips")
    split = chips.get("split") if isinstance(chips, dict) else None
    regions = split.get("regions") if isinstance(split, dict) else None
    if isinstance(regions, dict) and "path" in regions and not Path(str(regions["path"])).is_absolute():
        regions["path"] = str(base / str(regions["path"]))
    model = raw.get("model")
    weights = model.get("weights") if isinstance(model, dict) else None
    if (
        isinstance(model, dict)
        and weights
        and "://" not in str(weights)
        and not Path(str(weights)).is_absolute()
    ):
        model["weights"] = str(base / str(model["weights"]))
    return raw


def parse_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise InputError(f"{source}: invalid config ({problems}); fix these keys") from None


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML run config; relative paths are taken relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found; give the path of a YAML run config")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping with an 'inputs' section; see README for an example")
    return parse_config(_absolutise(raw, path.parent.resolve()), source=str(path))
