"""nuir: differentiable non-uniform image interpolation with Gaussian mixtures (arXiv 2012.13257).

Importing nuir defines the ops ``torch.ops.nuir.*`` completely (nuir/ops.py) but never compiles
or loads compiled code: the first call of the operator loads the kernels built by ``pip install .``
or, failing that, builds them (see nuir/_backend.py).
"""

from nuir._backend import backend_name
from nuir.ops import interpolate
from nuir.upsample import upsample

__all__ = ["interpolate", "upsample", "backend_name"]
__version__ = "0.1.0"
