"""Post-training norm study: continued pre-training, full fine-tuning and LoRA, norms of every matrix."""

from editscope.posttrain.config import MODE_DEFAULTS, LoraSettings, PosttrainConfig, load_posttrain_config
from editscope.posttrain.loop import PosttrainRun, final_model_folder, run_posttrain

__all__ = [
    "MODE_DEFAULTS",
    "LoraSettings",
    "PosttrainConfig",
    "PosttrainRun",
    "final_model_folder",
    "load_posttrain_config",
    "run_posttrain",
]
