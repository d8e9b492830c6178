"""``ASRModule``: the science of one run. A base Whisper model, an adaptation strategy, the loss, decoding
and error rates. The ``Trainer`` (``lightning_asr.train``) holds the engineering."""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from transformers.models.whisper.modeling_whisper import shift_tokens_right

from lightning_asr.adapters import build_strategy
from lightning_asr.config import AdapterConfig, ScoringConfig, structured
from lightning_asr.data.datamodule import IGNORE_INDEX
from lightning_asr.metrics import METRIC_NAMES, metrics_for
from lightning_asr.models import load_model_processor
from lightning_asr.models.wav2vec2 import build_ctc_tokens, is_ctc_spec, load_ctc_model_processor
from lightning_asr.text import TextNormalizer, primary_unit
from lightning_asr.tokenizer import WHISPER_LANGUAGES
from lightning_asr.vocabulary import add_new_tokens


def count_cap_hits(sequences: torch.Tensor, eos_token_id: int, max_new_tokens: int) -> int:
    """Rows of generated tokens that stopped at ``max_new_tokens`` without an end-of-text. ``generate``
    pads finished rows with end-of-text, but the longest rows of a batch come back without one even when
    they finished, so a row without end-of-text is a hit only at full length."""
    if sequences.shape[-1] < max_new_tokens:
        return 0
    return int(sum(1 for row in sequences if eos_token_id not in row.tolist()))


def check_language_control(language: str) -> None:
    """``decode.language``: ``manifest`` (each utterance's own), ``auto`` (the model detects it) or a code."""
    if language not in ("manifest", "auto") and language not in WHISPER_LANGUAGES:
        raise ValueError(
            f"decode.language={language!r} — fix: use manifest, auto or a Whisper language code such as en, ko or zh"
        )


OUTPUT_LAYER = r"^lm_head\."  # a CTC output layer made for a new vocabulary


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


def _key(name: str) -> str:
    return name.replace("/", "__").replace(".", "_")


class ASRModule(L.LightningModule):
    """``config`` is a resolved run config as a plain dict (see ``lightning_asr.config.TrainConfig``)."""

    def __init__(self, config: dict):
        super().__init__()
        model_config = config["model"]
        self.ctc = is_ctc_spec(model_config["spec"])
        if self.ctc:
            config = self._build_ctc_base(config)
        else:
            self.model, self.processor = load_model_processor(
                model_config["spec"], model_config.get("tokenizer"), model_config.get("init_seed", 0)
            )
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps the mode it finds at fit start
        self.config = config
        self.tokenizer = self.processor.tokenizer
        self.strategy = build_strategy(structured(AdapterConfig, config.get("adapter", {})))
        self.strategy.attach(self.model)
        if self.strategy.config.new_tokens:
            add_new_tokens(self.model, self.tokenizer, list(self.strategy.config.new_tokens))
        if config["model"].get("gradient_checkpointing"):
            self.enable_gradient_checkpointing()
        if not self.ctc:
            check_language_control(config["decode"]["language"])
        self.eval_sets: dict[str, list[tuple[str, str]]] = {"val": [], "test": []}
        self.eval_metrics = nn.ModuleDict()
        self.eval_losses = nn.ModuleDict()
        self.predictions: dict[str, list[dict]] = {}
        self.normalizer_ids: dict[str, str] = {}  # set name -> normaliser id, logged beside its scores

    def _build_ctc_base(self, config: dict) -> dict:
        """A wav2vec2-CTC base. Without a vocabulary of its own, one is built from the run's manifests and
        kept in the config (so checkpoints rebuild it); the new output layer then trains under every strategy."""
        from lightning_asr.data.manifest import read_manifest

        config = {**config, "model": dict(config["model"]), "adapter": dict(config.get("adapter", {}))}
        model_config = config["model"]
        tokens = list(model_config.get("ctc_tokens") or [])
        if not tokens and not Path(model_config["spec"], "vocab.json").exists():
            manifests = list(config["data"]["train_manifests"]) + list(config["data"]["val_manifests"])
            pairs = [
                (u.text, u.lang)
                for m in manifests
                for u in read_manifest(m, skip_bad_lines=config["data"]["skip_bad_lines"])
            ]
            tokens = build_ctc_tokens(pairs, model_config.get("ctc_unit", "chars"))
            model_config["ctc_tokens"] = tokens
        self.model, self.processor, new_head = load_ctc_model_processor(
            model_config["spec"], tokens, model_config.get("init_seed", 0)
        )
        if new_head and OUTPUT_LAYER not in config["adapter"].get("modules_to_save", []):
            config["adapter"]["modules_to_save"] = list(config["adapter"].get("modules_to_save", [])) + [OUTPUT_LAYER]
        return config

    def enable_gradient_checkpointing(self, use_reentrant: bool = True) -> None:
        """Checkpoint every encoder and decoder layer. Reentrant checkpointing backpropagates into a layer
        only if one of its tensor inputs requires grad; with a frozen base nothing before the first layer
        does, and the adapters inside would silently get no gradient. So the first activations of each stack
        (Whisper: the encoder's last convolution and the decoder's embeddings; wav2vec2: the convolutional
        feature encoder) are made to require grad."""
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        if self.ctc:
            entries = [self.model.wav2vec2.feature_extractor]
        else:
            entries = [self.model.model.encoder.conv2, self.model.model.decoder.embed_tokens]
        for module in entries:
            module.register_forward_hook(lambda _module, _inputs, output: output.requires_grad_(True))

    # ---- loss -------------------------------------------------------------------------------------------------
    def forward_loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        """Token-mean cross-entropy (Whisper) or CTC loss (wav2vec2). Whisper's output projection (51,865
        wide) runs only at label positions, not at padding: that saves about a third of a training step on
        small models."""
        labels = batch["labels"]
        if self.ctc:
            out = self.model(input_values=batch["input_values"], attention_mask=batch["attention_mask"], labels=labels)
            return out.loss, int((labels != IGNORE_INDEX).sum())
        config = self.model.config
        decoder_input_ids = shift_tokens_right(
            labels.masked_fill(labels == IGNORE_INDEX, config.pad_token_id),
            config.pad_token_id,
            config.decoder_start_token_id,
        )
        hidden = self.model.model(
            input_features=batch["input_features"], decoder_input_ids=decoder_input_ids, use_cache=False
        ).last_hidden_state
        mask = labels != IGNORE_INDEX
        logits = self.model.proj_out(hidden[mask])
        return F.cross_entropy(logits.float(), labels[mask]), int(mask.sum())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        cross_entropy, _ = self.forward_loss(batch)
        regularizer = self.strategy.regularizer()
        loss = cross_entropy + regularizer
        size = len(batch["texts"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/cross_entropy", cross_entropy, batch_size=size)
        if regularizer.requires_grad:
            self.log("train/regularizer", regularizer, batch_size=size)
        return loss

    # ---- decoding ---------------------------------------------------------------------------------------------
    def transcribe(self, input_features: torch.Tensor, langs: list[str]) -> tuple[list[str], int]:
        """Greedy or beam decoding with the language token forced per utterance (or fixed, or detected).
        Returns the texts and how many utterances hit ``max_new_tokens`` (a repetition loop, usually)."""
        decode = self.config["decode"]
        if decode["language"] == "manifest":
            language = [lang.split("-")[0] for lang in langs]
        elif decode["language"] == "auto":
            language = None
        else:
            language = decode["language"]
        sequences = self.model.generate(
            input_features,
            language=language,
            task="transcribe",
            max_new_tokens=decode["max_new_tokens"],
            num_beams=decode["num_beams"],
        )
        if not torch.is_tensor(sequences):
            sequences = sequences.sequences
        cap_hits = count_cap_hits(sequences, self.tokenizer.eos_token_id, decode["max_new_tokens"])
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=True), cap_hits

    def ctc_transcribe(self, input_values: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        """Greedy CTC decoding: the best unit per frame, repeats merged, blanks dropped; jamo recomposed."""
        logits = self.model(input_values=input_values, attention_mask=attention_mask).logits
        texts = self.tokenizer.batch_decode(logits.argmax(dim=-1))
        return [unicodedata.normalize("NFC", text) for text in texts]

    def decode_batch(self, batch: dict) -> tuple[list[str], int]:
        """Texts of a collated batch and the number that hit the decoding cap (never, for CTC)."""
        if self.ctc:
            return self.ctc_transcribe(batch["input_values"], batch["attention_mask"]), 0
        return self.transcribe(batch["input_features"], batch["langs"])

    # ---- evaluation -------------------------------------------------------------------------------------------
    @property
    def scoring(self):
        return structured(ScoringConfig, self.config.get("scoring", {}))

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
        loss, n_tokens = self.forward_loss(batch)
        self.eval_losses[key]["loss"].update(loss.detach(), weight=n_tokens)
        if split == "val" and not self.config["decode"].get("in_validation", True):
            return
        texts, cap_hits = self.decode_batch(batch)
        self.eval_losses[key]["cap_hits"].update(torch.tensor(cap_hits / len(texts)), weight=len(texts))
        metrics = self.eval_metrics[key]
        for metric in metrics.values():
            metric.update(texts, batch["texts"])
        if split == "test":
            primary = metrics[METRIC_NAMES[primary_unit(lang)]]
            for text, reference, utt_lang, speaker, line in zip(
                texts, batch["texts"], batch["langs"], batch["speakers"], batch["lines"]
            ):
                edits, tokens = primary.utterance_counts(text, reference)
                self.predictions.setdefault(name, []).append(
                    {
                        "line": line,
                        "reference": reference,
                        "prediction": text,
                        "lang": utt_lang,
                        "speaker": speaker,
                        "edits": edits,
                        "tokens": tokens,
                    }
                )

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
        optim = self.config["optim"]
        parameters = [p for _, p in self.strategy.trainable_parameters()]
        if not parameters:
            raise ValueError(f"adapter strategy {self.strategy.name!r} leaves nothing to train")
        decay = [p for p in parameters if p.ndim >= 2]
        no_decay = [p for p in parameters if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": optim["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=optim["lr"],
            betas=tuple(optim["betas"]),
        )
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else int(self.trainer.estimated_stepping_batches)
        warmup, floor = optim["warmup_steps"], optim["min_lr_ratio"]

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lightning_asr_config"] = self.config

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu") -> ASRModule:
        """Rebuild the module a checkpoint was written by, and load its weights (no unpickling of code)."""
        checkpoint = torch.load(str(path), map_location=map_location, weights_only=True)
        if "lightning_asr_config" not in checkpoint:
            raise ValueError(f"{path} was not written by lightning_asr (no run config inside)")
        module = cls(checkpoint["lightning_asr_config"])
        module.load_state_dict(checkpoint["state_dict"])
        return module
