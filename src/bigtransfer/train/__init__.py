"""Transfer learning with BiT: the BiT-HyperRule, data, few-shot subsets and linear evaluation, the training
loop, evaluation.

Modules are named apart from the functions exported here (`fine_tuning.py` holds `finetune`,
`hyper_rule.py` holds `hyperrule`): a package attribute that shares a submodule's name is replaced by
the module as soon as the submodule is imported.
"""

from .few_shot import fewshot
from .fine_tuning import finetune, finetune_runs
from .hyper_rule import HyperRule, hyperrule

__all__ = ["HyperRule", "fewshot", "finetune", "finetune_runs", "hyperrule"]
