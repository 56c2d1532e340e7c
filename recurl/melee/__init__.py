"""Melee imitation learning from Slippi replays: prepare -> train -> evaluate (docs/melee.md).

``prepare`` parses replays into a dataset, ``features`` and ``dataset`` define what the model sees and
predicts (shared with the live path, :mod:`recurl.integrations.melee`), ``evaluate`` scores a run on any
dataset against the baselines; training is :class:`recurl.algos.melee.MeleeImitation`. Heavy optional
dependencies (peppi-py, libmelee) are imported lazily.
"""
