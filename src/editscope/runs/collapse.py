"""The collapse point of a run: the first checkpoint where a user-set threshold is crossed.

Sequential editing degrades a model gradually and then fast; where that happens is a run's
*horizon*. The thresholds are the user's (``--collapse`` on ``demo``, ``compare`` and ``report``);
the defaults below are editscope's, not a paper's. Three criteria, each checked at every checkpoint
after the first against that run's own first checkpoint (the unedited model):

- retained efficacy (``edit/efficacy``, over a sample of every edit so far) below ``efficacy_below``;
- a held-out perplexity (``ppl/<corpus>``) more than ``ppl_rise_pct`` percent above its step-0 value;
- the mean over tasks of downstream agreement with the unedited model (``downstream/<task>/agree``)
  below ``agreement_below``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from editscope.config import ConfigError


@dataclass(frozen=True)
class CollapseRule:
    """Thresholds of the collapse point (``None``: that criterion is not checked).

    Attributes:
        efficacy_below: retained efficacy (fraction) under which the edits count as lost.
        ppl_rise_pct: rise of any held-out perplexity over the unedited model's, percent.
        agreement_below: mean downstream agreement with the unedited model (fraction).
    """

    efficacy_below: float | None = 0.5
    ppl_rise_pct: float | None = 100.0
    agreement_below: float | None = 0.8

    def __post_init__(self) -> None:
        for name in ("efficacy_below", "agreement_below"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ConfigError(f"collapse.{name}: a fraction in (0, 1], got {value}")
        if self.ppl_rise_pct is not None and self.ppl_rise_pct <= 0:
            raise ConfigError(f"collapse.ppl_rise_pct: a positive percentage, got {self.ppl_rise_pct}")

    def describe(self) -> str:
        """The thresholds in words, for captions and tables."""
        parts = []
        if self.efficacy_below is not None:
            parts.append(f"retained efficacy < {self.efficacy_below:g}")
        if self.ppl_rise_pct is not None:
            parts.append(f"perplexity > +{self.ppl_rise_pct:g}%")
        if self.agreement_below is not None:
            parts.append(f"downstream agreement < {self.agreement_below:g}")
        return " or ".join(parts) if parts else "no criterion"


@dataclass(frozen=True)
class Collapse:
    """Where a run collapsed: the checkpoint's edit count and the criterion it crossed, in words."""

    edits: int
    reason: str


def parse_collapse(text: str) -> CollapseRule:
    """``"efficacy_below=0.6,ppl_rise_pct=off"`` -> :class:`CollapseRule` (unnamed fields keep their defaults)."""
    known = {f.name for f in fields(CollapseRule)}
    values: dict[str, float | None] = {}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise ConfigError(f"--collapse {item!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(known))}")
        raw = raw.strip()
        try:
            values[name] = None if raw.lower() in ("off", "none") else float(raw)
        except ValueError:
            raise ConfigError(f"--collapse {name}: a number or 'off', got {raw!r}") from None
    return CollapseRule(**values)


ROUNDING = 1e-9
"""Fractions are means of hit counts over examples; a mean that equals a threshold exactly can land a
rounding error below it in floating point (0.56, 0.68, 1, 1, 0.66, 0.9 average to 0.7999999999999999),
and that is not a crossing."""


def below(value: float, threshold: float) -> bool:
    """``value < threshold`` beyond floating-point rounding of a mean of fractions."""
    return value < threshold - ROUNDING


def efficacy_crossed(first: Mapping[str, float], now: Mapping[str, float], rule: CollapseRule) -> str | None:
    value = now.get("edit/efficacy")
    if rule.efficacy_below is None or value is None or not below(value, rule.efficacy_below):
        return None
    return f"retained efficacy {value:.3f} < {rule.efficacy_below:g}"


def perplexity_crossed(first: Mapping[str, float], now: Mapping[str, float], rule: CollapseRule) -> str | None:
    if rule.ppl_rise_pct is None:
        return None
    for key in sorted(k for k in now if k.startswith("ppl/") and first.get(k)):
        rise = 100.0 * (now[key] / first[key] - 1.0)
        if rise > rule.ppl_rise_pct:
            return f"{key} +{rise:.0f}% > +{rule.ppl_rise_pct:g}%"
    return None


def agreement_crossed(first: Mapping[str, float], now: Mapping[str, float], rule: CollapseRule) -> str | None:
    values = [v for k, v in now.items() if k.startswith("downstream/") and k.endswith("/agree")]
    if rule.agreement_below is None or not values:
        return None
    mean = statistics.fmean(values)
    return f"downstream agreement {mean:.3f} < {rule.agreement_below:g}" if below(mean, rule.agreement_below) else None


CRITERIA: tuple[Callable[[Mapping[str, float], Mapping[str, float], CollapseRule], str | None], ...] = (
    efficacy_crossed,
    perplexity_crossed,
    agreement_crossed,
)


def collapse_point(records: Sequence[Mapping[str, Any]], rule: CollapseRule) -> Collapse | None:
    """The first checkpoint after the first whose metrics cross a threshold of ``rule``; ``None`` if none does."""
    if not records:
        return None
    first = records[0]["metrics"]
    for record in records[1:]:
        reasons = [r for r in (c(first, record["metrics"], rule) for c in CRITERIA) if r]
        if reasons:
            return Collapse(int(record["edits"]), "; ".join(reasons))
    return None
