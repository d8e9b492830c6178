"""The named experiments of the reproduction, one file each; the registry below is their order in the plan
and the report. A new experiment is one file (``base.NamedExperiment``) and one line here."""

from lightning_asr.study.claims.base import NamedExperiment, strategy_templates
from lightning_asr.study.claims.blora_vs_lora import BloraVsLora
from lightning_asr.study.claims.finetune_vs_scratch import FinetuneVsScratch
from lightning_asr.study.claims.glora_types import GloraTypes
from lightning_asr.study.claims.glora_vs_adapters import GloraVsAdapters
from lightning_asr.study.claims.rank_sweep import RankSweep
from lightning_asr.study.claims.token_normalisation import TokenNormalisation

EXPERIMENTS: dict[str, NamedExperiment] = {
    experiment.name: experiment
    for experiment in (
        BloraVsLora(),
        GloraTypes(),
        GloraVsAdapters(),
        FinetuneVsScratch(),
        TokenNormalisation(),
        RankSweep(),
    )
}

__all__ = ["EXPERIMENTS", "NamedExperiment", "strategy_templates"]
