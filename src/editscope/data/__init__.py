"""Edit datasets (CounterFact, zsRE, MQuAKE, the project's JSONL, the bundled demo set) and text corpora."""

from editscope.data.loaders import FORMATS, DatasetReport, detect_format, inspect_dataset, load_requests

__all__ = ["FORMATS", "DatasetReport", "detect_format", "inspect_dataset", "load_requests"]
