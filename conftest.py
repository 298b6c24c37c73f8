"""pytest configuration shared by the test suite and the docstring examples (``--doctest-modules gbs_loss``)."""

import importlib.util

# The Triton kernel module needs triton at import time (it is loaded lazily by the backend); without triton it is
# not collected for its docstring examples.
collect_ignore = [] if importlib.util.find_spec("triton") else ["gbs_loss/special/backends/_triton_math.py"]
