"""Test-wide setup: make tests/ importable for its helper modules (references, media generators)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
