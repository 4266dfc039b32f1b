"""AsyncGate: a task substrate that tracks obligations through immutable receipts."""

from importlib.resources import files as _files
from pathlib import Path

import pluggy as _pluggy

__version__ = "1.0.0"

# schema/, migrations/ and openapi.yaml live at the repository root beside the package.
PROJECT_ROOT = Path(str(_files(__name__))).parent

hookimpl = _pluggy.HookimplMarker("asyncgate")
