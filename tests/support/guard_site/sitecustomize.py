"""Loaded by every Python process the tests start (PYTHONPATH): the link-local guard, before anything runs."""

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
importlib.import_module("linklocal").install()
sys.path.pop(0)
