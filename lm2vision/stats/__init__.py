"""Answers with uncertainty: per-cell seed summaries, paired bootstrap intervals over seeds and
test images, and the plain-language verdicts and claim checks built on them (numpy and scipy only).
"""
from lm2vision.stats.intervals import (
    CLAIM_KINDS,
    Interval,
    claim_status,
    paired_bootstrap,
    seed_summary,
    unpaired_bootstrap,
    verdict,
)

__all__ = ["CLAIM_KINDS", "Interval", "claim_status", "paired_bootstrap", "seed_summary",
           "unpaired_bootstrap", "verdict"]
