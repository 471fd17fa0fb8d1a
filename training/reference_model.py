"""The reference model a preference or RL stage (DPO, KTO, PPO) measures its policy against.

With an adapter the reference costs nothing: it is the base with adapters disabled (or TRL's frozen copy of
a parent adapter). Full and freeze tuning change the weights themselves, so their reference is a frozen
copy of the starting weights, taken before the first step:

    ref_model = None if plan.trains_adapter else frozen_copy(model)
"""

from __future__ import annotations


def frozen_copy(model):
    """The starting weights, frozen, as the reference of full and freeze tuning."""
    import copy

    reference = copy.deepcopy(model).eval()
    for param in reference.parameters():
        param.requires_grad_(False)
    return reference
