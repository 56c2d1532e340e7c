"""Melee imitation learning from Slippi replays: prepare -> train -> evaluate, and a libmelee adapter.

See ``docs/melee.md``. Heavy optional dependencies (peppi-py, libmelee) are imported lazily.
"""

from recurl.melee.prepare import PrepareReport, prepare

__all__ = ["PrepareReport", "prepare"]
