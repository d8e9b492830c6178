"""What a command prints besides its own lines: library warnings that say nothing to a user are silenced."""

from __future__ import annotations

import warnings


def quiet() -> None:
    """Silence transformers' informational logging and the warnings every run here would repeat."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*past_key_values.*")
