"""token-normalisation: trained cells rescored with and without the compatibility-to-conjoining jamo map
(claim G4 of the GLoRA seed). For Whisper the map is a scoring-time normalisation: training labels are the
raw transcripts, so the same cell is scored both ways; no cell is trained for this experiment alone."""

from __future__ import annotations

import json
import math
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from lightning_asr.config import ConfigError
from lightning_asr.study.claims.base import GLORA_PAPER, NamedExperiment, by_label, variant_of
from lightning_asr.study.report import markdown_table
from lightning_asr.study.verdicts import INCONCLUSIVE, ClaimResult, Estimate, Verdict, fmt_estimate, judge, metric


@dataclass
class TokenNormalisationSection:
    strategies: list[str] = field(default_factory=lambda: ["lora"])  # benchmark labels whose cells are rescored
    compat_fraction: float = 0.5  # share of target references respelt in compatibility jamo (mechanism check)


QUOTE = "tokenizer normalization (U+11xx vs U+31xx) effect on recognition accuracy"


def _compatibility(conjoining: str) -> str:
    """The compatibility jamo (U+3131-U+318E) a keyboard shows for a conjoining jamo, found by Unicode name:
    HANGUL CHOSEONG KIYEOK and HANGUL JONGSEONG KIYEOK are both HANGUL LETTER KIYEOK."""
    name = unicodedata.name(conjoining)
    for part in ("CHOSEONG", "JUNGSEONG", "JONGSEONG"):
        name = name.replace(f"HANGUL {part} ", "HANGUL LETTER ")
    return unicodedata.lookup(name)


def to_compatibility_jamo(text: str) -> str:
    """Every Hangul syllable spelt as compatibility jamo, as typed before an input method composes it
    ("한국" -> "ㅎㅏㄴㄱㅜㄱ"); ``lightning_asr.text.map_compatibility_jamo`` plus NFC composes it back."""
    out = []
    for char in text:
        if "\uac00" <= char <= "\ud7a3":
            out.extend(_compatibility(j) for j in unicodedata.normalize("NFD", char))
        else:
            out.append(char)
    return "".join(out)


def count_compatibility_jamo(texts: list[str]) -> int:
    return sum("\u3131" <= c <= "\u318e" for text in texts for c in text)


def rescore(
    rows: list[dict], lang: str, scoring: dict | None = None, compat_fraction: float = 0.5, seed: int = 0
) -> dict[str, float]:
    """A target set's predictions (``predictions.json`` rows) scored with and without the jamo map, on the
    references as they are (``natural``) and with ``compat_fraction`` of them respelt in compatibility jamo
    (``compat``, the same utterances for every cell). Keys ``rescored/<natural|compat>/<map|no-map>/<metric>``
    and ``compat_jamo/<references|predictions|rewritten_references>`` (character counts)."""
    from lightning_asr.metrics import score_texts
    from lightning_asr.text import TextNormalizer

    scoring = dict(scoring or {})
    predictions = [r["prediction"] for r in rows]
    references = [r["reference"] for r in rows]
    chosen = set(np.random.default_rng(seed).permutation(len(rows))[: round(compat_fraction * len(rows))].tolist())
    respelt = [to_compatibility_jamo(ref) if i in chosen else ref for i, ref in enumerate(references)]
    result = {
        "compat_jamo/references": count_compatibility_jamo(references),
        "compat_jamo/predictions": count_compatibility_jamo(predictions),
        "compat_jamo/rewritten_references": count_compatibility_jamo(respelt),
    }
    for condition, refs in (("natural", references), ("compat", respelt)):
        for mapping in (True, False):
            normalizer = TextNormalizer.from_scoring(lang, {**scoring, "korean_jamo_map": mapping})
            scores = score_texts(predictions, refs, lang, normalizer, scoring.get("average", "corpus"))
            for name in ("mer", "cer", "jer", "wer"):
                if name in scores:
                    result[f"rescored/{condition}/{'map' if mapping else 'no-map'}/{name}"] = scores[name]
    return result


class TokenNormalisation(NamedExperiment):
    name, key, section = "token-normalisation", "token_normalisation", TokenNormalisationSection
    claims = {"G4": (GLORA_PAPER, QUOTE)}

    def variants(self, section, templates, strategies, sweep_seeds):
        missing = [label for label in section["strategies"] if not by_label(strategies, label)]
        if missing:
            raise ConfigError(f"token_normalisation.strategies {missing} are not benchmark strategy labels")
        return [
            variant_of(by_label(strategies, label), None, label == templates["lora"]["label"])
            for label in section["strategies"]
        ]

    def after_run(self, records, client, context, profile, bench):
        scoring = OmegaConf.to_container(bench.adapt).get("scoring", {})
        for record in records:
            with tempfile.TemporaryDirectory() as tmp:
                rows = json.loads(
                    Path(client.download_artifacts(record["run_id"], "predictions.json", tmp)).read_text()
                )
            record["metrics"] = rescore(
                rows[context["target_set"]],
                context["target_lang"],
                scoring,
                profile.token_normalisation.compat_fraction,
            )

    def report_context(self, section) -> dict:
        return {"compat_fraction": section.compat_fraction}

    def judge(self, experiment, cells, context):
        unit = context.get("target_metric", "mer")
        rows = []
        for variant in experiment.variants:
            values = cells.per_seed(experiment, variant, context)
            row = {"variant": variant, "values": values}
            for condition in ("natural", "compat"):
                for mapping in ("map", "no-map"):
                    for name in ("mer", "cer", "jer", "wer"):
                        row[f"{condition}/{mapping}/{name}"] = metric(values, f"rescored/{condition}/{mapping}/{name}")
                row[f"{condition}/effect"] = Estimate.of(
                    [
                        v.get(f"rescored/{condition}/no-map/{unit}", math.nan)
                        - v.get(f"rescored/{condition}/map/{unit}", math.nan)
                        for _, v in sorted(values.items())
                    ]
                )
            row["compat_jamo"] = {
                key: sum(v.get(f"compat_jamo/{key}", 0) for v in values.values())
                for key in ("references", "predictions", "rewritten_references")
            }
            rows.append(row)
        head = next((r for r in rows if r["variant"].headline), rows[0] if rows else None)
        if head is None:
            return [
                ClaimResult(
                    "G4", GLORA_PAPER, QUOTE, "—", "—", None, Verdict(INCONCLUSIVE, "no strategy rescored"), "—"
                )
            ], rows
        estimate = head["natural/effect"]
        verdict = judge(estimate, "greater", 0.0)
        counts = head["compat_jamo"]
        if "ko" not in context.get("target_lang", "ko").split("-"):
            verdict = Verdict(INCONCLUSIVE, "the target set has no Korean: the jamo map cannot act on it")
        elif head["values"] and counts["references"] + counts["predictions"] == 0:
            verdict = Verdict(
                INCONCLUSIVE,
                "the target set's references and predictions hold no compatibility jamo "
                "(0 characters in U+3131-U+318E): the map is the identity here, so the "
                f"effect is nil by construction ({verdict.reason})",
            )
        claim = ClaimResult(
            "G4",
            GLORA_PAPER,
            QUOTE,
            f"{head['variant'].label} cells rescored with and without the compatibility-to-conjoining jamo map "
            "(scoring only: Whisper trains on the raw transcripts, so the map never reaches training)",
            f"target {unit.upper()} without the map minus with it",
            estimate,
            verdict,
            "holds if the interval lies above 0; inconclusive whenever the data hold no compatibility jamo",
            "",
            f"mechanism check, not evidence: with {100 * context.get('compat_fraction', 0):g} % of references respelt "
            f"in compatibility jamo the map changes {unit.upper()} by {fmt_estimate(head['compat/effect'])}",
        )
        return [claim], rows

    def render(self, rows, context, figures):
        unit = context.get("target_metric", "mer")
        lines = [
            "## token-normalisation: compatibility jamo (U+3131-U+318E) mapped to conjoining jamo (U+1100-U+11FF)",
            "",
            "For Whisper the map is a scoring-time normalisation (`scoring.korean_jamo_map`): training labels are the "
            "raw transcripts, so the same trained cell is scored both ways. `natural`: the references as they are; "
            f"`compat`: {100 * context.get('compat_fraction', 0):g} % of them respelt in compatibility jamo, a mechanism "
            "check of the scoring path, not evidence for the claim (the model never saw such transcripts).",
            "",
        ]
        table = []
        for row in rows:
            for condition in ("natural", "compat"):
                for mapping in ("map", "no-map"):
                    table.append(
                        [row["variant"].label, condition, mapping]
                        + [fmt_estimate(row[f"{condition}/{mapping}/{m}"]) for m in ("cer", "jer", "mer")]
                    )
            counts = row["compat_jamo"]
            lines += [
                f"{row['variant'].label}: compatibility jamo characters, summed over seeds: "
                f"{counts['references']} in the references, {counts['predictions']} in the predictions, "
                f"{counts['rewritten_references']} in the respelt references. {unit.upper()} without − with the map: "
                f"natural {fmt_estimate(row['natural/effect'])}, compat {fmt_estimate(row['compat/effect'])}.",
                "",
            ]
        lines += [markdown_table(["variant", "references", "jamo map", "CER", "JER", "MER"], table), ""]
        return lines
