"""The ViLBERT model: two streams, co-attention, task heads. Never imports data code."""

from twelve_in_one.models.config import ViLBertConfig, base_config, get_model_config, tiny_config
from twelve_in_one.models.vilbert import (ALL_OUTPUTS, BACKBONE_OUTPUTS, PRETRAINING_OUTPUTS,
                                          TASK_OUTPUTS, ViLBertForVLTasks, init_params,
                                          init_variables, logical_param_specs)
