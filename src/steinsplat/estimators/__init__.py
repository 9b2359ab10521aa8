"""The old name of `steinsplat.geometry` (the geometry estimators: depth / normal networks for SSD's
baselines), renamed so that "estimators" is not said both of depth networks and of SDS / VSD / SSD, the
gradient estimators. `steinsplat.estimators` and its modules (`.base`, `.shapeworld`, `.tiny`,
`.transformers_depth`) still import, as the same objects, with a DeprecationWarning."""

import sys
import warnings

from ..geometry import *  # noqa: F401,F403 (the same names)
from ..geometry import __all__, base, shapeworld, tiny, transformers_depth  # noqa: F401

warnings.warn("steinsplat.estimators is now steinsplat.geometry; the old name will go", DeprecationWarning, stacklevel=2)

for _name, _module in {"base": base, "shapeworld": shapeworld, "tiny": tiny, "transformers_depth": transformers_depth}.items():
    sys.modules[f"{__name__}.{_name}"] = _module  # `from steinsplat.estimators.tiny import ...` finds the new module
