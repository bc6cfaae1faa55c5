"""The Lightning DataModule owning the chip loaders (reusable by anyone training with Lightning)."""

from __future__ import annotations

import os

import lightning as L
from torch.utils.data import DataLoader

from eoforge.chips import ChipStore
from eoforge.data import ChipDataset


def default_workers() -> int:
    """CPU count - 1 (the main process trains), at most 4: chips are one Zarr chunk each, cheap to read."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class ChipDataModule(L.LightningDataModule):
    """Train/val/test loaders over a :class:`ChipStore` (``store.splits``), normalised with ``mean``/``std``.

    The train loader shuffles and reads with ``num_workers`` persistent worker processes; augmentation runs
    on the batch on the training device (see :mod:`eoforge.train.augment`), never here.
    """

    def __init__(
        self,
        store: ChipStore,
        mean: list[float],
        std: list[float],
        batch_size: int = 16,
        num_workers: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.store = store
        self.mean = mean
        self.std = std
        self.batch_size = batch_size
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.pin_memory = pin_memory

    def has(self, split: str) -> bool:
        return len(self.store.splits.get(split, [])) > 0

    def _loader(self, split: str, train: bool) -> DataLoader[dict[str, object]]:
        ds = ChipDataset(self.store, split, self.mean, self.std)
        workers = self.num_workers if train else 0
        return DataLoader(
            ds,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and len(ds) > self.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader[dict[str, object]]:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader[dict[str, object]]:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader[dict[str, object]]:
        return self._loader("test", train=False)
