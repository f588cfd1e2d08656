"""uap_core: universal adversarial perturbations — models, images, UAP / SGD-UAP / SGA, metrics, runs,
artifacts and the CLI. No Streamlit anywhere in here.

Importing it before torch makes OpenMP's waiting threads sleep instead of spin (OMP_WAIT_POLICY=PASSIVE): on a
2-core machine shared with other work, spinning threads slow PyTorch's CPU steps many times over.
"""

import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.4.0"
