"""``ASRModule``: the science of one run. A base model (through its backbone: Whisper or wav2vec2-CTC), an
adaptation strategy, the loss, decoding and error rates. The ``Trainer`` (``lightning_asr.train``) holds the
engineering."""

from __future__ import annotations

import copy
import math
from functools import cached_property
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn
from torchmetrics import MeanMetric

from lightning_asr.adapters import build_strategy, strategy_class
from lightning_asr.adapters.export import fingerprint_mismatch
from lightning_asr.config import TrainConfig, structured, to_dict
from lightning_asr.metrics import METRIC_NAMES, metrics_for
from lightning_asr.models import backbone_for, is_preset
from lightning_asr.text import TextNormalizer, primary_unit
from lightning_asr.vocabulary import add_new_tokens


def gather_predictions(predictions: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Every process's share of the per-utterance predictions, in manifest order, on every process."""
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        shares = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shares, predictions)
        predictions = {}
        for share in shares:
            for name, rows in share.items():
                predictions.setdefault(name, []).extend(rows)
    return {name: sorted(rows, key=lambda row: row["line"]) for name, rows in predictions.items()}


# a checkpoint key: the frozen base parameters it leaves out, the base's spec and fingerprint
OMITTED_BASE = "lightning_asr_base_omitted"


def adamw(groups: list[dict], lr: float, betas, mixed_precision: bool = False) -> torch.optim.AdamW:
    """AdamW over ``groups``, fused (one pass over all tensors) on CPU and CUDA, where torch's default is a loop
    over tensors (``benchmarks/train_throughput.py`` prints the optimiser's time per step; docs/benchmark.md).
    Not under mixed precision, where Lightning refuses to clip the gradients of a fused optimiser."""
    fused = not mixed_precision and all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)


def _key(name: str) -> str:
    return name.replace("/", "__").replace(".", "_")


class TrainingUtterances:
    """The training (and validation) utterances of a run config, read on first use only: most runs derive
    nothing from the data, and those that do read the manifests once."""

    def __init__(self, data, label_counter=None):
        self.data = data
        self.label_counter = label_counter  # utterances -> their number of target units (the backbone's)

    def _read(self, manifests) -> list:
        from lightning_asr.data.manifest import read_manifest

        return [u for m in manifests for u in read_manifest(m, skip_bad_lines=self.data.skip_bad_lines)]

    @cached_property
    def train(self) -> list:
        return self._read(self.data.train_manifests)

    @cached_property
    def val(self) -> list:
        return self._read(self.data.val_manifests)

    def label_count(self) -> int:
        """The target units (tokens for Whisper) of the training utterances: the loss's denominator over an epoch."""
        return self.label_counter(self.train)


def with_data_settings(config: DictConfig, backbone) -> DictConfig:
    """``config`` with the settings its backbone and its strategy take from the training data filled in (a CTC
    vocabulary, ELBO's example count); a config that has them already comes back unchanged."""
    utterances = TrainingUtterances(config.data, lambda train: backbone.label_count(config.model, train))
    updates = backbone.derive_from_data(config, utterances)
    updates.update(
        {
            f"adapter.{k}": v
            for k, v in strategy_class(config.adapter.name).derive_from_data(config.adapter, utterances).items()
        }
    )
    if not updates:
        return config
    values = to_dict(config)
    for dotted, value in updates.items():
        section, key = dotted.split(".", 1)
        values[section][key] = value
    return structured(TrainConfig, values)


class ASRModule(L.LightningModule):
    """``config``: a run config (``lightning_asr.config.TrainConfig``, typed; a dict of its keys is checked and
    typed first)."""

    def __init__(self, config):
        super().__init__()
        config = config if isinstance(config, DictConfig) else structured(TrainConfig, config)
        self.backbone = backbone_for(config.model.spec)
        self.config = config = with_data_settings(config, self.backbone)
        self.model, self.processor = self.backbone.load(config.model)
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps the mode it finds at fit start
        self.strategy = build_strategy(config.adapter)
        self.strategy.attach(self.model)
        self.auxiliary = self.backbone.auxiliary_loss(self.model, config.model)  # trains beside the model
        if config.adapter.new_tokens:  # the loaded tokenizer may be shared (lightning_asr.tokenizer): extend a copy
            self.processor.tokenizer = copy.deepcopy(self.processor.tokenizer)
            add_new_tokens(self.model, self.processor.tokenizer, list(config.adapter.new_tokens))
        self.tokenizer = self.processor.tokenizer
        if config.model.gradient_checkpointing:
            self.enable_gradient_checkpointing()
        self.backbone.check_decode(config.decode)
        self.eval_sets: dict[str, list[tuple[str, str]]] = {"val": [], "test": []}
        self.eval_metrics = nn.ModuleDict()
        self.eval_losses = nn.ModuleDict()
        self.predictions: dict[str, list[dict]] = {}
        self.normalizer_ids: dict[str, str] = {}  # set name -> normaliser id, logged beside its scores

    def enable_gradient_checkpointing(self, use_reentrant: bool = True) -> None:
        """Checkpoint every encoder and decoder layer. Reentrant checkpointing backpropagates into a layer
        only if one of its tensor inputs requires grad; with a frozen base nothing before the first layer
        does, and the adapters inside would silently get no gradient. So the first activations of each stack
        (the backbone names them) are made to require grad."""
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        for module in self.backbone.checkpointing_entries(self.model):
            module.register_forward_hook(lambda _module, _inputs, output: output.requires_grad_(True))

    def setup(self, stage: str) -> None:
        # before Lightning restores a checkpoint: a strategy's preparation sees the base's weights, also on resume
        if stage == "fit":
            self.strategy.prepare(self)

    # ---- loss -------------------------------------------------------------------------------------------------
    def forward_loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        """The backbone's loss (token-mean cross-entropy for Whisper, CTC for wav2vec2) and its unit count."""
        return self.backbone.loss(self.model, batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        cross_entropy, _ = self.backbone.loss(
            self.model, batch, self.auxiliary, input_dropout=self.config.model.decoder_input_dropout
        )
        regularizer = self.strategy.regularizer(batch)
        loss = cross_entropy + regularizer
        size = len(batch["texts"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log(
            "train/cross_entropy" if self.auxiliary is None else "train/hybrid_loss", cross_entropy, batch_size=size
        )
        if regularizer.requires_grad:
            self.log("train/regularizer", regularizer, batch_size=size)
        return loss

    # ---- decoding ---------------------------------------------------------------------------------------------
    def decode_languages(self, langs: list[str]) -> list[str] | str | None:
        """The language to force, per ``decode.language``: each utterance's own matrix language
        (``manifest``), none (``auto``: detected), or one code for every utterance."""
        language = self.config.decode.language
        if language == "manifest":
            return [lang.split("-")[0] for lang in langs]
        return None if language == "auto" else language

    def transcribe(self, inputs: dict, langs: list[str]) -> tuple[list[str], int]:
        """Texts of a batch of model inputs (a collated batch, or the backbone's ``audio_inputs``) and how many
        hit ``decode.max_new_tokens`` (a repetition loop, usually)."""
        return self.backbone.decode(
            self.model, self.tokenizer, inputs, self.decode_languages(langs), self.config.decode
        )

    def utterance_losses(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per utterance, summed cross-entropy (nats) and label units; None for a backbone that cannot score
        utterances by likelihood."""
        try:
            return self.backbone.utterance_losses(self.model, batch)
        except NotImplementedError:
            return None

    def decode_batch(self, batch: dict) -> tuple[list[str], int]:
        """Texts of a collated batch and the number that hit the decoding cap."""
        return self.transcribe(batch, batch["langs"])

    # ---- evaluation -------------------------------------------------------------------------------------------
    @property
    def scoring(self):
        return self.config.scoring

    def normalizer(self, lang: str) -> TextNormalizer:
        return TextNormalizer.from_scoring(lang, self.scoring)

    def set_eval_sets(self, split: str, sets: list[tuple[str, str]]) -> None:
        """Name and language of each evaluation DataLoader of ``split`` (``val`` or ``test``), in order."""
        self.eval_sets[split] = list(sets)
        for name, lang in sets:
            key = f"{split}__{_key(name)}"
            if key not in self.eval_metrics:
                normalizer = self.normalizer(lang)
                self.eval_metrics[key] = nn.ModuleDict(metrics_for(lang, normalizer, self.scoring["average"])).to(
                    self.device
                )
                self.normalizer_ids[name] = normalizer.id
                self.eval_losses[key] = nn.ModuleDict({"loss": MeanMetric(), "cap_hits": MeanMetric()}).to(self.device)

    def _eval_step(self, split: str, batch: dict, dataloader_idx: int) -> None:
        name, lang = self.eval_sets[split][dataloader_idx]
        key = f"{split}__{_key(name)}"
        per_utterance = self.utterance_losses(batch) if split == "test" else None
        if per_utterance is None:
            loss, n_tokens = self.forward_loss(batch)
        else:  # the same token-mean cross-entropy, kept per utterance for the paired statistics
            loss, n_tokens = per_utterance[0].sum() / per_utterance[1].sum(), int(per_utterance[1].sum())
        self.eval_losses[key]["loss"].update(loss.detach(), weight=n_tokens)
        if split == "val" and not self.config.decode.in_validation:
            return
        texts, cap_hits = self.decode_batch(batch)
        self.eval_losses[key]["cap_hits"].update(torch.tensor(cap_hits / len(texts)), weight=len(texts))
        metrics = self.eval_metrics[key]
        for metric in metrics.values():
            metric.update(texts, batch["texts"])
        if split == "test":
            primary = metrics[METRIC_NAMES[primary_unit(lang)]]
            for row, (text, reference, utt_lang, speaker, line) in enumerate(
                zip(texts, batch["texts"], batch["langs"], batch["speakers"], batch["lines"])
            ):
                edits, tokens = primary.utterance_counts(text, reference)
                scored = {
                    "line": line,
                    "reference": reference,
                    "prediction": text,
                    "lang": utt_lang,
                    "speaker": speaker,
                    "edits": edits,
                    "tokens": tokens,
                }
                if per_utterance is not None:  # summed cross-entropy (nats) over the utterance's label units
                    scored["ce"] = float(per_utterance[0][row])
                    scored["ce_units"] = int(per_utterance[1][row])
                self.predictions.setdefault(name, []).append(scored)

    def _eval_epoch_end(self, split: str) -> dict[str, float]:
        results = {}
        for index, (name, lang) in enumerate(self.eval_sets[split]):
            key = f"{split}__{_key(name)}"
            losses, metrics = self.eval_losses[key], self.eval_metrics[key]
            if losses["loss"].update_count == 0:
                continue
            values = {"loss": losses["loss"].compute()}
            if losses["cap_hits"].update_count:
                values["cap_hit_rate"] = losses["cap_hits"].compute()
                for metric_name, metric in metrics.items():
                    value = metric.compute()
                    if isinstance(value, dict):  # the per-language split: err_en, err_ko, ...
                        values.update({f"err_{language}": v for language, v in value.items()})
                    else:
                        values[metric_name] = value
                values["error"] = values[METRIC_NAMES[primary_unit(lang)]]
            for metric_name, value in values.items():
                self.log(f"{split}/{name}/{metric_name}", value, add_dataloader_idx=False, prog_bar=False)
                results[f"{split}/{name}/{metric_name}"] = float(value)
            if index == 0:
                self.log(f"{split}/loss", values["loss"], add_dataloader_idx=False, prog_bar=True)
            for module in list(losses.values()) + list(metrics.values()):
                module.reset()
        return results

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self.predictions = {}

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
        self.predictions = gather_predictions(self.predictions)

    # ---- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        optim = self.config.optim
        if not self.strategy.trainable_parameters():
            raise ValueError(f"adapter strategy {self.strategy.name!r} leaves nothing to train")
        groups = self.strategy.optimizer_groups(optim.weight_decay)
        if self.auxiliary is not None:
            groups.append({"params": list(self.auxiliary.parameters()), "weight_decay": optim.weight_decay})
        optimizer = adamw(groups, optim.lr, optim.betas, mixed_precision="mixed" in str(self.trainer.precision))
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else int(self.trainer.estimated_stepping_batches)
        warmup, floor = optim.warmup_steps, optim.min_lr_ratio

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def frozen_base_keys(self) -> list[str]:
        """State-dict keys of the base's parameters this run never changes (tied aliases included): what a
        checkpoint need not hold when the base loads again from its files (a model directory or hub id). A
        preset's weights are a random draw, not files: its checkpoints keep everything."""
        if is_preset(self.config.model.spec):
            return []
        return sorted(name for name, p in self.named_parameters(remove_duplicate=False) if not p.requires_grad)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lightning_asr_config"] = to_dict(self.config)  # plain data: weights_only loading reads it
        omitted = self.frozen_base_keys()
        if omitted:  # an adapter's checkpoint is the adapter and the training state, not another copy of the base
            state = checkpoint["state_dict"]
            for key in omitted:
                state.pop(key, None)
            checkpoint[OMITTED_BASE] = {
                "spec": str(self.config.model.spec),
                "fingerprint": self.strategy.base_fingerprint,
                "keys": omitted,
            }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.restore_frozen_base(checkpoint)

    def restore_frozen_base(self, checkpoint: dict, path: str | Path = "the checkpoint") -> None:
        """Put this module's own base weights back where an adapter-only checkpoint left them out, after checking
        that its base is the one the checkpoint was trained on (fail closed: never another base's weights)."""
        omitted = checkpoint.get(OMITTED_BASE)
        if not omitted:
            return
        problem = fingerprint_mismatch(omitted["fingerprint"], self.strategy.base_fingerprint)
        parameters = dict(self.named_parameters(remove_duplicate=False))
        absent = [key for key in omitted["keys"] if key not in parameters]
        if problem or absent:
            raise ValueError(
                f"{path} holds the adapter only, trained on the base {omitted['spec']}: "
                f"{problem or f'{len(absent)} of its frozen parameters are not in this model ({absent[:3]})'}"
                " — fix: restore that base at the same path (the benchmark's cache key names it), or train again"
            )
        for key in omitted["keys"]:
            checkpoint["state_dict"][key] = parameters[key].detach()

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu") -> ASRModule:
        """Rebuild the module a checkpoint was written by, and load its weights (no unpickling of code)."""
        checkpoint = torch.load(str(path), map_location=map_location, weights_only=True)
        if "lightning_asr_config" not in checkpoint:
            raise ValueError(f"{path} was not written by lightning_asr (no run config inside)")
        module = cls(structured(TrainConfig, checkpoint["lightning_asr_config"], lenient_adapter=True))
        module.restore_frozen_base(checkpoint, path)
        module.load_state_dict(checkpoint["state_dict"])
        return module
