"""What a command prints besides its own lines: library warnings that say nothing to a user are silenced."""

from __future__ import annotations

import logging
import warnings

# Lightning's messages a benchmark would print once per cell: the accelerator banner ("GPU available: False,
# used: False", "TPU available: ..."), the litlogger / litmodels tips, "Trainer.fit stopped: max_steps reached"
LIGHTNING_CHATTER = ("available:", "💡 Tip", "`Trainer.fit` stopped", "Loading `train_dataloader`")


class DropLightningChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in LIGHTNING_CHATTER)


def quiet() -> None:
    """Silence transformers' informational logging, Lightning's per-run banners and tips, and the warnings
    every run here would repeat."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights: 100%" once per model load
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropLightningChatter) for f in logger.filters):
            logger.addFilter(DropLightningChatter())
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*past_key_values.*")
    warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")
