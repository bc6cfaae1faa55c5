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


class SplitConfig(_Strict):
    val: float = Field(default=0.15, ge=0.0, lt=1.0, description="Fraction of chips for validation.")
    test: float = Field(default=0.15, ge=0.0, lt=1.0, description="Fraction of chips for the test split.")
    block_size: int | None = Field(
        default=None,
        gt=0,
        description="Side in pixels of the spatial blocks that are assigned to one split as a whole; chips that "
        "straddle two blocks are dropped, so no pixel is shared between splits. Default: 2 x chip size.",
    )
    seed: int = Field(default=0, description="Random seed of the block assignment.")

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val + self.test >= 0.9:
            raise ValueError("val + test must leave at least 10% of the chips for training")
        return self


class ChipsConfig(_Strict):
    size: int = Field(default=128, ge=32, description="Chip side in pixels (a multiple of 32 for U-Net).")
    stride: int | None = Field(
        default=None, gt=0, description="Step between chips in pixels (default: size)."
    )
    min_valid: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Minimum fraction of labelled, non-nodata pixels in a chip."
    )
    split: SplitConfig = Field(default_factory=SplitConfig, description="Spatially disjoint splits.")

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
    weights_bands: list[str] | None = Field(
        default=None,
        description="Band names of the weights' input, in order, when the file does not carry them (files may "
        "name them, as TorchGeo's do); unnamed 3-band weights are red, green, blue. The first convolution is "
        "adapted to inputs.bands by name: known bands reuse their kernel, others get the mean kernel.",
    )
    freeze_encoder_epochs: int = Field(
        default=0, ge=0, description="Train only the decoder and head for this many first epochs."
    )


class AugmentConfig(_Strict):
    d4: bool = Field(default=True, description="Random flips and 90-degree rotations (the 8 symmetries).")
    brightness: float = Field(
        default=0.1, ge=0, description="Per-band additive shift, uniform in +-this, in standard deviations."
    )
    contrast: float = Field(default=0.1, ge=0, lt=1, description="Per-band gain, uniform in 1 +- this.")
    noise: float = Field(default=0.02, ge=0, description="Gaussian noise sigma, in standard deviations.")
    resized_crop: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Random resized crops keeping at least this fraction of the chip area (off by default).",
    )


class TrainConfig(_Strict):
    epochs: int = Field(default=20, ge=1, description="Maximum number of epochs.")
    batch_size: int = Field(default=16, ge=1, description="Chips per batch.")
    lr: float = Field(default=1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay.")
    patience: int = Field(
        default=10, ge=1, description="Early stopping: epochs without val mIoU improvement."
    )
    loss: Literal["ce", "dice", "focal", "ce+dice", "lovasz"] = Field(
        default="ce", description="Loss: cross-entropy, Dice, focal, cross-entropy + Dice or Lovasz-softmax."
    )
    class_weights: Literal["auto"] | list[float] | None = Field(
        default=None,
        description="Cross-entropy class weights: 'auto' (inverse class frequency of the prepared labels, "
        "clipped to class_weight_clip) or one weight per class; needs loss ce or ce+dice.",
    )
    class_weight_clip: float = Field(
        default=10.0, ge=1, description="'auto' class weights are clipped to [1/clip, clip] x the mean."
    )
    augment: AugmentConfig | None = Field(
        default_factory=AugmentConfig,
        description="Batch augmentation of the training split (never validation); null turns it off.",
    )
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = Field(
        default="auto",
        description="Lightning precision; auto: bf16-mixed + channels-last on CPUs with bf16 (about 3x), "
        "16-mixed on CUDA, else 32-true.",
    )
    compile: bool = Field(default=False, description="torch.compile the model (pays off on long GPU runs).")
    deterministic: bool = Field(
        default=False, description="Deterministic algorithms: identical weights across runs on one machine."
    )
    num_workers: int | None = Field(
        default=None, ge=0, description="DataLoader worker processes (default: CPU count - 1, at most 4)."
    )
    accelerator: str = Field(default="auto", description="Lightning accelerator: auto, cpu, gpu.")
    devices: int | str = Field(default=1, description="Lightning devices (1, 2, 'auto').")
    strategy: str = Field(default="auto", description="Lightning strategy: auto, ddp, ddp_spawn, fsdp …")
    num_nodes: int = Field(default=1, ge=1, description="Machines for multi-node training (Lightning).")
    logger: Literal["csv", "tensorboard", "mlflow"] = Field(
        default="csv",
        description="Extra experiment tracker besides the CSV log: tensorboard (OUT/train/tensorboard) or mlflow "
        "(MLFLOW_TRACKING_URI, else OUT/train/mlruns); each needs its package installed.",
    )
    seed: int = Field(default=0, description="Seed of weights init, shuffling and augmentation.")

    @model_validator(mode="after")
    def _weights_need_ce(self) -> TrainConfig:
        if self.class_weights is not None and self.loss not in ("ce", "ce+dice"):
            raise ValueError(f"class_weights need loss ce or ce+dice, not {self.loss}")
        if isinstance(self.class_weights, list) and not all(w >= 0 for w in self.class_weights):
            raise ValueError("class_weights must be >= 0")
        return self


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

    @model_validator(mode="after")
    def _one_weight_per_class(self) -> RunConfig:
        w = self.train.class_weights
        if isinstance(w, list) and len(w) != len(self.inputs.classes):
            raise ValueError(
                f"train.class_weights has {len(w)} weights for {len(self.inputs.classes)} classes"
            )
        return self


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
