"""Transfer learning with BiT: the BiT-HyperRule, data, few-shot subsets, the training loop, evaluation."""

from .hyperrule import HyperRule, hyperrule

__all__ = ["HyperRule", "finetune", "hyperrule"]


def finetune(*args, **kwargs):
    """Fine-tune with the BiT-HyperRule; see `bigtransfer.train.finetune.finetune` for the arguments."""
    from .finetune import finetune as _finetune

    return _finetune(*args, **kwargs)
