"""degl: Decoupled Greedy Learning of deep networks.

A network is cut into K stages; each stage has its own auxiliary classifier, local loss and
optimizer and passes its output on detached, so no stage waits for a backward pass from above.

Bad input raises :class:`UserError` (a ``ValueError``); one about a single parameter is a
:class:`ParameterError`, which names it as this API does (``num_stages=9``, where the CLI says
``--stages 9``). See docs/python-api.md and docs/glossary.md.
"""

from degl.core.alternatives import GradientMethod
from degl.core.evaluate import evaluate
from degl.core.methods import DGL, Backprop, SequentialGreedy, build_method
from degl.core.parameter_error import ParameterError
from degl.core.split import build_stages, split_blocks
from degl.core.stage import Stage
from degl.core.step import StageStep
from degl.errors import UserError
from degl.models import build_model, list_models
from degl.runtime.dist import DistEnv
from degl.runtime.launch import launch
from degl.runtime.pipeline import PipelineResult, train_stage

__version__ = "0.1.0"

__all__ = [
    "DGL",
    "Backprop",
    "DistEnv",
    "GradientMethod",
    "ParameterError",
    "PipelineResult",
    "SequentialGreedy",
    "Stage",
    "StageStep",
    "UserError",
    "__version__",
    "build_method",
    "build_model",
    "build_stages",
    "evaluate",
    "launch",
    "list_models",
    "split_blocks",
    "train_stage",
]
