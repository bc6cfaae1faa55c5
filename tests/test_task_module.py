"""The Task drives training and prediction: its loss (delegating to the configured smp loss for per-pixel
tasks), one LightningModule logging the task's metrics and monitor for every task, and the task name in the
package, which predict asks what to write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_tif
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from eoforge.config import TrainConfig
from eoforge.errors import PackageError
from eoforge.package import ClassInfo, PackageMeta, read_meta, save_package
from eoforge.predict import predict
from eoforge.tasks import TASKS, get_task
from eoforge.train.fit import quiet_cpu_trainer
from eoforge.train.losses import make_loss
from eoforge.train.task import TaskModule


def test_the_task_gives_the_loss() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5)
    target = torch.randint(0, 3, (2, 5, 5))
    target[0, :2] = 255  # unlabelled
    weights = [1.0, 2.0, 0.5]
    for name in ("ce", "dice", "focal", "ce+dice", "lovasz"):
        cfg = TrainConfig(loss=name)
        expected = make_loss(cfg, weights)(logits, target)
        for task in ("segmentation", "pixel"):  # dense and sparse targets: the configured smp loss
            assert torch.allclose(get_task(task).loss(weights, cfg)(logits, target), expected)
    # without a train config: cross-entropy ignoring unlabelled pixels
    plain = get_task("pixel").loss()(logits, target)
    assert torch.allclose(plain, F.cross_entropy(logits, target, ignore_index=255))
    # one class per chip, weighted; several labels per chip: BCE with the weights as pos_weight
    flat, cls = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    w = torch.tensor(weights)
    assert torch.allclose(get_task("scene").loss(weights)(flat, cls), F.cross_entropy(flat, cls, weight=w))
    multi = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]])
    task = get_task("scene-multilabel")
    got = task.loss(weights)(flat, task.target(multi))
    assert torch.allclose(got, F.binary_cross_entropy_with_logits(flat, multi.float(), pos_weight=w))


class _Chips(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, items: list[dict[str, torch.Tensor]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


class _PooledLinear(nn.Module):
    """A chip classifier: mean over the chip, then a linear layer."""

    def __init__(self, c: int, k: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x.mean(dim=(2, 3)))
        return out


@pytest.mark.parametrize("name", ["segmentation", "pixel", "scene", "scene-multilabel"])
def test_one_module_trains_every_task(name: str) -> None:
    """The batch key, targets, metrics and the monitored metric come from the task: no branch on its name."""
    torch.manual_seed(0)
    task, k = get_task(name), 3
    x = torch.randn(12, 2, 4, 4)
    if task.per_pixel:
        model: nn.Module = nn.Conv2d(2, k, 1)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # class per pixel
        if task.sparse:
            y[:, 1:, :] = 255  # one labelled row per chip
    elif task.multilabel:
        model = _PooledLinear(2, k)
        y = torch.stack(
            [x[:, 0].mean((1, 2)) > 0, x[:, 1].mean((1, 2)) > 0, torch.ones(12, dtype=torch.bool)], 1
        )
        y[0, 2] = False  # every label both present and absent somewhere (average precision is defined)
    else:
        model = _PooledLinear(2, k)
        y = torch.arange(12) % k
    items = [{"image": x[i], task.target_key: y[i]} for i in range(12)]
    loader = DataLoader(_Chips(items), batch_size=4)
    module = TaskModule(model, k, lr=0.05, epochs=3, task=task)
    trainer = quiet_cpu_trainer(3)
    trainer.fit(module, loader, loader)
    logged = trainer.callback_metrics
    assert task.monitor in logged and "val_loss" in logged and "train_loss" in logged
    expected = (
        {"val_map", "val_f1_macro"} if task.multilabel else {"val_accuracy", "val_f1_macro", "val_kappa"}
    )
    assert expected <= set(logged)
    assert ("val_miou" in logged) == task.per_pixel
    assert "val_f1_per_label" not in logged  # vectors are not logged
    assert 0.0 <= float(logged[task.monitor]) <= 1.0


def _package(path: Path, task: str) -> Path:
    meta = PackageMeta(
        arch="pixel-mlp",
        encoder="w8",
        bands=["b0", "b1"],
        mean=[0.0, 0.0],
        std=[1.0, 1.0],
        nodata=None,
        chip_size=32,
        classes=[ClassInfo(1, "a", "#112233"), ClassInfo(2, "b", "#445566")],
        tile=32,
        overlap=8,
        task=task,
    )
    import eoforge.temporal.models  # noqa: F401  (registers pixel-mlp)
    from eoforge.models import create_model

    return save_package(path, create_model("pixel-mlp", 2, 2, "w8"), meta, {}, onnx=False)


def test_the_package_records_the_task_and_predict_asks_it(tmp_path: Path) -> None:
    image = write_tif(tmp_path / "img.tif", torch.rand(2, 40, 40).numpy())
    pixel = _package(tmp_path / "pixel", "pixel")
    meta = json.loads((pixel / "eoforge.json").read_text())
    assert meta["task"] == "pixel" and read_meta(pixel).task == "pixel"
    item = json.loads((pixel / "item.json").read_text())
    assert item["properties"]["mlm:tasks"] == ["semantic-segmentation"]
    result = predict(pixel, [image], tmp_path / "map.tif", backend="torch-fp32")
    assert result.path.is_file()

    scene = _package(tmp_path / "scene", "scene")
    assert json.loads((scene / "item.json").read_text())["properties"]["mlm:tasks"] == [
        "scene-classification"
    ]
    with pytest.raises(PackageError, match=r"'scene' model \(coarse label raster.*predict_windows"):
        predict(scene, [image], tmp_path / "scene.tif", backend="torch-fp32")
    assert not (tmp_path / "scene.tif").exists()

    del meta["task"]  # packages written before the task was recorded: segmentation
    (pixel / "eoforge.json").write_text(json.dumps(meta))
    assert read_meta(pixel).task == "segmentation"
    meta["task"] = "regression"
    (pixel / "eoforge.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError, match=f"task 'regression' is not one of {', '.join(TASKS)}"):
        read_meta(pixel)


def test_per_pixel_metrics_share_one_confusion_matrix() -> None:
    """Accuracy, macro F1 (classes present in the reference), kappa and mIoU from one counted state."""
    from sklearn.metrics import cohen_kappa_score, f1_score

    pred = torch.tensor([[0, 0, 1, 1, 2, 2, 1, 0]])
    ref = torch.tensor([[0, 1, 1, 1, 1, 0, 255, 255]])  # class 2 predicted, never in the reference
    metrics = get_task("pixel").metrics(3)
    metrics.update(pred, ref)
    assert list(metrics.compute_groups.values()) == [["accuracy", "f1_macro", "kappa", "miou"]]
    got = {k: float(v) for k, v in metrics.compute().items()}
    p, r = pred[0, :6].numpy(), ref[0, :6].numpy()
    assert got["accuracy"] == pytest.approx(3 / 6)
    assert got["f1_macro"] == pytest.approx(f1_score(r, p, labels=[0, 1], average="macro"))
    assert got["kappa"] == pytest.approx(cohen_kappa_score(r, p), abs=1e-6)
    assert got["miou"] == pytest.approx((1 / 3 + 2 / 4) / 2)  # IoU of classes 0 and 1 (2 is left out)
