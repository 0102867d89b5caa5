"""robustlib: regularization-based robust training of ReLU networks.

Importing the package does nothing beyond defining names: no device moves, no logging
configuration, no downloads. Import the submodules you need (``robustlib.models``,
``robustlib.training.loop``, ``robustlib.attacks``, ...).
"""

__version__ = "0.1.0"
