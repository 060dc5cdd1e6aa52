"""Hub test fixtures: a real ``loradex serve`` per database backend (see hubtest_support)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from hubtest_support import *  # noqa: F403  (fixtures: hub, hf_cache)
