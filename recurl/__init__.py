"""recurl: train agents with memory (LSTM, GRU, RNN cores) on partially observable tasks."""

from recurl.envs import register as _register
from recurl.version import __version__

_register()

from recurl.agent import Agent  # noqa: E402
from recurl.algos import R2D2, BCConfig, BehaviourCloning, PPOConfig, R2D2Config, RecurrentPPO  # noqa: E402
from recurl.evaluation import evaluate_policy  # noqa: E402
from recurl.runs import load_model  # noqa: E402

__all__ = ["Agent", "BCConfig", "BehaviourCloning", "PPOConfig", "R2D2", "R2D2Config", "RecurrentPPO",
           "evaluate_policy", "load_model", "__version__"]
