"""Import a ``bench/`` script as a module (the scripts are files to run, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_bench(filename: str) -> ModuleType:
    """``bench/<filename>`` loaded as a module; registered in ``sys.modules`` first, as dataclasses
    defined in it look their module up while being built."""
    spec = importlib.util.spec_from_file_location(Path(filename).stem, BENCH / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
