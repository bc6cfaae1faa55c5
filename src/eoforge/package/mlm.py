"""The package's STAC Item with the Machine Learning Model extension (``mlm``), written with stac-model + pystac.

It describes what another tool needs to run the model without eoforge: the input bands in order, shape and dim
order, the value scaling (z-score per band, NaN/nodata → 0 after scaling), the output classes (ids, names,
colours), the task, architecture, framework, and the model assets (safetensors weights, ONNX graph) with
their sizes. ``item.json`` is rewritten whenever the package changes (metrics, ONNX export).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from eoforge import __version__
from eoforge.io.atomic import write_text
from eoforge.package import ITEM, META, ONNX, WEIGHTS, PackageMeta
from eoforge.tasks import get_task

log = logging.getLogger(__name__)

_ASSETS = {
    # file name: (asset key, title, media type, roles, mlm:artifact_type or None)
    WEIGHTS: (
        "weights",
        "Network weights (safetensors)",
        "application/octet-stream; application=safetensors",
        ["mlm:model", "mlm:weights", "data"],
        "safetensors.torch.save_file",
    ),
    ONNX: (
        "onnx",
        "Network as ONNX (dynamic batch, height, width; normalised input)",
        "application/octet-stream; application=onnx",
        ["mlm:model", "data"],
        "onnx",
    ),
    META: ("eoforge-metadata", "eoforge package metadata", "application/json", ["metadata"], None),
    "config.yaml": ("config", "Resolved eoforge run config", "application/yaml", ["metadata"], None),
    "metrics.json": ("metrics", "Test-split metrics", "application/json", ["metadata"], None),
}


def build_item(
    meta: PackageMeta, files: dict[str, int], metrics: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The STAC Item (as a dict) for a package whose files and sizes are ``files``."""
    import pystac
    import torch
    from stac_model.input import InputStructure, ModelInput
    from stac_model.output import MLMClassification, ModelOutput, ModelResult
    from stac_model.schema import MLModelExtension, MLModelProperties

    n_bands, n_classes = len(meta.bands), len(meta.classes)
    model_input = ModelInput(
        name="bands",
        bands=list(meta.bands),
        input=InputStructure(
            shape=[-1, n_bands, -1, -1], dim_order=["batch", "bands", "height", "width"], data_type="float32"
        ),
        value_scaling=[
            {"type": "z-score", "mean": m, "stddev": s} for m, s in zip(meta.mean, meta.std, strict=True)
        ],
        resize_type=None,
        pre_processing_function={
            "format": "documentation-link",
            "expression": "height and width multiples of 32; "
            + ("scaled values clipped to [0, 1] (percentile stretch); " if meta.clamp else "")
            + "NaN (nodata) set to 0 after z-score scaling",
        },
    )
    model_output = ModelOutput(
        name="classes",
        tasks={get_task(meta.task).mlm_task},
        result=ModelResult(
            shape=[-1, n_classes, -1, -1],
            dim_order=["batch", "class", "height", "width"],
            data_type="float32",
        ),
        classes=[
            MLMClassification(value=c.id, name=c.name, color_hint=c.color.lstrip("#").upper())
            for c in meta.classes
        ],
        post_processing_function={
            "format": "documentation-link",
            "expression": "argmax over 'class' gives the class index; map indices to the classes' values",
        },
    )
    props = MLModelProperties(
        name=f"eoforge {meta.arch}/{meta.encoder}",
        architecture=f"{meta.arch} ({meta.encoder} encoder"
        + (f", {meta.encoder_depth} stages)" if meta.encoder_depth is not None else ")"),
        tasks={get_task(meta.task).mlm_task},
        framework="pytorch",
        framework_version=torch.__version__.split("+")[0],
        accelerator=None,
        pretrained=False,
        batch_size_suggestion=8,
        input=[model_input],
        output=[model_output],
    )
    item = pystac.Item(
        id=f"eoforge-{meta.arch}-{meta.encoder}",
        geometry=None,
        bbox=None,
        datetime=dt.datetime.now(dt.UTC).replace(microsecond=0),
        properties={
            "description": f"eoforge {__version__} model package: {meta.arch}/{meta.encoder}, "
            f"{n_bands} bands, {n_classes} classes",
            "eoforge:chip_size": meta.chip_size,
            "eoforge:predict": {"tile": meta.tile, "overlap": meta.overlap},
            "eoforge:nodata": meta.nodata,
        },
    )
    if metrics:
        keys = ("overall_accuracy", "kappa", "mean_iou")
        item.properties["eoforge:metrics"] = {k: metrics[k] for k in keys if k in metrics}
    for name, size in sorted(files.items()):
        if name not in _ASSETS:
            continue
        key, title, media, roles, artifact = _ASSETS[name]
        extra: dict[str, Any] = {"file:size": size}
        if artifact is not None:
            extra["mlm:artifact_type"] = artifact
            extra["bands"] = [{"name": b} for b in meta.bands]
        item.add_asset(
            key,
            pystac.Asset(href=f"./{name}", title=title, media_type=media, roles=roles, extra_fields=extra),
        )
    mlm = MLModelExtension.ext(item, add_if_missing=True)
    mlm.apply(props.model_dump(by_alias=True, exclude_unset=True, exclude_defaults=True))
    out: dict[str, Any] = item.to_dict(include_self_link=False, transform_hrefs=False)
    file_ext = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
    if file_ext not in out["stac_extensions"]:
        out["stac_extensions"].append(file_ext)
    return out


def write_item(folder: str | Path, meta: PackageMeta, metrics: dict[str, Any] | None = None) -> Path:
    """Write ``item.json`` into a package folder, listing the files it holds now."""
    folder = Path(folder)
    files = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name in _ASSETS}
    item = build_item(meta, files, metrics)
    write_text(folder / ITEM, json.dumps(item, indent=2))
    return folder / ITEM
