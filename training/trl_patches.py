"""One change to how TRL scores tokens on the CPU, measured to matter there (bench/training.py).

TRL's trainers (SFT, DPO, KTO, RLOO, GRPO) project the hidden states through the LM head in chunks
(`trl.trainer.utils.add_fused_lm_head`) and score only the positions that have a label on Triton devices;
elsewhere they score every position (prompt and padding included) so that tile shapes stay fixed for
compiled backends such as Neuron. Eager CPU code has no such constraint, and on a 49k-token vocabulary the
head and its softmax are a large share of the work: on SmolLM2-135M, a DPO LoRA batch of 8 pairs (16 x 101
tokens, 26 completion tokens a row) took 26.6 CPU seconds for the policy and reference passes with every
position scored, 19.0 with only the labelled ones (fp32; 19.3 and 11.7 in bf16). The scores are the same:
unlabelled positions come out as 0 either way.

    from training.trl_patches import score_only_labelled_positions
    score_only_labelled_positions()   # before training; idempotent
"""

from __future__ import annotations


def score_only_labelled_positions() -> None:
    """Make TRL's fused LM head score only labelled positions on the CPU as well as on Triton devices."""
    # Shortcut: replaces a private TRL function (`_use_triton`, as `trl.trainer.utils` imported it), whose
    # only use there is that choice; the kernels keep their own copy. Checked against trl 1.16.
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    if getattr(original, "tunehub_cpu_compact", False):
        return

    def compact_on_cpu(device) -> bool:
        return device.type == "cpu" or original(device)

    compact_on_cpu.tunehub_cpu_compact = True
    trl_utils._use_triton = compact_on_cpu
