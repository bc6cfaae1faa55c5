"""The Lightning DataModule owning the chip loaders (reusable by anyone training with Lightning)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from eoforge.chips import ChipStore
from eoforge.data import ChipDataset


def default_workers() -> int:
    """CPU count - 1 (the main process trains), at most 4: batches come from memory or one Zarr read each."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class EpochShuffle(Sampler[int]):
    """A shuffle that depends only on ``(seed, epoch)``, the epoch read when iteration starts.

    The default sampler draws from the global generator whenever Lightning happens to create the iterator,
    which differs between an uninterrupted and a resumed run; this one gives epoch e the same order in both
    (``epoch`` must then count epochs as the fit loop does, see ``ChipDataModule._epoch``).
    """

    def __init__(self, n: int, seed: int, epoch: object) -> None:
        self.n = n
        self.seed = seed
        self.epoch = epoch  # a callable returning the current epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        epoch = int(self.epoch()) if callable(self.epoch) else 0
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        yield from torch.randperm(self.n, generator=g).tolist()


class ChipDataModule(L.LightningDataModule):
    """Train/val/test loaders over a :class:`ChipStore` (``store.splits``), normalised with ``mean``/``std`` (and
    ``clamp``, see :mod:`eoforge.normalise`).

    The train loader shuffles and reads with ``num_workers`` persistent worker processes, a batch per fetch
    (a split within ``cache_mb`` MiB is read once per process and then served from memory); augmentation runs
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
        seed: int = 0,
        clamp: bool = False,
        cache_mb: float = 1024,
    ) -> None:
        super().__init__()
        self.clamp = clamp
        self.store = store
        self.mean = mean
        self.std = std
        self.batch_size = batch_size
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.cache_mb = cache_mb

    def _epoch(self) -> int:
        """The epoch about to be trained: the fit loop's count of processed epochs, which a resumed run has
        restored when it creates its first iterator (``trainer.current_epoch`` still says the one before, and
        a loader worker takes its first indices at once, so the first resumed epoch replayed the last one)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        loop = getattr(trainer, "fit_loop", None)
        progress = getattr(getattr(loop, "epoch_progress", None), "current", None)
        return int(progress.processed) if progress is not None else int(trainer.current_epoch)

    def has(self, split: str) -> bool:
        return len(self.store.splits.get(split, [])) > 0

    def _loader(self, split: str, train: bool) -> DataLoader[dict[str, object]]:
        ds = ChipDataset(self.store, split, self.mean, self.std, clamp=self.clamp, cache_mb=self.cache_mb)
        workers = self.num_workers if train else 0
        return DataLoader(
            ds,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            sampler=EpochShuffle(len(ds), self.seed, self._epoch) if train else None,
            drop_last=train and len(ds) > self.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.pin_memory,
            # a private generator: creating an iterator draws the workers' base seed from it, not from the global
            # one that augmentation uses (Lightning creates iterators a different number of times in a resumed
            # run, so a global draw here made epoch e's augmentation depend on whether the run was resumed)
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader[dict[str, object]]:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader[dict[str, object]]:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader[dict[str, object]]:
        return self._loader("test", train=False)
