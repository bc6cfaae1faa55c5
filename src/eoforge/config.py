"""Strict, documented configuration: one pydantic model per stage, composed into :class:`RunConfig`.

Unknown keys are errors (``extra="forbid"``); every field carries a description. Relative paths in a YAML
file are resolved against the file's folder. The resolved config is saved with every run and model.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eoforge.errors import InputError

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
IGNORE_INDEX = 255
"""Class index of unlabelled pixels in prepared labels, chips and training targets."""


NodataValue = Annotated[float, Field(allow_inf_nan=True)]
"""A nodata value: any number, NaN included (the one place a config number may be NaN)."""


class _Strict(BaseModel):
    # allow_inf_nan=False: `lr: .inf` or `.nan` anywhere is refused at load time (fields that mean NaN opt in)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


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
    nodata: float | None = Field(
        default=None,
        description="Label raster value meaning 'unlabelled' when the file does not tag its nodata (e.g. -1); "
        "the file's own nodata is used too.",
    )
    layer: str | None = Field(
        default=None,
        description="Layer of a vector file holding several (e.g. a GeoPackage); needed when it has more "
        "than one layer with geometry.",
    )
    crs: str | None = Field(
        default=None,
        description="CRS of the coordinates of a CSV (x/y or WKT columns; CSV files carry none) or of a "
        "vector file without one, e.g. EPSG:4326.",
    )

    @field_validator("crs")
    @classmethod
    def _check_crs(cls, v: str | None) -> str | None:
        if v is not None:
            from rasterio.crs import CRS
            from rasterio.errors import CRSError

            try:
                CRS.from_user_input(v)
            except CRSError:
                raise ValueError(f"'{v}' is not a CRS; write it as e.g. EPSG:4326") from None
        return v

    @model_validator(mode="after")
    def _column_or_value(self) -> LabelsConfig:
        if self.column is not None and self.value is not None:
            raise ValueError("give either column or value, not both")
        return self


class MaskConfig(_Strict):
    path: str | None = Field(
        default=None,
        description="A mask raster (with `classes` or `bits`) or a vector file of areas to exclude (any OGR "
        "format); relative to the config file.",
    )
    band: str | None = Field(
        default=None,
        description="Instead of `path`: a quality band of `inputs.sensor` found among the images by file name "
        "(e.g. SCL, QA_PIXEL); applied again at predict time on new files.",
    )
    classes: list[int | str] | None = Field(
        default=None,
        description="Mask raster values that become nodata (or the sensor's class names, e.g. cloud_high).",
    )
    bits: list[int | str] | None = Field(
        default=None,
        description="Bit numbers of a QA band that make a pixel nodata when set (or the sensor's bit names, "
        "e.g. cloud, cloud_shadow).",
    )
    date: str | None = Field(
        default=None,
        description="Time stacks: the date (YYYY-MM-DD, a key of `inputs.images`) whose files this mask `path` "
        "masks, e.g. that date's cloud mask; without it the mask applies to every date.",
    )

    @field_validator("date", mode="before")
    @classmethod
    def _iso_date(cls, v: Any) -> Any:
        return v.isoformat() if hasattr(v, "isoformat") else v  # YAML reads an unquoted 2021-05-01 as a date

    @model_validator(mode="after")
    def _one_source(self) -> MaskConfig:
        if (self.path is None) == (self.band is None):
            raise ValueError("give a mask either `path` or `band`")
        if self.date is not None and (self.band is not None or not _ISO_DATE.match(self.date)):
            raise ValueError(
                f"mask date '{self.date}': give it as YYYY-MM-DD with a mask `path` (a quality `band` is "
                "already read from each date's own files)"
            )
        if self.classes is not None and self.bits is not None:
            raise ValueError("give a mask either `classes` or `bits`, not both")
        if self.band is not None and self.classes is None and self.bits is None:
            raise ValueError(f"mask band {self.band} needs `classes` or `bits`")
        return self


ImageList = list[str | list[str]]


class CubeConfig(_Strict):
    path: str = Field(
        description="NetCDF (.nc) or Zarr (.zarr) cube of dated bands, opened lazily (xarray + dask)."
    )
    variables: list[str] | None = Field(
        default=None,
        description="Data variables used as bands, in order (default: every (time, y, x) variable).",
    )
    time: str = Field(default="time", description="Name of the cube's time dimension.")


def _iso_keys(v: Any) -> Any:
    """YAML reads an unquoted 2021-04-01 as a date: keys of a date mapping become ISO strings, a lone file a
    one-item list."""
    if isinstance(v, dict):
        return {
            (k.isoformat() if hasattr(k, "isoformat") else str(k)): ([f] if isinstance(f, str) else f)
            for k, f in v.items()
        }
    return v


class SceneInputs(_Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Scene name (letters, digits, _ . -): its folder OUT/prepared/<name>/, its map "
        "OUT/maps/<name>.tif and its rows in the report.",
    )
    images: ImageList | dict[str, ImageList] = Field(
        description="This scene's rasters, written as `inputs.images` (a date -> files mapping for a time stack)."
    )
    labels: LabelsConfig = Field(description="This scene's labels, written as `inputs.labels`.")

    @field_validator("images", mode="before")
    @classmethod
    def _date_keys(cls, v: Any) -> Any:
        return _iso_keys(v)

    masks: list[MaskConfig] | None = Field(
        default=None, description="This scene's masks, replacing `inputs.masks` (default: `inputs.masks`)."
    )


class InputsConfig(_Strict):
    images: ImageList | dict[str, ImageList] = Field(
        default_factory=list,
        description="Raster files or glob patterns, stacked band-wise in the order given (globs sorted). An "
        "entry that is a list is a mosaic: files covering different areas of the same bands. With `sensor`, "
        "files are matched to bands by name and files of the same band are mosaicked. A time stack is a "
        "mapping ISO date -> such a list (same bands every date).",
    )
    cube: CubeConfig | None = Field(
        default=None, description="Instead of `images`: a NetCDF/Zarr time stack (time, y, x variables)."
    )
    scenes: list[SceneInputs] | None = Field(
        default=None,
        description="Many scenes for one model, instead of `images` + `labels`: each with its own images, "
        "labels (and masks), sharing bands, classes, sensor, nodata and the `prepare` recipe.",
    )
    sensor: str | None = Field(
        default=None,
        description="Sensor preset (`eoforge sensors` lists them): band names from file names, scale/offset, "
        "quality band.",
    )
    masks: list[MaskConfig] = Field(
        default_factory=list,
        description="Pixels that become nodata: classes of a mask raster, bits of a QA band, areas of a vector.",
    )
    bands: list[str] | None = Field(
        default=None, description="Band names in stack order (STAC eo common names where known)."
    )
    nodata: NodataValue | list[NodataValue | None] | None = Field(
        default=None,
        description="Nodata value of the input bands: one value for every band, or a list with one value per "
        "band of the stack (null = that band's own nodata); by default each file's own nodata. GDAL masks and "
        "alpha bands always count as nodata.",
    )
    nodata_rule: Literal["all", "any"] = Field(
        default="all",
        description="A pixel is nodata where ALL bands are nodata ('all', default; a band that is nodata at a "
        "valid pixel is filled with its mean) or where ANY band is ('any').",
    )
    labels: LabelsConfig | None = Field(
        default=None, description="Where the training labels are (with `images`; each scene has its own)."
    )
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
        seen: dict[str, int] = {}
        for k, name in v.items():
            if not name.strip():
                raise ValueError(f"class {k} has an empty name; give every class a name")
            if name.strip().casefold() in seen:
                raise ValueError(
                    f"classes {seen[name.strip().casefold()]} and {k} are both named '{name}' (names are "
                    "compared ignoring case); give each class its own name"
                )
            seen[name.strip().casefold()] = k
        return dict(sorted(v.items()))

    @field_validator("colors")
    @classmethod
    def _check_colors(cls, v: dict[int, str] | None) -> dict[int, str] | None:
        for k, c in (v or {}).items():
            if not _COLOR.match(c):
                raise ValueError(f"colour of class {k} is '{c}'; write colours as '#rrggbb' (e.g. '#1f78b4')")
        return v

    @field_validator("images", mode="before")
    @classmethod
    def _date_keys(cls, v: Any) -> Any:
        return _iso_keys(v)

    @model_validator(mode="after")
    def _images_or_cube(self) -> InputsConfig:
        if self.images and self.cube is not None:
            raise ValueError(
                "give inputs.images (files, or a date -> files mapping) or inputs.cube, not both"
            )
        if isinstance(self.images, dict):
            if not self.images:
                raise ValueError("inputs.images is an empty date mapping; list at least one date")
            for d, files in self.images.items():
                if not _ISO_DATE.match(d):
                    raise ValueError(
                        f"inputs.images date '{d}' is not an ISO date; write dates as YYYY-MM-DD"
                    )
                if not files:
                    raise ValueError(f"inputs.images date {d} lists no file; give its files or drop the date")
        return self

    @property
    def dates(self) -> list[str] | None:
        """The dates of a time stack given as a date -> files mapping, in time order (None otherwise)."""
        return sorted(self.images) if isinstance(self.images, dict) else None

    @model_validator(mode="after")
    def _scenes_or_images(self) -> InputsConfig:
        if self.scenes is None and (not (self.images or self.cube) or self.labels is None):
            raise ValueError("give inputs.images and inputs.labels (one scene) or inputs.scenes (many)")
        if self.scenes is not None and (self.images or self.cube or self.labels is not None):
            raise ValueError("give inputs.scenes or inputs.images + inputs.labels, not both")
        if self.scenes is not None and not self.scenes:
            raise ValueError("inputs.scenes is empty; list at least one scene")
        names = [s.name for s in self.scenes or []]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"scene name(s) {twice} appear twice in inputs.scenes; give each scene its own name"
            )
        return self

    def scene_inputs(self) -> list[tuple[str, InputsConfig]]:
        """Each scene's own inputs (its images, labels and masks with the shared keys); one unnamed scene
        (name ``""``) without ``scenes``."""
        if self.scenes is None:
            return [("", self)]
        return [
            (
                s.name,
                self.model_copy(
                    update={
                        "images": s.images,
                        "labels": s.labels,
                        "masks": self.masks if s.masks is None else s.masks,
                        "scenes": None,
                    }
                ),
            )
            for s in self.scenes
        ]

    def label_source(self) -> LabelsConfig:
        """The labels of a one-scene inputs section (each of :meth:`scene_inputs`)."""
        if self.labels is None:
            raise InputError("inputs.labels is missing; give the labels of the scene (or use inputs.scenes)")
        return self.labels

    @model_validator(mode="after")
    def _label_ids_are_classes(self) -> InputsConfig:
        for lab in [self.labels] if self.scenes is None else [s.labels for s in self.scenes]:
            for key in ("value", "background"):
                v = getattr(lab, key)
                if v is not None and v not in self.classes:
                    raise ValueError(f"labels.{key} {v} is not a class id; use one of {list(self.classes)}")
        unknown = sorted(set(self.colors or {}) - set(self.classes))
        if unknown:
            raise ValueError(f"colors for {unknown}, which are not class ids; use ids of `classes`")
        return self


class RegionsConfig(_Strict):
    path: Path = Field(
        description="Vector file (any OGR format) of regions; each chip goes to the split of the region that "
        "holds it (chips touching regions of two splits, or outside every region, are dropped)."
    )
    column: str = Field(default="split", description="Column naming each region's split: train, val or test.")


class GridConfig(_Strict):
    resolution: float | None = Field(
        default=None, gt=0, description="Pixel size in CRS units; default: the finest among the inputs."
    )
    crs: str | None = Field(
        default=None, description="Target CRS (e.g. EPSG:32633); default: the first file's."
    )
    like: str | None = Field(
        default=None, description="A raster whose grid (CRS, transform, size) is used exactly, instead."
    )

    @model_validator(mode="after")
    def _like_alone(self) -> GridConfig:
        if self.like is not None and (self.resolution is not None or self.crs is not None):
            raise ValueError("give grid.like or grid.resolution/crs, not both")
        return self


class PrepareConfig(_Strict):
    grid: GridConfig = Field(
        default_factory=GridConfig, description="Target grid every input is warped onto."
    )
    resampling: Literal["nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode"] = Field(
        default="bilinear",
        description="Resampling of image bands warped onto the grid (masks and labels always use nearest).",
    )
    mosaic: Literal["first", "last", "mean", "median"] = Field(
        default="first",
        description="Where mosaic files overlap: first valid pixel wins, last, mean or median.",
    )
    aoi: str | list[float] | None = Field(
        default=None,
        description="Area of interest: a vector file (any OGR format) or [minx, miny, maxx, maxy] in `aoi_crs`; "
        "the grid is cropped to it and pixels outside are nodata.",
    )
    aoi_crs: str = Field(default="EPSG:4326", description="CRS of a bounding-box `aoi`.")
    indices: list[str] = Field(
        default_factory=list,
        description="Spectral indices (Awesome Spectral Indices names via spyndex, `eoforge indices` lists them) "
        "appended as channels; bands are found by common name.",
    )
    normalize: Literal["zscore", "minmax", "percentile"] = Field(
        default="zscore",
        description="Normalisation: zscore (exact mean/std), minmax, or percentile (values clamped to the `clip` "
        "percentiles, then stretched to [0, 1]; percentiles within (max - min) / 4096 of the exact ones).",
    )
    clip: tuple[float, float] = Field(
        default=(2.0, 98.0),
        description="Lower and upper percentiles of `normalize: percentile`; values beyond them are clamped.",
    )
    min_valid_date: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Time stacks: dates whose valid fraction (of the pixels valid on any date) is below this are "
        "dropped (cloudy dates); listed in the log and scene.json.",
    )
    interpolate: Literal["linear"] | None = Field(
        default=None,
        description="Time stacks: fill nodata gaps linearly along time (per pixel and band; ends take the "
        "nearest date); by default gaps stay NaN. Part of the recipe, so predict does the same.",
    )

    @field_validator("aoi")
    @classmethod
    def _bbox(cls, v: str | list[float] | None) -> str | list[float] | None:
        if isinstance(v, list) and (len(v) != 4 or v[0] >= v[2] or v[1] >= v[3]):
            raise ValueError("a bounding-box aoi is [minx, miny, maxx, maxy] with min < max")
        return v

    @field_validator("clip")
    @classmethod
    def _clip(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] < v[1] <= 100:
            raise ValueError("clip is [low, high] percentiles with 0 <= low < high <= 100")
        return v


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
    stratify: bool = Field(
        default=False,
        description="mode blocks: assign the blocks by iterative stratification on their class pixels (rarest "
        "class first), so every class reaches every split where its blocks allow it; false: blocks drawn at "
        "random until each split has its share of chips.",
    )
    by: Literal["block", "scene"] = Field(
        default="block",
        description="With inputs.scenes: block splits each scene by `mode`; scene gives every scene whole to "
        "one split (scenes drawn like blocks, weighted by their chips; needs mode blocks and a scene per split).",
    )

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.by == "scene" and self.mode != "blocks":
            raise ValueError(
                "split.by scene assigns whole scenes; use it with split.mode blocks (the default)"
            )
        if self.stratify and (self.mode != "blocks" or self.by == "scene"):
            raise ValueError(
                "split.stratify assigns spatial blocks by their classes; use it with split.mode blocks and "
                "split.by block (the defaults), or set stratify: false"
            )
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
        description="Target share of the training split's labelled pixels for every class present: chips "
        "richest in the classes below it are added (they may overlap), then chips of common classes removed (never "
        "below half the grid's chip count) until each class reaches it.",
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
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Minimum fraction of non-nodata image pixels in a chip (all-nodata chips are always dropped).",
    )
    min_labelled: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Minimum fraction of labelled pixels in a chip (nodata pixels count as unlabelled; chips "
        "without any labelled pixel are always dropped). Default: min_valid, as before this key existed.",
    )

    @property
    def labelled_fraction(self) -> float:
        """The effective ``min_labelled``."""
        return self.min_valid if self.min_labelled is None else self.min_labelled

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
    encoder_depth: int | None = Field(
        default=None,
        ge=1,
        le=5,
        description="Encoder stages the decoder uses (smp `encoder_depth`; Unet-like decoders get one block per "
        "stage). None: the architecture's own (5 for most). Small chips need fewer: at depth 5 a 64-px chip "
        "reaches the last stage at 2 x 2 px.",
    )
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


CE_LOSSES = ("ce", "ce+dice", "ce+lovasz")  # the losses with a cross-entropy term (class weights, smoothing)


class TrainConfig(_Strict):
    epochs: int = Field(default=20, ge=1, description="Maximum number of epochs.")
    batch_size: int = Field(default=16, ge=1, description="Chips per batch.")
    lr: float = Field(default=1e-3, gt=0, le=1.0, description="AdamW learning rate (0 < lr <= 1).")
    weight_decay: float = Field(default=1e-4, ge=0, le=1.0, description="AdamW weight decay.")
    patience: int = Field(
        default=10, ge=1, description="Early stopping: epochs without val mIoU improvement."
    )
    loss: Literal["ce", "dice", "focal", "ce+dice", "lovasz", "ce+lovasz"] = Field(
        default="ce",
        description="Loss: cross-entropy, Dice, focal, cross-entropy + Dice, Lovasz-softmax or cross-entropy + "
        "Lovasz-softmax.",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Cross-entropy label smoothing: this share of each target's probability is spread over all "
        "classes (0 = off); needs loss ce, ce+dice or ce+lovasz.",
    )
    class_weights: Literal["auto"] | list[float] | None = Field(
        default=None,
        description="Cross-entropy class weights: 'auto' (inverse class frequency of the prepared labels, "
        "clipped to class_weight_clip) or one weight per class; needs loss ce, ce+dice or ce+lovasz.",
    )
    class_weight_clip: float = Field(
        default=10.0, ge=1, description="'auto' class weights are clipped to [1/clip, clip] x the mean."
    )
    augment: AugmentConfig | None = Field(
        default_factory=AugmentConfig,
        description="Batch augmentation of the training split (never validation); null turns it off.",
    )
    ema: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Exponential moving average of the weights with this decay per step (e.g. 0.99; Lightning's "
        "EMAWeightAveraging): the averaged weights are validated, checkpointed and packaged; null: off.",
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
    cache_mb: float = Field(
        default=1024,
        ge=0,
        description="Hold a split's chips in memory when they take at most this many MiB (read once, no I/O "
        "per epoch; each DataLoader worker holds its own copy); 0 reads every batch from the store.",
    )
    accelerator: str = Field(default="auto", description="Lightning accelerator: auto, cpu, gpu.")
    devices: int | str = Field(default=1, description="Lightning devices (1, 2, 'auto').")
    strategy: str = Field(default="auto", description="Lightning strategy: auto, ddp, ddp_spawn, fsdp …")
    num_nodes: int = Field(default=1, ge=1, description="Machines for multi-node training (Lightning).")
    logger: Literal["csv", "tensorboard", "mlflow"] = Field(
        default="csv",
        description="Extra experiment tracker besides the CSV log: tensorboard (OUT/train/tensorboard) or mlflow "
        "(MLFLOW_TRACKING_URI, else the SQLite store OUT/train/mlflow.db).",
    )
    seed: int = Field(default=0, description="Seed of weights init, shuffling and augmentation.")

    @model_validator(mode="after")
    def _weights_need_ce(self) -> TrainConfig:
        if self.class_weights is not None and self.loss not in CE_LOSSES:
            raise ValueError(f"class_weights need loss {', '.join(CE_LOSSES)}, not {self.loss}")
        if self.label_smoothing > 0 and self.loss not in CE_LOSSES:
            raise ValueError(f"label_smoothing needs loss {', '.join(CE_LOSSES)}, not {self.loss}")
        if isinstance(self.class_weights, list) and not all(w >= 0 for w in self.class_weights):
            raise ValueError("class_weights must be >= 0")
        return self

    @field_validator("accelerator")
    @classmethod
    def _accelerator(cls, v: str) -> str:
        if v not in ACCELERATORS:
            raise ValueError(f"unknown accelerator '{v}'; choose one of: {', '.join(ACCELERATORS)}")
        return v

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"devices must be at least 1 (or 'auto'), got {v}")
        if isinstance(v, str) and v != "auto":
            raise ValueError(f"devices must be a number of devices or 'auto', got '{v}'")
        return v


class PredictConfig(_Strict):
    tile: int | None = Field(
        default=None,
        description="Inference window side in pixels (a positive multiple of 32; default: 2 x chip size).",
    )
    overlap: int = Field(default=32, ge=0, description="Pixels shared by neighbouring windows (< tile).")
    batch_size: int = Field(default=8, ge=1, description="Windows per model call.")
    blend: Literal["center", "hann", "triangular"] = Field(
        default="center",
        description="How overlapping windows are stitched: center keeps each window's core (each pixel from one "
        "window); hann/triangular average class probabilities with tapered weights.",
    )
    probabilities: Literal["uint8", "float32"] | None = Field(
        default=None,
        description="Also write MAP.probs.tif, one band per class: uint8 (0-255 = probability x 255, nodata "
        "as a mask) or float32 (NaN nodata). Float16 needs GDAL >= 3.11.",
    )
    uncertainty: Literal["entropy", "max-prob"] | None = Field(
        default=None,
        description="Also write MAP.uncertainty.tif: normalised entropy (0-1) or 1 - max probability.",
    )
    vectorize: Literal["gpkg", "parquet"] | None = Field(
        default=None, description="Also write the class map as polygons to MAP.gpkg or MAP.parquet."
    )
    min_area: int = Field(
        default=0, ge=0, description="Polygons smaller than this many pixels are dropped (with vectorize)."
    )
    tta: Literal["none", "d4"] = Field(
        default="none",
        description="Test-time augmentation: d4 averages the 8 flips/rotations (8x model time).",
    )
    backend: Literal["auto", "torch", "torch-fp32", "onnx"] = Field(
        default="auto",
        description="Inference backend: auto (fastest that agrees with fp32), torch (bf16/AMP + channels-last), "
        "torch-fp32 (plain fp32 reference), onnx (ONNX Runtime on the package's model.onnx).",
    )
    device: str = Field(
        default="cpu",
        pattern=r"^(cpu|cuda(:\d+)?|mps)$",
        description="torch device: cpu, cuda, cuda:1 ... (its presence is checked when predict starts).",
    )

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> PredictConfig:
        if self.tile is not None and self.overlap >= self.tile:
            raise ValueError(f"predict.overlap {self.overlap} must be smaller than predict.tile {self.tile}")
        return self

    def options(self) -> Any:
        """The engine's :class:`eoforge.predict.PredictOptions` for this section."""
        from eoforge.predict.engine import PredictOptions

        return PredictOptions(
            tile=self.tile,
            overlap=self.overlap,
            batch_size=self.batch_size,
            blend=self.blend,
            tta=self.tta,
            probabilities=self.probabilities,
            uncertainty=self.uncertainty,
            vectorize=self.vectorize,
            min_area=self.min_area,
        )

    @field_validator("tile")
    @classmethod
    def _tile(cls, v: int | None) -> int | None:
        if v is not None and (v < 32 or v % 32):
            raise ValueError(
                f"tile must be a positive multiple of 32 (the U-Net downsamples 5 times), got {v}"
            )
        return v


class ComputeConfig(_Strict):
    scheduler: str | None = Field(
        default=None,
        description="Address of a running dask.distributed scheduler (tcp://host:8786) for prepare, chips and "
        "predict; results are identical whichever scheduler runs them.",
    )
    workers: int | None = Field(
        default=None, ge=1, le=4096, description="Start a local Dask cluster of this many worker processes."
    )
    threads_per_worker: int = Field(
        default=1, ge=1, le=1024, description="Threads of each local Dask worker."
    )
    connect_timeout: float = Field(
        default=10.0, gt=0, le=3600, description="Seconds to wait for compute.scheduler before failing."
    )

    @model_validator(mode="after")
    def _one_way(self) -> ComputeConfig:
        if self.scheduler is not None and self.workers is not None:
            raise ValueError(
                "give compute.scheduler (a running cluster) or compute.workers (a local one), not both"
            )
        return self


class MapBaseline(_Strict):
    map: Path = Field(
        description="A class-map raster made by anything (another tool, an earlier run) whose pixel values are "
        "class ids; scored on exactly the same test pixels as the model (warped onto the scene grid, nearest)."
    )
    name: str | None = Field(default=None, description="Name in the report (default: the file name).")


class IndexRule(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    index: str = Field(
        description="A spectral index of the Awesome Spectral Indices catalogue (spyndex), e.g. NDVI, MNDWI; "
        "computed from the bands named by STAC common names (blue, green, red, nir, swir16, ...)."
    )
    above: float = Field(description="Threshold: pixels whose index is above it get `then`.")
    then: int | str = Field(description="Class (id or name) where the index is above the threshold.")
    otherwise: int | str = Field(alias="else", description="Class (id or name) elsewhere (YAML key `else`).")
    name: str | None = Field(default=None, description="Name in the report (default: 'INDEX > above').")

    @field_validator("index")
    @classmethod
    def _known_index(cls, v: str) -> str:
        import difflib

        import spyndex

        names = list(spyndex.indices)
        if v in names:
            return v
        by_upper = {n.upper(): n for n in names}
        if v.upper() in by_upper:
            return by_upper[v.upper()]
        close = difflib.get_close_matches(v.upper(), list(by_upper), n=5)
        hint = (
            f"did you mean {', '.join(by_upper[c] for c in close)}?"
            if close
            else "e.g. NDVI, NDWI, MNDWI, NBR"
        )
        raise ValueError(f"unknown spectral index '{v}' (Awesome Spectral Indices names); {hint}")


class EvaluateConfig(_Strict):
    baselines: list[MapBaseline | IndexRule] = Field(
        default_factory=list,
        description="Your own baselines, scored on the same test pixels as the model: class-map rasters "
        "(`{map: path}`) and simple index rules (`{index: MNDWI, above: 0.0, then: water, else: land}`).",
    )
    random_forest: bool = Field(
        default=True, description="Train and score the per-pixel random-forest baseline."
    )
    rf_pixels: int = Field(
        default=100_000, ge=100, le=10_000_000, description="Training pixels sampled for the random forest."
    )
    bootstrap: int = Field(
        default=1000,
        ge=0,
        le=100_000,
        description="Bootstrap resamples of the test blocks for the 95 % confidence intervals (0: none).",
    )
    seed: int = Field(default=0, description="Seed of the bootstrap and the random forest.")
    insight_chips: int = Field(
        default=64,
        ge=0,
        le=10_000,
        description="Test chips on which the model's probabilities give ROC/PR curves, calibration and the "
        "permutation band importance in the report (0: none).",
    )


class RunConfig(_Strict):
    task: Literal["segmentation", "pixel"] = Field(
        default="segmentation",
        description="segmentation: dense labels (a class per pixel); pixel: sparse labels (points, a few "
        "pixels): chips kept with one labelled pixel, unlabelled pixels ignored.",
    )
    inputs: InputsConfig
    prepare: PrepareConfig = Field(
        default_factory=PrepareConfig,
        description="Preparation recipe: grid, resampling, mosaic, AOI, indices, normalisation.",
    )
    chips: ChipsConfig = Field(default_factory=ChipsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    evaluate: EvaluateConfig = Field(
        default_factory=EvaluateConfig, description="Baselines and confidence intervals of the evaluation."
    )
    compute: ComputeConfig = Field(
        default_factory=ComputeConfig, description="Dask scheduler used by the stages that scale out."
    )

    @model_validator(mode="after")
    def _rule_classes(self) -> RunConfig:
        for rule in self.evaluate.baselines:
            if isinstance(rule, IndexRule):
                for key, v in (("then", rule.then), ("else", rule.otherwise)):
                    if class_index(self.inputs.classes, v) is None:
                        raise ValueError(
                            f"evaluate.baselines {rule.index}: {key} '{v}' is not a class; "
                            f"use one of {list(self.inputs.classes.values())}"
                        )
        return self

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        tile = self.predict.tile or 2 * self.chips.size
        if self.predict.overlap >= tile:
            raise ValueError(
                f"predict.overlap {self.predict.overlap} must be smaller than the predict tile {tile}; lower it"
            )
        if self.chips.split.by == "scene" and not self.inputs.scenes:
            raise ValueError("chips.split.by scene needs inputs.scenes (several scenes); use by: block")
        if self.chips.split.test <= 0:
            raise ValueError(
                "chips.split.test is 0 but `eoforge run` evaluates on the test split; give it > 0"
            )
        return self

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    @model_validator(mode="after")
    def _one_weight_per_class(self) -> RunConfig:
        w = self.train.class_weights
        if isinstance(w, list) and len(w) != len(self.inputs.classes):
            raise ValueError(
                f"train.class_weights has {len(w)} weights for {len(self.inputs.classes)} classes"
            )
        return self


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


def class_index(classes: dict[int, str], value: int | str) -> int | None:
    """Index (0..K-1) of a class given by id or by name (case-insensitive), or None."""
    ids = list(classes)
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        v = int(value)
        return ids.index(v) if v in classes else None
    names = [n.strip().lower() for n in classes.values()]
    key = value.strip().lower()
    return names.index(key) if key in names else None


def config_warnings(cfg: RunConfig) -> list[tuple[str, str]]:
    """Problems a config can already show before anything runs, as ``(code, message)`` pairs."""
    out: list[tuple[str, str]] = []
    tile = cfg.predict.tile or 2 * cfg.chips.size
    if tile > 2 * cfg.chips.size:
        out.append(
            (
                "window_much_larger_than_chip",
                f"predict.tile {tile} px is more than 2x the training chip ({cfg.chips.size} px): the model "
                "sees far more context at predict time than in training, which can change its output; "
                f"use a tile of at most {2 * cfg.chips.size} px or train on larger chips",
            )
        )
    return out


def check_devices(train: TrainConfig) -> None:
    """Refuse at the start of a run what the machine cannot do: a GPU accelerator without a GPU, more
    devices than there are (GPUs, or CPU cores for CPU processes).

    Several CPU devices are fine: without a launcher the training stage spawns its ranks (``ddp_spawn``,
    see :func:`eoforge.train.fit.train`), so only training runs in them, never the rest of the run.
    """
    import os

    import torch  # here, not at import: loading a config stays fast

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if train.accelerator in ("gpu", "cuda") and gpus == 0:
        raise InputError(
            f"train.accelerator: {train.accelerator} but no CUDA GPU is visible on this machine; "
            "use accelerator: auto or cpu"
        )
    if train.accelerator == "mps" and not torch.backends.mps.is_available():
        raise InputError("train.accelerator: mps but MPS is not available here; use accelerator: auto or cpu")
    on_gpu = train.accelerator in ("gpu", "cuda") or (train.accelerator == "auto" and gpus > 0)
    if isinstance(train.devices, int) and train.devices > 1:
        cores = os.cpu_count() or 1
        if not on_gpu and train.devices > cores:
            raise InputError(
                f"train.devices: {train.devices} on CPU starts {train.devices} training processes but this "
                f"machine has {cores} CPU core(s); use devices: {cores} or fewer"
            )
        if on_gpu and train.devices > gpus:
            raise InputError(
                f"train.devices: {train.devices} but only {gpus} GPU(s) are visible; use devices: {gpus} or auto"
            )


def resolve_images(patterns: list[str] | list[str | list[str]]) -> list[Path]:
    """Expand globs (sorted) and check every file exists; mosaic entries (lists) are flattened."""
    out: list[Path] = []
    flat = [p for entry in patterns for p in (entry if isinstance(entry, list) else [entry])]
    for pat in flat:
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


def _abs(base: Path, p: object) -> str:
    return str(p) if Path(str(p)).is_absolute() else str(base / str(p))


def _absolutise(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    inputs = raw.get("inputs")
    if isinstance(inputs, dict):
        imgs = inputs.get("images")
        if isinstance(imgs, str):
            imgs = [imgs]

        def files(entries: list[Any]) -> list[Any]:
            return [[_abs(base, q) for q in p] if isinstance(p, list) else _abs(base, p) for p in entries]

        if isinstance(imgs, list):
            inputs["images"] = files(imgs)
        elif isinstance(imgs, dict):  # a time stack: date -> files
            inputs["images"] = {d: files([v] if isinstance(v, str) else v) for d, v in imgs.items()}
        cube = inputs.get("cube")
        if isinstance(cube, dict) and isinstance(cube.get("path"), str):
            cube["path"] = _abs(base, cube["path"])
        labels = inputs.get("labels")
        if isinstance(labels, dict) and "path" in labels and not Path(str(labels["path"])).is_absolute():
            labels["path"] = str(base / str(labels["path"]))
        masks = inputs.get("masks")
        for m in masks if isinstance(masks, list) else []:
            if isinstance(m, dict) and m.get("path") is not None:
                m["path"] = _abs(base, m["path"])
        scenes = inputs.get("scenes")
        for sc in scenes if isinstance(scenes, list) else []:
            if isinstance(sc, dict):  # each scene's images, labels and masks, as the one-scene keys
                sub = _absolutise(
                    {"inputs": {k: sc[k] for k in ("images", "labels", "masks") if k in sc}}, base
                )
                sc.update(sub["inputs"])
    chips = raw.get("chips")
    split = chips.get("split") if isinstance(chips, dict) else None
    regions = split.get("regions") if isinstance(split, dict) else None
    if isinstance(regions, dict) and "path" in regions and not Path(str(regions["path"])).is_absolute():
        regions["path"] = str(base / str(regions["path"]))
    prep = raw.get("prepare")
    if isinstance(prep, dict):
        if isinstance(prep.get("aoi"), str):
            prep["aoi"] = _abs(base, prep["aoi"])
        grid = prep.get("grid")
        if isinstance(grid, dict) and isinstance(grid.get("like"), str):
            grid["like"] = _abs(base, grid["like"])
    ev = raw.get("evaluate")
    if isinstance(ev, dict) and isinstance(ev.get("baselines"), list):
        for b in ev["baselines"]:
            if isinstance(b, dict) and "map" in b and not Path(str(b["map"])).is_absolute():
                b["map"] = str(base / str(b["map"]))
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise InputError(
                    f"key '{key}' appears twice in one section (line {key_node.start_mark.line + 1}); "
                    "keep one of them"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML run config; relative paths are taken relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found; give the path of a YAML run config")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the config ({exc.strerror}); check its permissions") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping with an 'inputs' section; see README for an example")
    return parse_config(_absolutise(raw, path.parent.resolve()), source=str(path))
