"""The Streamlit face of UAP Explorer: shared page glue (jobs, widgets, charts). Holds no attack math.

``jobs`` and ``charts`` never import Streamlit (they are plain Python, testable on their own); ``session``,
``cache`` and ``widgets`` are the Streamlit side.
"""

import os as _os

# Threads waiting at an OpenMP barrier sleep instead of spinning. On a 2-core laptop whose cores are shared (the
# browser drawing the live charts, two runs at once, other programs), spinning threads make PyTorch's CPU steps
# 10-15× slower (measured: an SGA demo step 18 s instead of 1.3 s); sleeping ones cost nothing when the machine is
# idle. Must be set before torch is first imported: every page imports uap_ui before uap_core.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:  # the same as .streamlit/config.toml's runner.postScriptGC = false, for servers started elsewhere
    from streamlit import config as _st_config

    _st_config.set_option("runner.postScriptGC", False)
except Exception:  # noqa: BLE001 - an older/newer Streamlit without the option: keep its default
    pass
