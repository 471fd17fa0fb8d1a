"""The `tunehub` command line (`tunehub = hub.cli:main`; `python -m hub.cli`): one module per command group.

main.py      the parser, `tunehub serve` and `tunehub demo-model`
engine.py    `tunehub engine` and the serve flags that choose and start an engine (local, vLLM, replicas)
train.py     `tunehub train` and `tunehub jobs`
adapters.py  `tunehub adapters ...`
data.py      `tunehub export|import|users|keys|votes|leaderboard ...`
tools.py     `tunehub estimate`, `tunehub doctor`
doctor.py    the doctor's checks
common.py    what the command groups share: the model to serve, the progress bar, the store opener
"""

from .main import main

__all__ = ["main"]
