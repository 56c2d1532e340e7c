"""The traced acting step (recurl.acting.TracedAct) that ``predict`` and the torch Agent run: it gives the eager
step's actions and states, follows the weights as they train, samples from the policy's distribution, and
leaves to the eager step what it cannot trace (R2D2's epsilon-greedy sampling). Episode-long parity with
resets, for every core and action kind, is in test_agent_export.py (the torch Agent there runs this path).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recurl import R2D2, Agent, RecurrentPPO
from recurl.acting import MAX_GRAPHS, ActStep, TracedAct, example_inputs


def _ppo(env: str = "recurl/TMaze-v0", core: str = "lstm", **kw: object) -> RecurrentPPO:
    return RecurrentPPO(env, num_envs=2, n_steps=8, batch_size=16, seed=0,
                        policy={"core": core, "ortho_init": False}, **kw)


def _eager(model: RecurrentPPO, inputs: list[torch.Tensor], step: ActStep) -> tuple:
    with torch.no_grad():
        return step(*inputs)


@pytest.mark.parametrize("core", ["lstm", "gru", "lru", "none"])
@pytest.mark.parametrize("with_first", [True, False])
def test_traced_step_equals_the_eager_step_and_follows_training(core: str, with_first: bool) -> None:
    model = _ppo(core=core, prev_action_reward=True)  # a Dict observation
    traced = TracedAct(model.policy, model.observation_space, model.action_space, False)
    step = ActStep(model.policy, model.observation_space, model.action_space, with_first=with_first)
    for round_ in range(2):
        inputs = example_inputs(step, model.observation_space, batch=3, seed=5 + round_)
        obs, state, is_first, _ = step.split(inputs)
        with torch.inference_mode():
            action, new_state = traced(obs, state, is_first, None, deterministic=True)
        want = _eager(model, inputs, step)
        assert torch.equal(action, want[0])
        for got, ref in zip(new_state, want[len(want) - len(new_state):]):
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
        model.learn(16, progress_bar=False)  # the weights change in place: the trace must see it


def test_predict_samples_from_the_policy_distribution() -> None:
    model = _ppo(core="gru")
    head = model.policy.pi.linear
    with torch.no_grad():  # a lopsided policy whatever the observation
        head.weight.zero_()
        head.bias.copy_(torch.linspace(0.0, 1.5, head.bias.numel()))
    probs = torch.softmax(head.bias.detach(), -1).numpy()
    torch.manual_seed(0)
    obs = np.stack([model.observation_space.sample() for _ in range(4000)])
    actions, _ = model.predict(obs, deterministic=False)
    assert all(graph is not None for graph in model._traced_act._graphs.values())  # the traced sampler ran
    freq = np.bincount(actions - model.action_space.start, minlength=len(probs)) / len(actions)
    np.testing.assert_allclose(freq, probs, atol=0.03)


def test_epsilon_greedy_sampling_acts_eagerly_and_greedy_acting_is_traced() -> None:
    model = R2D2("recurl/TMaze-v0", epsilon=1.0, seed=0, policy={"core": "gru"})
    obs = np.stack([model.observation_space.sample() for _ in range(2000)])
    greedy, _ = model.predict(obs, deterministic=True)
    explored, _ = model.predict(obs, deterministic=False)
    assert (explored != greedy).mean() > 0.3  # epsilon 1: uniform actions, not the argmax
    kinds = {key[2]: graph is not None for key, graph in model._traced_act._graphs.items()}
    assert kinds == {True: True, False: False}
    assert "epsilon-greedy" in next(iter(model._traced_act.eager_reasons.values()))


def test_graphs_are_kept_per_call_shape_and_bounded() -> None:
    model = _ppo()
    agent = Agent(model)
    for n in range(1, MAX_GRAPHS + 4):
        agent.act(np.stack([model.observation_space.sample() for _ in range(n)]), agent.initial_state(n))
    assert len(agent._traced._graphs) == MAX_GRAPHS


def test_predict_only_reads_the_callers_arrays() -> None:
    """predict shares the caller's float32 arrays with torch instead of copying them (and returns states that
    share the graph's outputs): it must never write into them, and read-only arrays must work the same."""
    model = _ppo(core="lstm")
    obs = np.stack([model.observation_space.sample() for _ in range(3)]).astype(np.float32)
    _, state = model.predict(obs, deterministic=True)
    starts = np.array([False, True, False])
    kept = [obs.copy(), starts.copy(), *(s.copy() for s in state)]
    action, new_state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
    for got, was in zip([obs, starts, *state], kept):
        np.testing.assert_array_equal(got, was)
    frozen = [a.copy() for a in (obs, *state)]
    for a in frozen:
        a.setflags(write=False)
    again, again_state = model.predict(frozen[0], state=tuple(frozen[1:]), episode_start=starts, deterministic=True)
    np.testing.assert_array_equal(again, action)
    for a, b in zip(again_state, new_state):
        np.testing.assert_array_equal(a, b)
    _, later = model.predict(obs, state=new_state, deterministic=True)  # a later call leaves earlier states alone
    assert not np.shares_memory(later[0], new_state[0])
