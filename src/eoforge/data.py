"""Chip datasets for training: samples are ``dict[str, Tensor]``, fetched a batch at a time.

A split that fits in ``cache_mb`` is read once per process (whole chunks, in chip order) and kept normalised
in memory, so an epoch costs no I/O; a larger split is read batch by batch, one Zarr call per batch for the
chips it needs (sorted, so chips of one chunk share its decode).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset

from eoforge.chips import ChipStore
from eoforge.chips.store import chunk_runs
from eoforge.normalise import normalize_array

log = logging.getLogger(__name__)

READ_CHIPS = 256
"""Chips per read while filling the cache, rounded to whole Zarr chunks (bounds the temporary raw copy)."""


def normalize(image: np.ndarray, mean: np.ndarray, std: np.ndarray, clamp: bool = False) -> np.ndarray:
    """Normalise bands ``(..., C, H, W)`` (see :mod:`eoforge.normalise`); nodata (NaN) becomes 0."""
    return normalize_array(image, mean, std, clamp)


def d4(image: torch.Tensor, mask: torch.Tensor, k: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One of the 8 symmetries of the square (dihedral group D4), applied alike to image and mask."""
    image = torch.rot90(image, k, dims=(-2, -1))
    mask = torch.rot90(mask, k, dims=(-2, -1))
    if flip:
        image, mask = image.flip(-1), mask.flip(-1)
    return image, mask


class ChipDataset(Dataset[dict[str, torch.Tensor]]):
    """Chips of one split: ``{"image": (C, S, S) float32 normalised, "mask": (S, S) int64}``.

    ``clamp``: clip the normalised values to [0, 1] (``normalize: percentile``, :func:`eoforge.normalise.clamps`).
    ``cache_mb``: hold the split in memory (in each process that reads it: every DataLoader worker has its
    own copy) when its normalised chips take at most this many MiB; 0 never does.
    """

    def __init__(
        self,
        store: ChipStore,
        split: str,
        mean: list[float],
        std: list[float],
        augment: bool = False,
        clamp: bool = False,
        cache_mb: float = 0,
    ) -> None:
        self.indices = np.asarray(store.splits[split], dtype=np.int64)
        self.store = store
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.augment = augment
        self.clamp = clamp
        images, _ = store.arrays()
        per_chip = int(np.prod(images.shape[1:])) * 4 + store.size * store.size
        self.cached = len(self.indices) * per_chip <= cache_mb * 2**20
        self._arrays: tuple[zarr.Array, zarr.Array] | None = None
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict[str, object]:
        # worker processes open the store and fill their cache themselves
        return {**self.__dict__, "_arrays": None, "_cache": None}

    def _open(self) -> tuple[zarr.Array, zarr.Array]:
        if self._arrays is None:
            self._arrays = self.store.arrays()
        return self._arrays

    def _read(self, chips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised images and labels of ``chips`` (any order, repeats allowed), read with one Zarr call
        (a slice when they are consecutive)."""
        images, labels = self._open()
        u, back = np.unique(chips, return_inverse=True)
        # chunks of one call are decoded as one batch (zarr's default pipeline hands them over one by one)
        with zarr.config.set({"codec_pipeline.batch_size": max(len(u), 1)}):
            if len(u) and u[-1] - u[0] + 1 == len(u):
                img, lab = images[u[0] : u[-1] + 1], labels[u[0] : u[-1] + 1]
            else:
                img, lab = images.get_orthogonal_selection((u,)), labels.get_orthogonal_selection((u,))
        out = normalize(np.asarray(img), self.mean, self.std, self.clamp)
        return out[back], np.asarray(lab, dtype=np.uint8)[back]

    def _fill(self) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None:
            images, labels = self._open()
            img = np.empty((len(self.indices), *images.shape[1:]), dtype=np.float32)
            lab = np.empty((len(self.indices), *labels.shape[1:]), dtype=np.uint8)
            chunk = int(images.chunks[0])  # reads of whole chunks: none is decoded twice
            for a, b in chunk_runs(self.indices, chunk * max(1, READ_CHIPS // chunk)):
                img[a:b], lab[a:b] = self._read(self.indices[a:b])
            self._cache = img, lab
            log.debug("cached %d chips (%.0f MiB)", len(self.indices), (img.nbytes + lab.nbytes) / 2**20)
        return self._cache

    def batch(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(N, C, S, S)`` and masks ``(N, S, S)`` int64 of the split's chips at ``positions``."""
        # numpy, not torch, gathers and casts: torch's intra-op threads cost ~100x more on a busy machine
        at = np.asarray(positions, dtype=np.int64)
        if self.cached:
            img, lab = self._fill()
            i, m = img[at], lab[at]
        else:
            i, m = self._read(self.indices[at])
        image, mask = torch.from_numpy(i), torch.from_numpy(m.astype(np.int64))
        if self.augment:
            pairs = [
                d4(
                    image[j],
                    mask[j],
                    int(torch.randint(0, 4, ()).item()),
                    bool(torch.randint(0, 2, ()).item()),
                )
                for j in range(len(positions))
            ]
            image = torch.stack([p[0] for p in pairs])
            mask = torch.stack([p[1] for p in pairs])
        return image.contiguous(), mask.contiguous()

    def __getitems__(self, positions: list[int]) -> list[dict[str, torch.Tensor]]:
        """The DataLoader's batched fetch: one read (or cache lookup) for the whole batch."""
        image, mask = self.batch(positions)
        return [{"image": image[j], "mask": mask[j]} for j in range(len(positions))]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])[0]
