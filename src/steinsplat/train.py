"""The old name of `steinsplat.trainer` (the Trainer: the optimisation loop), renamed so that one module
is called "train" no more beside `shapeworld/train.py` (the ShapeWorld models' training command) and
`shapeworld/training.py` (their training loops). `from steinsplat.train import Trainer` still works, as
the same objects, with a DeprecationWarning."""

import sys
import warnings

from . import trainer

warnings.warn("steinsplat.train is now steinsplat.trainer; the old name will go", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = trainer  # the same module object: its names, and what tests patch on it
