"""Collection of the doctests in ``hessviz/`` imports every module; the numba-fused kernel's
module needs numba, an optional extra (``pip install 'hessviz[fast]'``)."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("numba") else ["hessviz/structured/chain_numba.py"]
