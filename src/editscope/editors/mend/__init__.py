"""MEND (Mitchell et al. 2022, "Fast Model Editing at Scale"): a hypernetwork that turns a fine-tuning gradient into an edit.

* ``network``    the gradient-transformation network and the update equations;
* ``factors``    the layer inputs and output gradients it reads, and the low-rank edited forward pass;
* ``train_config`` its hyperparameters;
* ``training``   training the network on edit data (edit loss + locality KL);
* ``locality``   the locality KL on neighbor prompts and on unrelated text;
* ``checkpoint`` the trained network on disk, checked against the model's fingerprint;
* ``editor``     the registered ``mend`` editor.
"""

from editscope.editors.mend.checkpoint import MENDCheckpointError, load_checkpoint
from editscope.editors.mend.editor import MENDConfig, MENDEditor, default_checkpoint_folder
from editscope.editors.mend.network import MENDNetwork
from editscope.editors.mend.train_config import MENDTrainConfig
from editscope.editors.mend.training import MENDTrainer, split_requests

__all__ = [
    "MENDCheckpointError",
    "MENDConfig",
    "MENDEditor",
    "MENDNetwork",
    "MENDTrainConfig",
    "MENDTrainer",
    "default_checkpoint_folder",
    "load_checkpoint",
    "split_requests",
]
