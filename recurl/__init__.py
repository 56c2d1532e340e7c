"""recurl: train agents with memory (LSTM, GRU, RNN cores) on partially observable tasks."""

from recurl.envs import register as _register

_register()

__version__ = "0.1.0"

from recurl.agent import Agent  # noqa: E402
from recurl.algos.ppo import PPOConfig, RecurrentPPO  # noqa: E402
from recurl.evaluation import evaluate_policy  # noqa: E402

__all__ = ["Agent", "PPOConfig", "RecurrentPPO", "evaluate_policy", "__version__"]
