"""``editscope findings``: each claim of the research measured on one model, with a verdict by a fixed rule."""

from editscope.findings.rules import CLAIMS, Rules, Verdict
from editscope.findings.run import Findings, FindingsConfig, run_findings

__all__ = ["CLAIMS", "Findings", "FindingsConfig", "Rules", "Verdict", "run_findings"]
