"""The training loader that a checkpoint can resume exactly, mid-epoch.

A resumed run ends bit for bit where the uninterrupted one does because nothing random in training depends on
the history of the process: (1) the batches of an epoch are a function of (seed, epoch), and the checkpoint
records how many of the current epoch were trained on, so the resumed run starts at the next one; (2) the
SpecAugment masks of a batch come from a generator seeded by (seed, rank, epoch, position), however many
batches the process drew before (prefetching, worker processes, a restart); (3) the global generator is
seeded by (seed, rank, epoch, batch index) before each training step (``train.SeedEachBatch``), so dropout and
BLoRA's weight noise repeat. Weights, optimizer moments, the learning-rate schedule and the loop counters are
in the checkpoint. On a GPU this holds to the last bit only where the kernels are deterministic (the Trainer
runs with deterministic=False, so atomic-add reductions may differ between any two runs, interrupted or not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_asr.data.datamodule import ManifestDataModule


def batch_seed(seed: int, *place) -> int:
    """A 63-bit seed from the run's seed and a place in training (a tag, rank, epoch, batch)."""
    digest = hashlib.blake2b(repr((seed, *place)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class PlacedBatches(Sampler[list]):
    """The training batch sampler with every index tagged ``(epoch, position, index)``; after ``resume_at``,
    the next iteration starts at that batch of that epoch."""

    def __init__(self, batches: Sampler):
        self.batches, self.epoch, self.start = batches, 0, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches.set_epoch(epoch)

    def resume_at(self, epoch: int, position: int) -> None:
        self.start = (epoch + 1, 0) if position >= len(self) else (epoch, position)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        epoch, skip = self.epoch, 0
        if self.start is not None:
            (epoch, skip), self.start = self.start, None
            self.set_epoch(epoch)
        batches = list(self.batches)  # the epoch's order is drawn now, for the epoch set just before
        return iter(
            [
                [(epoch, position, index) for index in batch]
                for position, batch in enumerate(batches)
                if position >= skip
            ]
        )


class PlacedDataset(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, placed: tuple[int, int, int]):
        epoch, position, index = placed
        return (epoch, position), self.dataset[index]


class SeededCollate:
    """Collates a batch with the CPU generator seeded by the batch's place, and restores it afterwards."""

    def __init__(self, collate, seed: int, rank: int):
        self.collate, self.seed, self.rank = collate, seed, rank

    def __call__(self, items: list):
        epoch, position = items[0][0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_seed(self.seed, "augment", self.rank, epoch, position))
            return self.collate([item for _, item in items])


class ResumableTrainLoader(DataLoader):
    """The training loader, with the state Lightning saves in checkpoints (``state_dict``) and hands back
    before it iterates again (``load_state_dict``): the epoch and how many of its batches were trained on."""

    def __init__(self, loader: DataLoader, seed: int, rank: int, progress: Callable[[], tuple[int, int]]):
        self.placed, self.progress = PlacedBatches(loader.batch_sampler), progress
        super().__init__(
            PlacedDataset(loader.dataset),
            batch_sampler=self.placed,
            collate_fn=SeededCollate(loader.collate_fn, seed, rank),
            num_workers=loader.num_workers,
            persistent_workers=loader.persistent_workers,
            pin_memory=loader.pin_memory,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            prefetch_factor=loader.prefetch_factor if loader.num_workers else None,
        )

    def __iter__(self):
        # Lightning calls set_epoch on a loader's sampler, or on its batch sampler's sampler, never on the
        # batch sampler itself: without this, every epoch would repeat the first epoch's order
        self.placed.set_epoch(self.progress()[0])
        return super().__iter__()

    def state_dict(self) -> dict:
        epoch, position = self.progress()
        return {"epoch": epoch, "position": position}

    def load_state_dict(self, state: dict) -> None:
        self.placed.resume_at(state["epoch"], state["position"])


class ResumableDataModule(ManifestDataModule):
    """``ManifestDataModule`` whose training loader is a ``ResumableTrainLoader``."""

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if trainer is None:  # outside a Trainer there is no progress to record
            return super().train_dataloader()
        # batches trained on in this epoch: counted before the on_train_batch_end hooks, so a checkpoint saved
        # there or after validation counts the batch it follows
        progress = lambda: (trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed)  # noqa: E731
        return ResumableTrainLoader(super().train_dataloader(), self.seed, trainer.global_rank, progress)
