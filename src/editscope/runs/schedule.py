"""When a run measures: edit counts at which instruments run and state is saved."""

from __future__ import annotations

import math


def batch_ends(total: int, batch_size: int) -> list[int]:
    """Edit counts after each batch: ``[b, 2b, ..., total]`` (the last batch may be short)."""
    return [min(end, total) for end in range(batch_size, total + batch_size, batch_size)]


def _round_up(target: float, ends: list[int]) -> int:
    return next(e for e in ends if e >= target - 1e-9)


def checkpoints(total: int, batch_size: int, *, every: int, log_points: int = 0, at: tuple[int, ...] = ()) -> list[int]:
    """Sorted edit counts to measure at: always 0 and ``total``, in between at batch boundaries.

    ``every``: one checkpoint each ``every`` edits (rounded up to the next batch end).
    ``log_points`` > 0: that many points spaced evenly in log(edits) between the first batch and
    ``total`` instead, for studies where early edits change the model fastest.
    ``at``: these edit counts instead (each rounded up to a batch end; those past ``total`` dropped),
    so that runs of different lengths share their checkpoints (the scale study's 100, 200, 500, ...).
    """
    ends = batch_ends(total, batch_size)
    points = {0, total}
    if at:
        points.update(_round_up(k, ends) for k in at if k <= total)
    elif log_points > 0:
        lo, hi = math.log(ends[0]), math.log(total)
        for i in range(log_points):
            frac = i / max(log_points - 1, 1)
            points.add(_round_up(math.exp(lo + frac * (hi - lo)), ends))
    else:
        points.update(_round_up(k, ends) for k in range(every, total + 1, every))
    return sorted(points)
