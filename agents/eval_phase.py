"""The evaluation phase (Dopamine's `Runner._run_eval_phase`): an epsilon-greedy policy plays full episodes in
envs of its own, learning nothing, until at least `steps` agent steps are done. Its score is the mean raw return
of those episodes (Dopamine: 125,000 steps at epsilon 0.001 after every iteration).

Dopamine plays one episode after another while fewer than `steps` steps are done, so the last one runs over.
With N envs stepping together, an env starts a new episode only while the phase has done fewer than `steps`
steps, and the phase ends when every env's last episode has ended: every episode is complete (none is cut
short, which would favour short episodes), and with one env this is Dopamine's phase exactly.

`run_eval_phase` takes the policy as a function from observations to greedy actions, so any trainer (online
or offline) can evaluate with it; `Trainer.evaluate` in `agents/train.py` is the online trainer's use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EvalResult:
    score: float
    """Mean raw (unclipped) return of the phase's episodes."""
    episodes: int
    """Episodes played to their end."""
    steps: int
    """Agent steps played (at least the phase's `steps`)."""


def run_eval_phase(env, greedy_actions: Callable[[np.ndarray], np.ndarray], steps: int, epsilon: float,
                   rng: np.random.Generator) -> EvalResult:
    """Play `env` (the `AtariVecEnv` interface) from a fresh reset for at least `steps` agent steps of full
    episodes, acting at random with probability `epsilon` (drawn from `rng`, as Dopamine: p <= epsilon) and
    with `greedy_actions(obs)` otherwise."""
    if steps < 1:
        raise ValueError(f"an evaluation phase needs steps >= 1, got {steps}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"evaluation epsilon must be in [0, 1], got {epsilon}")
    n = env.num_envs
    obs = env.reset()
    playing = np.ones(n, dtype=bool)  # envs whose current episode counts
    done_steps, returns = 0, []
    while playing.any():
        explore = rng.random(n) <= epsilon
        actions = rng.integers(0, env.num_actions, n)
        if not explore.all():
            actions = np.where(explore, actions, greedy_actions(obs))
        obs, _, _, _, episodes = env.step(actions)
        done_steps += int((playing & ~env.reset_mask).sum())  # an env that auto-reset took no step
        for ep in episodes:
            if playing[ep.env_id]:
                returns.append(ep.episode_return)
                playing[ep.env_id] = done_steps < steps  # start another episode only while steps are missing
    return EvalResult(score=float(np.mean(returns)), episodes=len(returns), steps=done_steps)
