"""A tiny deterministic chain MDP with the `AtariVecEnv` interface, for learning tests of the real trainer.

States 0..L-1, start at 2; action 0 moves left, 1 moves right. Reaching state 0 ends the episode with
reward 0.2, reaching L-1 ends it with reward 1. The far, larger reward is only found by propagating value
through several TD backups, so an agent with a broken TD target (or a broken mask) settles for 0.2.
Observations are 4 stacked 8x8 uint8 frames (`side` x `side`) that light one column per state; auto-reset follows
the AtariVecEnv contract (next-step reset, `reset_mask`).
"""

import numpy as np

from agents.envs import Episode


class ChainEnv:
    backend, backend_kwargs, action_meanings = "chain", {}, ("LEFT", "RIGHT")
    num_actions = 2

    def __init__(self, num_envs: int = 4, length: int = 8, start: int = 2, max_steps: int = 30, side: int = 8):
        if side < length:
            raise ValueError(f"side {side} has no column for each of the {length} states")
        self.num_envs, self.length, self.start, self.max_steps = num_envs, length, start, max_steps
        self.observation_shape, self.column = (4, side, side), (side - length) // 2  # state s lights column s + column
        self.reset()

    def _frame(self, states):
        frames = np.zeros((len(states), *self.observation_shape[1:]), dtype=np.uint8)
        frames[np.arange(len(states)), :, states + self.column] = 255
        return frames

    def reset(self):
        n = self.num_envs
        self.state = np.full(n, self.start)
        self.steps, self.returns = np.zeros(n, int), np.zeros(n)
        self.ended, self.reset_mask = np.zeros(n, bool), np.ones(n, bool)
        self.obs = np.zeros((n, *self.observation_shape), np.uint8)
        self.obs[:, -1] = self._frame(self.state)
        return self.obs.copy()

    def step(self, actions):
        restarted = self.ended
        moved = np.clip(self.state + np.where(np.asarray(actions) == 1, 1, -1), 0, self.length - 1)
        self.state = np.where(restarted, self.start, moved)
        self.steps = np.where(restarted, 0, self.steps + 1)
        reward = np.where(self.state == self.length - 1, 1.0, np.where(self.state == 0, 0.2, 0.0))
        reward = np.where(restarted, 0.0, reward).astype(np.float32)
        terminated = ~restarted & ((self.state == 0) | (self.state == self.length - 1))
        truncated = ~restarted & ~terminated & (self.steps >= self.max_steps)
        self.returns = np.where(restarted, 0.0, self.returns + reward)
        ended = terminated | truncated
        episodes = [Episode(int(i), float(self.returns[i]), int(self.steps[i])) for i in np.flatnonzero(ended)]
        obs = np.concatenate([self.obs[:, 1:], self._frame(self.state)[:, None]], axis=1)
        obs[restarted, :-1] = 0
        self.obs, self.ended, self.reset_mask = obs, ended, restarted.copy()
        return obs.copy(), reward, terminated, truncated, episodes

    def close(self):
        pass
