"""Sequential editing runs: config, checkpoint schedule, run folder, the loop with resume."""

from editscope.runs.config import DEFAULT_INSTRUMENTS, RunConfig, load_run_config
from editscope.runs.loop import RunSummary, SequentialRun, execute, select_requests
from editscope.runs.store import RunStore, read_metrics_file

__all__ = [
    "DEFAULT_INSTRUMENTS",
    "RunConfig",
    "RunStore",
    "RunSummary",
    "SequentialRun",
    "execute",
    "load_run_config",
    "read_metrics_file",
    "select_requests",
]
