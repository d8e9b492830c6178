"""From manifests to batches: utterances checked line by line, bucketed by duration, and collated by the
model's backbone (Whisper: log-mel windows and prefixed labels; wav2vec2: waveforms and CTC targets).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torchaudio
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from lightning_asr.data.features import cached_inputs
from lightning_asr.data.manifest import ManifestError, Utterance, read_manifest
from lightning_asr.models.backbone import IGNORE_INDEX, Backbone
from lightning_asr.tokenizer import WHISPER_LANGUAGES

__all__ = ["IGNORE_INDEX", "BucketBatchSampler", "ManifestDataModule", "ShardSampler", "UtteranceDataset"]


def set_name(manifest: str | Path) -> str:
    """``.../ko-en/test.jsonl`` -> ``ko-en/test``: how evaluation sets are named in logs and tables."""
    path = Path(manifest)
    return f"{path.parent.name}/{path.stem}"


class UtteranceDataset(Dataset):
    """(utterance, samples) pairs; or (utterance, cached model input) where ``inputs`` holds one row each."""

    def __init__(self, utterances: list[Utterance], inputs: np.ndarray | None = None):
        self.utterances, self.inputs = utterances, inputs

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> tuple[Utterance, np.ndarray]:
        utterance = self.utterances[index]
        if self.inputs is not None:
            return utterance, np.asarray(self.inputs[index])
        return utterance, utterance.samples()


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar duration: sort within shuffled buckets, then shuffle the batches.
    Deterministic given ``seed`` and the epoch (``set_epoch``), so a resumed run sees the same order.

    Under data parallelism every process draws the same global batches of ``batch_size * num_replicas``
    utterances and takes its own slice of each, so a step of N processes sees exactly the utterances one
    process with an N-times larger batch would; trailing batches that cannot be split evenly are dropped so
    that every process takes the same number of steps."""

    def __init__(
        self,
        durations: list[float],
        batch_size: int,
        bucket_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        self.durations, self.batch_size = durations, batch_size
        self.num_replicas, self.rank = num_replicas, rank
        self.global_batch = batch_size * num_replicas
        self.bucket_size = max(bucket_size, self.global_batch)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = list(range(len(self.durations)))
        rng = random.Random(self.seed * 100003 + self.epoch)
        if self.shuffle:
            rng.shuffle(order)
        batches = []
        for start in range(0, len(order), self.bucket_size):
            bucket = sorted(order[start : start + self.bucket_size], key=self.durations.__getitem__)
            batches += [bucket[i : i + self.global_batch] for i in range(0, len(bucket), self.global_batch)]
        if self.shuffle:
            rng.shuffle(batches)
        if self.num_replicas > 1:
            batches = [
                b[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
                for b in batches
                if len(b) == self.global_batch
            ]
        return iter(batches)

    def __len__(self) -> int:
        if self.num_replicas > 1:
            return sum(
                (min(self.bucket_size, len(self.durations) - s)) // self.global_batch
                for s in range(0, len(self.durations), self.bucket_size)
            )
        return sum(
            math.ceil(min(self.bucket_size, len(self.durations) - s) / self.batch_size)
            for s in range(0, len(self.durations), self.bucket_size)
        )


class ShardSampler(Sampler[int]):
    """Every ``num_replicas``-th utterance from ``rank`` on, without the padding duplicates of
    ``DistributedSampler``: summed metric counts then cover each test utterance exactly once."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0):
        self.indices = list(range(rank, size, num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def spec_augment(freq_masks: int, freq_mask_param: int, time_masks: int, time_mask_param: int) -> torch.nn.Module:
    masks = [torchaudio.transforms.FrequencyMasking(freq_mask_param) for _ in range(freq_masks)]
    masks += [torchaudio.transforms.TimeMasking(time_mask_param) for _ in range(time_masks)]
    return torch.nn.Sequential(*masks)


class ManifestDataModule(L.LightningDataModule):
    """Train/val/test manifests -> DataLoaders. Every manifest line is checked when the module is set up;
    utterances longer than the model's input window are errors (cropping would cut words off the audio)."""

    def __init__(self, processor, backbone: Backbone, data, seed: int = 0):
        """``data``: the ``data`` section of a run config (``DataConfig``), or a dict of its keys."""
        super().__init__()
        from lightning_asr.config import DataConfig, structured

        data = structured(DataConfig, data)
        self.processor, self.backbone, self.data, self.seed = processor, backbone, data, seed
        self.manifests = {
            "train": list(data.train_manifests),
            "val": list(data.val_manifests),
            "test": list(data.test_manifests),
        }
        augment = data.spec_augment
        self.augment = (
            spec_augment(augment.freq_masks, augment.freq_mask_param, augment.time_masks, augment.time_mask_param)
            if augment.enabled
            else None
        )
        self.sets: dict[str, dict[str, list[Utterance]]] = {}
        self.inputs: dict[str, np.ndarray | None] = {}  # set name -> cached model inputs (data.feature_cache)
        self.window_seconds = backbone.window_seconds(processor)  # None: the encoder takes any length

    def read(self, manifest: str | Path) -> list[Utterance]:
        utterances = read_manifest(manifest, self.data.skip_bad_lines, known_languages=set(WHISPER_LANGUAGES))
        if self.window_seconds is None:
            return utterances
        too_long = [u for u in utterances if u.duration > self.window_seconds + 1e-3]
        if too_long:
            problems = [
                f"{u.manifest}:{u.line}: {u.duration:.2f} s is longer than the model's {self.window_seconds} s "
                "input window — fix: segment the recording, or use a model with a longer window"
                for u in too_long
            ]
            if not self.data.skip_bad_lines:
                raise ManifestError(problems)
            utterances = [u for u in utterances if u.duration <= self.window_seconds + 1e-3]
        return utterances

    def setup(self, stage: str | None = None) -> None:
        for split, manifests in self.manifests.items():
            if split not in self.sets:
                clashing = sorted(
                    name
                    for name, count in Counter(set_name(m) for m in dict.fromkeys(map(str, manifests))).items()
                    if count > 1
                )
                if clashing:
                    raise ManifestError(
                        [
                            f"{split} manifests {clashing} come from different files with the same "
                            "<folder>/<file> name — fix: keep each set in its own folder"
                        ]
                    )
                self.sets[split] = {set_name(m): self.read(m) for m in manifests}
                if self.data.feature_cache:
                    for manifest in manifests:
                        name = set_name(manifest)
                        self.inputs[name] = cached_inputs(
                            manifest, self.sets[split][name], self.backbone, self.processor
                        )

    def dataset(self, name: str, utterances: list[Utterance]) -> UtteranceDataset:
        return UtteranceDataset(utterances, self.inputs.get(name))

    def _collator(self, augment: bool):
        return self.backbone.collator(self.processor, self.augment if augment else None)

    def train_dataloader(self) -> DataLoader:
        utterances = [u for us in self.sets["train"].values() for u in us]
        if not utterances:
            raise ManifestError(["no training manifest given — fix: set data.train_manifests"])
        dataset = ConcatDataset([self.dataset(name, us) for name, us in self.sets["train"].items()])
        sampler = BucketBatchSampler(
            [u.duration for u in utterances],
            self.data.batch_size,
            self.data.bucket_size,
            True,
            self.seed,
            *self.replicas(),
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self._collator(True),
            num_workers=self.data.num_workers,
            persistent_workers=self.data.num_workers > 0,
        )

    def replicas(self) -> tuple[int, int]:
        """(number of data-parallel processes, this process's rank), from the Trainer once attached."""
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        return [
            DataLoader(
                self.dataset(name, us),
                batch_size=self.data.eval_batch_size,
                sampler=ShardSampler(len(us), *self.replicas()),
                collate_fn=self._collator(False),
                num_workers=self.data.num_workers,
            )
            for name, us in self.sets[split].items()
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def eval_sets(self, split: str) -> list[tuple[str, str]]:
        """``(name, lang)`` of each evaluation set of ``split``, in DataLoader order (after ``setup``)."""
        return [(name, set_language(u.lang for u in utterances)) for name, utterances in self.sets[split].items()]


def set_language(langs) -> str:
    """The language a set is scored as. One language: that one. A code-switched set with monolingual lines
    (ASCEND mixes ``zh``, ``en`` and ``zh-en``): its most frequent code-switched pair. Several monolingual
    languages only: a pair, the most frequent first, so both are scored with their own units."""
    counts = Counter(langs)
    pairs = [lang for lang, _ in counts.most_common() if "-" in lang]
    if pairs:
        return pairs[0]
    languages = [lang for lang, _ in counts.most_common()]
    return languages[0] if len(languages) == 1 else f"{languages[0]}-{languages[1]}"
