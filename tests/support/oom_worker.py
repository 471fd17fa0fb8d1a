"""A job worker whose training steps run out of memory above a batch size, to test the runner's OOM retry:

    JobRunner(..., worker_command=[sys.executable, "-m", "tests.support.oom_worker"],
              env={"TUNEHUB_TEST_OOM_ABOVE": "4"})

Every training step with more than TUNEHUB_TEST_OOM_ABOVE rows per device raises torch.OutOfMemoryError, as
a GPU would; everything else is the real worker (training.jobs.worker).
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    import torch
    import transformers

    limit = int(os.environ.get("TUNEHUB_TEST_OOM_ABOVE", "4"))
    training_step = transformers.Trainer.training_step

    def running_out_of_memory(self, *args, **kwargs):
        batch = self.args.per_device_train_batch_size
        if batch > limit:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (simulated: batch {batch} > {limit})"
            )
        return training_step(self, *args, **kwargs)

    transformers.Trainer.training_step = running_out_of_memory
    from training.jobs.worker import main as worker_main

    return worker_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
