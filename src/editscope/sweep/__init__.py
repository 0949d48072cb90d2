"""Sweeps over run configs on Ray (or in process), and sharded second-moment statistics."""

from editscope.sweep.config import Resources, SweepConfig, SweepRun, expand, load_sweep_config
from editscope.sweep.outcome import Outcome, SweepReport
from editscope.sweep.runner import run_sweep

__all__ = ["Outcome", "Resources", "SweepConfig", "SweepReport", "SweepRun", "expand", "load_sweep_config", "run_sweep"]
