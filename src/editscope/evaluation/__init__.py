"""Edit metrics, downstream tasks and perplexity; built on batched target scoring."""

from editscope.evaluation.scoring import TargetScore, score_targets
from editscope.tokens import TargetBatch, encode_pair, target_batch

__all__ = ["TargetBatch", "TargetScore", "encode_pair", "score_targets", "target_batch"]
