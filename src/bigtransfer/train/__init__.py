"""Transfer learning with BiT: the BiT-HyperRule, the shared schedule, batches, the training loop, and the
fine-tuning and pre-training recipes that one run function (`run.run_training`) carries out.

Modules are named apart from the functions exported here (`fine_tuning.py` holds `finetune`,
`hyper_rule.py` holds `hyperrule`): a package attribute that shares a submodule's name is replaced by
the module as soon as the submodule is imported.
"""

from ..inference.few_shot import fewshot  # re-exported where 0.1 had it
from .fine_tuning import FineTuning, finetune, finetune_runs
from .hyper_rule import HyperRule, hyperrule
from .loop import Speed
from .pre_training import FewShotCheck, Pretraining, pretrain
from .replaying import RunFile, load_run_file, replay
from .run import RunOptions

__all__ = [
    "FewShotCheck",
    "FineTuning",
    "HyperRule",
    "Pretraining",
    "RunFile",
    "RunOptions",
    "Speed",
    "fewshot",
    "finetune",
    "finetune_runs",
    "hyperrule",
    "load_run_file",
    "pretrain",
    "replay",
]
