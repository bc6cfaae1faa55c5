"""Training: class weights, losses, augmentation, precision, val mIoU over present classes, freezing, resume."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from affine import Affine
from lightning.pytorch.callbacks import Callback

from eoforge.chips import ChipStore
from eoforge.config import IGNORE_INDEX, AugmentConfig, ModelConfig, TrainConfig
from eoforge.errors import InputError
from eoforge.geo import Grid
from eoforge.prepare import PreparedScene
from eoforge.train import present_class_miou, train
from eoforge.train import speed as speed_mod
from eoforge.train.augment import BatchAugment
from eoforge.train.fit import _Checkpoint, _strategy, _trackers
from eoforge.train.losses import class_weights_from_counts, make_loss

TINY = ModelConfig(arch="fpn", encoder="tu-mobilenetv3_small_050")


def test_class_weights_are_inverse_frequency_clipped() -> None:
    w = class_weights_from_counts([900, 90, 10, 0], clip=10)
    expected = [1000 / (3 * 900), 1000 / (3 * 90), 10.0, 10.0]  # 1000/30 = 33.3 clipped; absent: the largest
    assert w == pytest.approx(expected)
    assert class_weights_from_counts([5, 5]) == [1.0, 1.0]
    with pytest.raises(InputError, match="no labelled pixel"):
        class_weights_from_counts([0, 0])


def test_present_class_miou_leaves_out_classes_absent_from_the_reference() -> None:
    cm = torch.tensor(
        [[8, 2, 0], [1, 5, 2], [0, 0, 0]]
    )  # class 2 is predicted twice but never in the reference
    iou0 = 8 / (10 + 9 - 8)
    iou1 = 5 / (8 + 7 - 5)
    assert float(present_class_miou(cm)) == pytest.approx((iou0 + iou1) / 2)
    assert float(present_class_miou(torch.zeros(3, 3))) == 0.0


@pytest.mark.parametrize("loss", ["ce", "dice", "focal", "ce+dice", "lovasz", "ce+lovasz"])
def test_losses_ignore_unlabelled_pixels(loss: str) -> None:
    weights = [1.0, 2.0, 0.5] if loss in ("ce", "ce+dice", "ce+lovasz") else None
    fn = make_loss(TrainConfig(loss=loss, class_weights=weights), weights)  # type: ignore[arg-type]
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = IGNORE_INDEX
    value = fn(logits, target)
    assert torch.isfinite(value) and value > 0
    changed = logits.detach().clone()
    changed[:, :, :4] = torch.randn(2, 3, 4, 8) * 10  # only unlabelled pixels change
    assert float(fn(changed, target)) == pytest.approx(float(value), rel=1e-5, abs=1e-6)
    value.backward()
    assert logits.grad is not None and float(logits.grad[:, :, :4].abs().max()) == 0.0


def test_class_weights_and_smoothing_need_a_cross_entropy_loss() -> None:
    with pytest.raises(ValueError, match="class_weights need loss ce, ce\\+dice, ce\\+lovasz, not dice"):
        TrainConfig(loss="dice", class_weights="auto")
    with pytest.raises(ValueError, match="label_smoothing needs loss ce, ce\\+dice, ce\\+lovasz, not lovasz"):
        TrainConfig(loss="lovasz", label_smoothing=0.1)


def test_label_smoothing_and_ce_plus_lovasz_values() -> None:
    from segmentation_models_pytorch.losses import LovaszLoss

    k, eps = 4, 0.2
    target = torch.tensor([[[0, 1], [2, IGNORE_INDEX]]])
    logits = torch.full((1, k, 2, 2), -20.0)
    for i, c in enumerate([0, 1, 2, 3]):  # confident and right on the labelled pixels
        logits[0, c, i // 2, i % 2] = 20.0
    plain = make_loss(TrainConfig(loss="ce"))
    smooth = make_loss(TrainConfig(loss="ce", label_smoothing=eps))
    assert float(plain(logits, target)) == pytest.approx(0.0, abs=1e-6)
    # smoothing: the target puts eps / K on every class, so 40 nats of margin cost eps * (K - 1) / K * 40
    assert float(smooth(logits, target)) == pytest.approx(eps * (k - 1) / k * 40.0, rel=1e-4)
    torch.manual_seed(1)
    noisy = torch.randn(2, k, 8, 8)
    labels = torch.randint(0, k, (2, 8, 8))
    both = make_loss(TrainConfig(loss="ce+lovasz"))(noisy, labels)
    parts = torch.nn.functional.cross_entropy(noisy, labels) + LovaszLoss("multiclass")(noisy, labels)
    assert float(both) == pytest.approx(float(parts), rel=1e-5)


def test_augmentation_keeps_image_and_mask_aligned_and_is_off_for_validation() -> None:
    torch.manual_seed(0)
    aug = BatchAugment(AugmentConfig(brightness=0.2, contrast=0.2, noise=0.0), chip_size=16)
    mask = torch.randint(0, 4, (6, 16, 16))
    mask[:, :3] = IGNORE_INDEX
    image = torch.stack([mask.float(), torch.randn(6, 16, 16)], 1)
    out, m = aug.train()(image, mask)
    assert m.shape == mask.shape and set(m.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
    # band 0 is the mask up to a per-sample gain and shift: recover them and check every pixel agrees
    for i in range(6):
        a, b = np.polyfit(m[i].flatten().float().numpy(), out[i, 0].flatten().numpy(), 1)
        assert np.allclose(a * m[i].float().numpy() + b, out[i, 0].numpy(), atol=1e-3)
    assert not torch.equal(m, mask)  # something moved
    same, same_m = aug.eval()(image, mask)
    assert torch.equal(same, image) and torch.equal(same_m, mask)
    crop = BatchAugment(AugmentConfig(resized_crop=0.5), chip_size=16).train()
    out, m = crop(image, mask)
    assert out.shape == image.shape and set(m.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}


def test_precision_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed_mod.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(speed_mod, "cpu_has_bf16", lambda: True)
    plan = speed_mod.resolve_precision("auto", "auto")
    assert (plan.precision, plan.channels_last) == ("bf16-mixed", True)
    monkeypatch.setattr(speed_mod, "cpu_has_bf16", lambda: False)
    assert speed_mod.resolve_precision("auto", "cpu").precision == "32-true"
    monkeypatch.setattr(speed_mod.torch.cuda, "is_available", lambda: True)
    assert speed_mod.resolve_precision("auto", "auto").precision == "16-mixed"
    assert speed_mod.resolve_precision("32-true", "auto").channels_last is False


def test_missing_tracker_packages_are_clear_errors(tmp_path: Path) -> None:
    import importlib.util

    for name in ("mlflow", "tensorboard"):
        if importlib.util.find_spec(name) is None and (name != "tensorboard" or not _has_tbx()):
            with pytest.raises(
                InputError, match=f"train.logger: {name} is not installed; pip install {name}"
            ):
                _trackers(TrainConfig(logger=name), tmp_path, {})  # type: ignore[arg-type]


def test_mlflow_logs_config_curves_and_final_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.logger: mlflow, for real (mlflow-skinny + SQLAlchemy are pinned): a SQLite store in OUT/train by
    default (MLflow >= 3.7 refuses the old OUT/train/mlruns file store), MLFLOW_TRACKING_URI when set."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store, scene = _store(tmp_path / "chips")
    res = train(store, scene, TINY, _cfg(logger="mlflow"), tmp_path / "a")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'a' / 'train' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("eoforge")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["model/arch"] == "fpn" and run.data.params["train/seed"] == "3"
    with open(tmp_path / "a" / "train" / "metrics.csv") as f:
        logged = [float(r["val_miou"]) for r in csv.DictReader(f) if r.get("val_miou")]
    curve = [m.value for m in client.get_metric_history(run.info.run_id, "val_miou")]
    assert len(curve) == 2 and curve == pytest.approx(logged)
    assert run.data.metrics["best_val_miou"] == pytest.approx(res.best_score)
    assert run.data.metrics["epochs_run"] == 2
    server = tmp_path / "server.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{server}")
    train(store, scene, TINY, _cfg(logger="mlflow", epochs=1), tmp_path / "b")
    assert server.is_file() and not (tmp_path / "b" / "train" / "mlflow.db").exists()
    other = MlflowClient(tracking_uri=f"sqlite:///{server}")
    exp_b = other.get_experiment_by_name("eoforge")
    assert exp_b is not None
    (run_b,) = other.search_runs([exp_b.experiment_id])
    assert run_b.data.metrics["epochs_run"] == 1


def test_mlflow_without_sqlalchemy_and_without_a_server_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "sqlalchemy" else real(n, *a))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(InputError, match="mlflow's local store needs sqlalchemy .*MLFLOW_TRACKING_URI"):
        _trackers(TrainConfig(logger="mlflow"), tmp_path, {})
    assert not (tmp_path / "mlflow.db").exists()


def _has_tbx() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboardX") is not None


# --- training runs on a hand-built chip store -------------------------------------------------------------


def _store(root: Path) -> tuple[ChipStore, PreparedScene]:
    """12 chips of 32 px, 4 bands; the class is a function of band 0. Validation chips hold no class 2."""
    rng = np.random.default_rng(0)
    n, size = 12, 32
    labels = rng.integers(0, 3, (n, size // 8, size // 8)).repeat(8, 1).repeat(8, 2).astype(np.uint8)
    labels[8:][labels[8:] == 2] = 1  # chips 8..11 (val) lack class 2
    labels[:, :2] = IGNORE_INDEX
    images = rng.normal(0, 0.3, (n, 4, size, size)).astype(np.float32)
    images[:, 0] += labels.astype(np.float32) % 3
    g = zarr.open_group(str(root / "chips.zarr"), mode="w")
    g.create_array("image", shape=images.shape, chunks=(1, 4, size, size), dtype="float32")[:] = images
    g.create_array("label", shape=labels.shape, chunks=(1, size, size), dtype="uint8")[:] = labels
    store = ChipStore(
        root=root, size=size, splits={"train": list(range(8)), "val": [8, 9, 10, 11], "test": []}
    )
    counts = [int((labels[:8] == k).sum()) for k in range(3)]
    scene = PreparedScene(
        root=root,
        grid=Grid("EPSG:32633", Affine(10, 0, 0, 0, -10, 0), 64, 64),
        bands=["blue", "green", "red", "nir"],
        class_ids=[1, 2, 3],
        class_names=["a", "b", "c"],
        colors=["#000000"] * 3,
        mean=[0.0] * 4,
        std=[1.0] * 4,
        class_counts=counts,
        sources=[],
        nodata=None,
    )
    return store, scene


def _cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "epochs": 2,
        "batch_size": 4,
        "precision": "32-true",
        "num_workers": 0,
        "accelerator": "cpu",
        "deterministic": True,
        "seed": 3,
        "loss": "ce+dice",
        "class_weights": "auto",
    }
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_val_miou_averages_the_classes_present_and_freezing_keeps_the_encoder(tmp_path: Path) -> None:
    store, scene = _store(tmp_path)
    from eoforge.models import create_model

    res = train(store, scene, TINY.model_copy(update={"freeze_encoder_epochs": 1}), _cfg(epochs=1), tmp_path)
    with open(tmp_path / "train" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = float(next(r["val_miou"] for r in rows if r.get("val_miou")))
    # recompute from the returned (best) model on the validation chips
    images, labels = store.arrays()
    x = torch.from_numpy(np.asarray(images[8:12]))
    y = np.asarray(labels[8:12]).astype(np.int64)
    with torch.no_grad():
        pred = res.model(x).argmax(1).numpy()
    ok = y != IGNORE_INDEX
    cm = np.bincount(3 * y[ok] + pred[ok], minlength=9).reshape(3, 3)
    assert cm[2].sum() == 0  # class 2 is not in the validation reference
    iou = [cm[k, k] / (cm[k].sum() + cm[:, k].sum() - cm[k, k]) for k in (0, 1)]
    assert logged == pytest.approx(float(np.mean(iou)), abs=1e-5)
    # the encoder was frozen for the single epoch: its weights are the initial ones
    torch.manual_seed(3)
    init = create_model(TINY.arch, 4, 3, TINY.encoder)
    enc0, enc1 = init.encoder.state_dict(), res.model.encoder.state_dict()
    assert all(torch.equal(enc0[k], enc1[k]) for k in enc0)
    assert not torch.equal(
        init.decoder.state_dict()["seg_blocks.0.block.0.block.0.weight"],
        res.model.decoder.state_dict()["seg_blocks.0.block.0.block.0.weight"],
    )
    summary = (tmp_path / "train" / "summary.json").read_text()
    assert '"seed": 3' in summary


class _Kill(Callback):
    """Stops the run as the second epoch starts, as a SIGKILL would (last.ckpt of the first is written)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        if trainer.current_epoch == 1:
            raise RuntimeError("killed")


@pytest.mark.parametrize("workers", [0, 1])
def test_resumed_training_equals_uninterrupted(tmp_path: Path, workers: int) -> None:
    """With a loader worker too: it takes the first epoch's indices when Lightning creates the iterator, before
    the resumed epoch is announced (the first resumed epoch replayed the previous one's order)."""
    store, scene = _store(tmp_path / "chips")
    (tmp_path / "chips").mkdir(exist_ok=True)
    straight = train(store, scene, TINY, _cfg(num_workers=workers), tmp_path / "a")
    # last.ckpt is the last epoch's, whether or not it was the best
    last = torch.load(tmp_path / "a" / "train" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 4)
    with pytest.raises(RuntimeError, match="killed"):
        train(store, scene, TINY, _cfg(num_workers=workers), tmp_path / "b", callbacks=[_Kill()])
    assert (tmp_path / "b" / "train" / "checkpoints" / "last.ckpt").is_file()
    resumed = train(store, scene, TINY, _cfg(num_workers=workers), tmp_path / "b")
    assert resumed.resumed and resumed.epochs_run == straight.epochs_run == 2
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the last epoch's weights too, whichever epoch was the best (the DataLoader once drew from the global
    # generator a different number of times after a resume, so the resumed epoch's augmentation differed)
    ends = [torch.load(tmp_path / r / "train" / "checkpoints" / "last.ckpt", weights_only=True) for r in "ab"]
    assert all(torch.equal(ends[0]["state_dict"][k], ends[1]["state_dict"][k]) for k in ends[0]["state_dict"])
    # the log holds every epoch, the ones before the kill too (Lightning's CSV logger deletes the file)
    logs = [_log_rows(tmp_path / r) for r in "ab"]
    assert [r["epoch"] for r in logs[1]] == ["0", "0", "1", "1"] and logs[0] == logs[1]
    assert not (tmp_path / "b" / "train" / "metrics.before.csv").exists()
    # a changed config does not resume: it starts over
    other = train(store, scene, TINY, _cfg(lr=0.01, epochs=1), tmp_path / "b")
    assert not other.resumed


def test_a_moved_run_resumes_with_its_best_score_and_checkpoint(tmp_path: Path) -> None:
    """Killed, then its folder moved: the resumed run equals the uninterrupted one, and its best checkpoint
    is in the new folder (Lightning alone drops the best score when the checkpoint folder changed)."""
    store, scene = _store(tmp_path / "chips")
    straight = train(store, scene, TINY, _cfg(), tmp_path / "a")
    with pytest.raises(RuntimeError, match="killed"):
        train(store, scene, TINY, _cfg(), tmp_path / "b", callbacks=[_Kill()])
    shutil.move(tmp_path / "b", tmp_path / "c")
    resumed = train(store, scene, TINY, _cfg(), tmp_path / "c")
    assert resumed.resumed and resumed.best_score == straight.best_score
    assert resumed.best_checkpoint == tmp_path / "c" / "train" / "checkpoints" / "best.ckpt"
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ema_weights_are_validated_packaged_and_resumed(tmp_path: Path) -> None:
    """train.ema: the averaged weights (not the last step's) are what the best checkpoint and the returned model
    hold; a killed EMA run resumed equals the uninterrupted one (the average travels in last.ckpt)."""
    store, scene = _store(tmp_path / "chips")
    straight = train(store, scene, TINY, _cfg(ema=0.5), tmp_path / "a")
    best = torch.load(straight.best_checkpoint, weights_only=True)  # type: ignore[arg-type]
    averaged, current = best["state_dict"], best["current_model_state"]
    weights = [k for k in averaged if k.startswith("model.") and k.endswith(".weight")]
    assert weights and any(not torch.equal(averaged[k], current[k]) for k in weights)
    got = straight.model.state_dict()
    assert all(torch.equal(got[k[len("model.") :]], averaged[k]) for k in weights)
    with pytest.raises(RuntimeError, match="killed"):
        train(store, scene, TINY, _cfg(ema=0.5), tmp_path / "b", callbacks=[_Kill()])
    resumed = train(store, scene, TINY, _cfg(ema=0.5), tmp_path / "b")
    assert resumed.resumed
    b = resumed.model.state_dict()
    assert all(torch.equal(got[k], b[k]) for k in got)
    ends = [torch.load(tmp_path / r / "train" / "checkpoints" / "last.ckpt", weights_only=True) for r in "ab"]
    for key in ("state_dict", "current_model_state"):  # the average and the trained weights
        assert all(torch.equal(ends[0][key][k], ends[1][key][k]) for k in ends[0][key])
    plain = train(store, scene, TINY, _cfg(), tmp_path / "c").model.state_dict()
    assert any(not torch.equal(got[k], plain[k]) for k in got if k.endswith(".weight"))


def test_checkpoint_state_saved_in_another_folder_keeps_its_best_score(tmp_path: Path) -> None:
    ck = _Checkpoint(dirpath=tmp_path / "new", filename="best", monitor="val_miou", mode="max")
    old = str(tmp_path / "old")
    ck.load_state_dict(
        {
            "monitor": "val_miou",
            "best_model_score": torch.tensor(0.5),
            "best_model_path": f"{old}/best.ckpt",
            "current_score": torch.tensor(0.4),
            "dirpath": old,
            "best_k_models": {f"{old}/best.ckpt": torch.tensor(0.5)},
            "kth_best_model_path": f"{old}/best.ckpt",
            "kth_value": torch.tensor(0.5),
            "last_model_path": "",
        }
    )
    assert ck.best_model_score is not None and float(ck.best_model_score) == 0.5
    assert ck.best_model_path == str(tmp_path / "new" / "best.ckpt")
    assert list(ck.best_k_models) == [str(tmp_path / "new" / "best.ckpt")]


class _WorldSize(Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        (self.path / f"rank{trainer.global_rank}.txt").write_text(f"{trainer.world_size} {trainer.strategy}")


def _log_rows(run: Path) -> list[dict[str, str]]:
    """metrics.csv rows, the floats rounded to 6 digits (a resumed epoch's are the same up to float printing)."""
    with open(run / "train" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [
        {k: (f"{float(v):.6g}" if v and k not in ("epoch", "step") else v) for k, v in r.items()}
        for r in rows
    ]


def _losses(run: Path) -> list[float]:
    with open(run / "train" / "metrics.csv") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f) if r.get("train_loss")]


def test_ddp_with_two_cpu_processes_follows_the_single_process_loss_curve(tmp_path: Path) -> None:
    """2 gloo ranks (spawned) and 1 process train on the same chips with the same global batch (4 chips) and
    steps per epoch (2): same epochs logged, both curves fall, final losses within 25 % of each other."""
    store, scene = _store(tmp_path)
    epochs = 4
    one = train(store, scene, TINY, _cfg(epochs=epochs, lr=0.01, augment=None), tmp_path / "one")
    cfg = _cfg(
        epochs=epochs, lr=0.01, augment=None, batch_size=2, strategy="ddp", devices=2, deterministic=False
    )
    two = train(store, scene, TINY, cfg, tmp_path / "two", callbacks=[_WorldSize(tmp_path)])
    ranks = sorted(p.read_text() for p in tmp_path.glob("rank*.txt"))
    assert len(ranks) == 2 and all(r.startswith("2 ") and "DDPStrategy" in r for r in ranks)
    assert two.best_checkpoint is not None and two.best_checkpoint.is_file()
    # the spawned ranks' progress comes back from their checkpoints
    assert two.epochs_run == one.epochs_run == epochs and two.best_score is not None
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == epochs
    assert a[-1] < a[0] and b[-1] < b[0]
    assert abs(a[-1] - b[-1]) <= 0.25 * a[-1], (a, b)


class _Pid(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, int, str]] = []

    def on_train_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self.seen.append((os.getpid(), trainer.world_size, type(trainer.strategy).__name__))


def test_ddp_on_one_device_trains_in_this_process(tmp_path: Path) -> None:
    """`strategy: ddp` with one device and one node is one process: no rank is spawned (spawning one cost
    ~40 s on a GPU machine), the trainer is Lightning's DDP strategy in this process."""
    store, scene = _store(tmp_path)
    seen = _Pid()
    cfg = _cfg(epochs=1, augment=None, strategy="ddp", devices=1, deterministic=False)
    res = train(store, scene, TINY, cfg, tmp_path / "run", callbacks=[seen])
    assert seen.seen == [(os.getpid(), 1, "DDPStrategy")]
    assert res.epochs_run == 1 and res.best_checkpoint is not None and res.best_checkpoint.is_file()


def test_strategy_spawns_ranks_only_without_a_launcher_and_for_several_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for k in ("LOCAL_RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    assert _strategy(TrainConfig(strategy="ddp", devices=1)) == "ddp"
    assert _strategy(TrainConfig(strategy="ddp", devices=2)) == "ddp_spawn"
    assert _strategy(TrainConfig(strategy="ddp", devices=1, num_nodes=2)) == "ddp_spawn"
    assert _strategy(TrainConfig(strategy="auto", devices=2)) == "ddp_spawn"
    assert _strategy(TrainConfig(strategy="auto", devices=1)) == "auto"
    monkeypatch.setenv("LOCAL_RANK", "0")  # under torchrun/SLURM the launcher made the processes
    assert _strategy(TrainConfig(strategy="ddp", devices=2)) == "ddp"


def test_datamodule_loaders_with_workers_and_an_epoch_seeded_order(tmp_path: Path) -> None:
    from eoforge.train import ChipDataModule
    from eoforge.train.datamodule import EpochShuffle, default_workers

    store, _ = _store(tmp_path)
    dm = ChipDataModule(store, [1.0, 0.0, 0.0, 0.0], [2.0, 1.0, 1.0, 1.0], batch_size=3, num_workers=1)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # 8 chips, batch 3, last partial batch dropped
    assert batches[0]["image"].shape == (3, 4, 32, 32) and batches[0]["mask"].dtype == torch.int64
    images, _ = store.arrays()
    raw = np.asarray(images[0:8])
    got = torch.cat([b["image"] for b in batches])[:, 0].numpy()
    # every chip is normalised with (x - mean) / std and comes from the train split only
    assert all(np.any(np.all(np.isclose(g, (raw[:, 0] - 1.0) / 2.0), axis=(1, 2))) for g in got)
    assert len(list(dm.val_dataloader())) == 2 and 1 <= max(default_workers(), 1) <= 4
    epoch = [0]
    s = EpochShuffle(8, seed=5, epoch=lambda: epoch[0])
    first = list(s)
    assert sorted(first) == list(range(8)) and list(s) == first
    epoch[0] = 1
    assert list(s) != first


def test_a_diverged_loss_stops_training_with_one_clear_line(tmp_path: Path) -> None:
    """Non-finite values in the data make the loss NaN: training stops with an InputError, not an all-NaN model."""
    store, scene = _store(tmp_path)
    image = zarr.open_group(str(tmp_path / "chips.zarr"), mode="r+")["image"]
    bad = np.asarray(image[0])
    bad[1] = np.inf  # a band of inf: normalisation keeps it inf (only NaN means nodata)
    image[0] = bad  # type: ignore[index]
    with pytest.raises(
        InputError, match=r"training diverged: the loss is (nan|inf) at epoch 0.*lower train.lr"
    ):
        train(store, scene, TINY, _cfg(epochs=1, batch_size=8), tmp_path)


def test_optimizer_is_fused_adamw_on_cpu_and_steps() -> None:
    from eoforge.train.task import make_optimizer

    w = torch.nn.Parameter(torch.ones(3))
    opt = make_optimizer([w], lr=0.1, weight_decay=0.0)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    (w * torch.tensor([1.0, -1.0, 0.0])).sum().backward()
    opt.step()
    # Adam's first step moves each parameter by lr against the sign of its gradient (none where it is zero)
    torch.testing.assert_close(w.detach(), torch.tensor([0.9, 1.1, 1.0]))


def test_tensorboard_tracker_logs_the_config_the_curves_and_the_final_metrics(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")  # pinned in requirements.lock
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    store, scene = _store(tmp_path)
    res = train(store, scene, TINY, _cfg(epochs=2, logger="tensorboard"), tmp_path)
    logdir = tmp_path / "train" / "tensorboard"
    assert list(logdir.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    scalars = {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert len(scalars["train_loss"]) == 2 and len(scalars["val_miou"]) == 2
    assert scalars["epochs_run"] == [2.0]
    (best,) = scalars["best_val_miou"]
    assert best == pytest.approx(res.best_score) and best == pytest.approx(max(scalars["val_miou"]))
    # the config is the run's hyperparameters (nested sections flattened with '/')
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["train/loss"].string_value == "ce+dice" and hparams["train/epochs"].number_value == 2
    assert hparams["model/encoder"].string_value == TINY.encoder


class _Compiled(Callback):
    def __init__(self) -> None:
        self.kinds: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.kinds.append(type(pl_module._forward[0]).__name__)


def test_compile_trains_through_torch_compile_and_checkpoints_the_plain_model(tmp_path: Path) -> None:
    """torch.compile on CPU (inductor; a per-pixel CNN keeps the compile short): a checkpoint of plain keys."""
    from eoforge.models import create_model

    store, scene = _store(tmp_path)
    model_cfg = ModelConfig(arch="pixel-cnn", encoder="w8")
    seen = _Compiled()
    cfg = _cfg(epochs=1, compile=True, deterministic=False)
    res = train(store, scene, model_cfg, cfg, tmp_path, callbacks=[seen])
    assert seen.kinds and set(seen.kinds) == {"OptimizedModule"}
    assert res.best_checkpoint is not None and res.best_checkpoint.is_file()
    state = torch.load(res.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    plain = create_model("pixel-cnn", 4, 3, "w8").state_dict()
    assert sorted(k for k in state if k.startswith("model.")) == sorted(f"model.{k}" for k in plain)
    assert not [k for k in state if k.startswith("_forward")]  # no "_forward._orig_mod." copy
    assert all(torch.equal(state[f"model.{k}"], v) for k, v in res.model.state_dict().items())


def test_training_log_survives_two_kills_and_drops_unfinished_epochs(tmp_path: Path) -> None:
    from eoforge.train import history

    def write(rows: list[str]) -> None:
        (tmp_path / "metrics.csv").write_text(
            "epoch,step,train_loss,val_miou\n" + "".join(r + "\n" for r in rows)
        )

    write(["0,1,,0.2", "0,1,2.0,", "1,3,,0.3", "1,3,1.5,", "2,5,,0.1"])  # killed in epoch 2, after validating
    assert history.keep_before_resume(tmp_path, last_epoch=1) == 4
    # Lightning deleted the log; the resumed run logged epoch 2, then was killed again after last.ckpt of 2
    write(["2,5,,0.35", "2,5,1.2,"])
    assert history.keep_before_resume(tmp_path, last_epoch=2) == 6
    write(["3,7,,0.4", "3,7,1.0,"])  # the second resume finishes
    history.merge_after_resume(tmp_path)
    rows = history.read_rows(tmp_path / "metrics.csv")
    assert [(r["epoch"], r.get("val_miou", "")) for r in rows] == [
        ("0", "0.2"),
        ("0", ""),
        ("1", "0.3"),
        ("1", ""),
        ("2", "0.35"),
        ("2", ""),
        ("3", "0.4"),
        ("3", ""),
    ]
    assert not (tmp_path / "metrics.before.csv").exists()
    # resuming a finished run: Lightning writes nothing, the log is kept as it was, once
    history.keep_before_resume(tmp_path, last_epoch=3)
    history.merge_after_resume(tmp_path)
    assert history.read_rows(tmp_path / "metrics.csv") == rows
