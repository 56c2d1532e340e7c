"""Training data storage: trajectory datasets (``trajectories``) and sequence replay for R2D2 (``sequence_replay``)."""
