"""Chip datasets for training: samples are ``dict[str, Tensor]`` read one Zarr chunk at a time."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from eoforge.chips import ChipStore
from eoforge.normalise import normalize_array


def normalize(image: np.ndarray, mean: np.ndarray, std: np.ndarray, clamp: bool = False) -> np.ndarray:
    """Normalise bands ``(C, H, W)`` (see :mod:`eoforge.normalise`); nodata (NaN) becomes 0."""
    return normalize_array(image, mean, std, clamp)


def d4(image: torch.Tensor, mask: torch.Tensor, k: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One of the 8 symmetries of the square (dihedral group D4), applied alike to image and mask."""
    image = torch.rot90(image, k, dims=(-2, -1))
    mask = torch.rot90(mask, k, dims=(-2, -1))
    if flip:
        image, mask = image.flip(-1), mask.flip(-1)
    return image, mask


class ChipDataset(Dataset[dict[str, torch.Tensor]]):
    """Chips of one split: ``{"image": (C, S, S) float32 normalised, "mask": (S, S) int64}``; ``clamp``: clip the
    normalised values to [0, 1] (``normalize: percentile``, :func:`eoforge.normalise.clamps`)."""

    def __init__(
        self,
        store: ChipStore,
        split: str,
        mean: list[float],
        std: list[float],
        augment: bool = False,
        clamp: bool = False,
    ) -> None:
        self.indices = store.splits[split]
        self.store = store
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.augment = augment
        self.clamp = clamp
        self._arrays = store.arrays()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        images, labels = self._arrays
        j = self.indices[i]
        image = torch.from_numpy(normalize(np.asarray(images[j]), self.mean, self.std, self.clamp))
        mask = torch.from_numpy(np.asarray(labels[j]).astype(np.int64))
        if self.augment:
            k = int(torch.randint(0, 4, ()).item())
            flip = bool(torch.randint(0, 2, ()).item())
            image, mask = d4(image, mask, k, flip)
        return {"image": image.contiguous(), "mask": mask.contiguous()}
