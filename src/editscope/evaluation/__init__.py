"""Edit metrics, downstream tasks and perplexity; built on batched target scoring."""

from editscope.evaluation.scoring import TargetScore, encode_pair, score_targets

__all__ = ["TargetScore", "encode_pair", "score_targets"]
