"""Frame-deduplicated circular replay for N synchronous environments, with n-step returns.

Each slot (t, e) holds what env e saw at vector step t: the newest 84x84 frame of its observation, the action
taken there, the raw reward and whether the episode terminated after it. Stacks of 4 frames are rebuilt at
sampling time, with frames from before the episode's first observation zeroed (as Dopamine pads), so a stack
never crosses an episode boundary. 1M transitions take 1M x 7,056 B = 7.1 GB of frames plus ~10 B of
metadata each. Everything is a torch tensor on `device`, so storage on the GPU is one argument.

Auto-reset contract (envpool / ale-py NEXT_STEP): after a step that ends an episode, the env returns the
episode's final observation; the next step ignores its action and returns the first observation of a new
episode. The trainer stores that step too, with `executed=False`: the slot's frame is the final observation
(the bootstrap state of a truncated episode) but it is never sampled as a transition start. The slot after it
has `first=True`.

Sampling is uniform over valid (t, e) pairs. Subclasses (prioritized replay) override `_sample_slots` and
`_on_add`; the n-step and stacking logic is shared.

Sampling never synchronises with the host and has static shapes: the sampleable range is computed on the
device from a device copy of the step counter, and auto-reset slots are rejected per sample among a fixed
number of candidates (`REJECTION_ROUNDS`) instead of in a loop. So `sample` can be captured in a CUDA graph
and replayed while adds move the range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Candidates drawn per sample for rejecting auto-reset slots; the first valid one is used. A sample falls back
# to a neighbouring (always valid) slot only if all candidates are auto-reset slots: probability f^8 for a
# fraction f of such slots (f = 1/mean episode length, so below 1e-10 on Atari).
REJECTION_ROUNDS = 8


@dataclass
class Batch:
    obs: torch.Tensor  # uint8 [B, 4, 84, 84]
    actions: torch.Tensor  # int64 [B]
    returns: torch.Tensor  # float32 [B]: sum_k gamma^k clip(r_{t+k}) up to n steps or the episode's end
    discounts: torch.Tensor  # float32 [B]: gamma^m, or 0 if the episode terminated within the n steps
    next_obs: torch.Tensor  # uint8 [B, 4, 84, 84]: the bootstrap state s_{t+m}
    weights: torch.Tensor  # float32 [B]: importance weights (ones for uniform replay)
    indices: torch.Tensor  # int64 [B]: flat slot ids (t % T) * N + e, for priority updates


class ReplayBuffer:
    def __init__(self, capacity: int, num_envs: int, *, n_step: int = 1, gamma: float = 0.99, stack: int = 4,
                 frame_shape: tuple[int, int] = (84, 84), reward_clip: float | None = 1.0,
                 device: str | torch.device = "cpu", seed: int = 0):
        if num_envs < 1 or capacity < num_envs * (stack + n_step + 1):
            raise ValueError(f"replay capacity {capacity} is too small for {num_envs} envs "
                             f"(need at least {num_envs * (stack + n_step + 1)})")
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        self.num_envs, self.n_step, self.gamma, self.stack = num_envs, n_step, gamma, stack
        self.reward_clip = reward_clip
        self.T = capacity // num_envs  # time slots per env
        self.device = torch.device(device)
        T, N = self.T, num_envs
        self.frames = torch.zeros((T, N, *frame_shape), dtype=torch.uint8, device=self.device)
        self.actions = torch.zeros((T, N), dtype=torch.int32, device=self.device)
        self.rewards = torch.zeros((T, N), dtype=torch.float32, device=self.device)
        self.terminal = torch.zeros((T, N), dtype=torch.bool, device=self.device)
        self.first = torch.zeros((T, N), dtype=torch.bool, device=self.device)
        self.executed = torch.zeros((T, N), dtype=torch.bool, device=self.device)
        self.t = 0  # vector steps added so far
        self.t_device = torch.zeros((), dtype=torch.long, device=self.device)  # the same, read by `sample`
        self.transitions_added = 0  # executed transitions added (Dopamine's add_count: gates learning)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self._env_ids = torch.arange(N, device=self.device)

    @property
    def capacity(self) -> int:
        return self.T * self.num_envs

    def __len__(self) -> int:
        return min(self.t, self.T) * self.num_envs

    def add(self, frame, action, reward, terminated, first, executed) -> None:
        """Store one vector step: frame [N, H, W] uint8 (newest frame of the observation acted on), action
        [N], raw reward [N], terminated [N] (episode ended after this action), first [N] (this observation
        starts an episode), executed [N] (False where the env ignored the action to auto-reset)."""
        self.add_observation(frame, action, first, executed)
        self.add_outcome(reward, terminated)

    def add_observation(self, frame, action, first, executed) -> None:
        """The half of a step known before the envs step. Sampling never reads the reward or terminal flag of
        the newest step (its lookahead is incomplete), so learning may run before `add_outcome`: the trainer
        uses this to step the envs while it learns, with results identical to storing the step whole."""
        slot = self.t % self.T
        # Host arrays go straight into the buffers with non_blocking=True: CUDA consumes a pageable source before
        # the call returns (so the envs may reuse it), and PyTorch adds no stream sync, which a blocking copy
        # (`torch.as_tensor(x, device=...)`) does after a temporary device tensor and a second copy; whether the
        # driver itself waits for the learner's queued work is up to it.
        self.frames[slot].copy_(torch.as_tensor(frame), non_blocking=True)
        self.actions[slot].copy_(torch.as_tensor(action), non_blocking=True)
        self.first[slot].copy_(torch.as_tensor(first), non_blocking=True)
        self.executed[slot].copy_(torch.as_tensor(executed), non_blocking=True)
        self.transitions_added += int(torch.as_tensor(executed).sum())  # host input: no device sync
        self.rewards[slot].zero_()
        self.terminal[slot].zero_()
        self._on_add(slot)
        self.t += 1
        self.t_device.add_(1)

    def add_outcome(self, reward, terminated) -> None:
        """The other half: reward and termination of the step last given to `add_observation`."""
        slot = (self.t - 1) % self.T
        self.rewards[slot].copy_(torch.as_tensor(reward), non_blocking=True)  # (see add_observation)
        self.terminal[slot].copy_(torch.as_tensor(terminated), non_blocking=True)

    def _on_add(self, slot: int) -> None:
        """Hook for subclasses (prioritized replay sets new priorities here)."""

    def sample_range(self) -> tuple[int, int]:
        """Inclusive range of absolute vector steps a transition may start at: its stack must still be in
        memory and its n-step lookahead must already be written."""
        lo, hi = self._range_at(self.t)
        return max(0, lo), hi

    def can_sample(self) -> bool:
        lo, hi = self.sample_range()
        return hi >= lo

    def _device_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`sample_range()` as 0-d device tensors, computed from `t_device` (no host value baked in)."""
        lo, hi = self._range_at(self.t_device)
        return lo.clamp_min(0), hi

    def _range_at(self, t):
        """(lo, hi) of `sample_range` after t adds, lo not yet clamped at 0; t an int or a device tensor."""
        return t - self.T + self.stack - 1, t - 1 - self.n_step

    def _sample_slots(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Uniform (absolute step, env, importance weight) with the start slot an executed action."""
        lo, hi = self._device_range()
        shape = (batch_size, REJECTION_ROUNDS)
        u = torch.rand(shape, dtype=torch.float64, generator=self.generator, device=self.device)
        cand_t = lo + torch.minimum((u * (hi - lo + 1)).long(), hi - lo)
        cand_e = torch.randint(0, self.num_envs, shape, generator=self.generator, device=self.device)
        valid = self.executed[cand_t % self.T, cand_e]
        pick = valid.to(torch.uint8).argmax(1, keepdim=True)  # the first valid candidate (0 if none)
        t_abs, env = cand_t.gather(1, pick).squeeze(1), cand_e.gather(1, pick).squeeze(1)
        # No valid candidate (probability f^REJECTION_ROUNDS): an auto-reset slot's neighbours are executed,
        # the next one starts the new episode and the previous one ended the old one.
        none_valid = ~valid.any(1)
        neighbour = torch.where(t_abs + 1 <= hi, t_abs + 1, (t_abs - 1).clamp_min(lo))
        t_abs = torch.where(none_valid, neighbour, t_abs)
        return t_abs, env, torch.ones(batch_size, device=self.device)

    def sample(self, batch_size: int) -> Batch:
        if not self.can_sample():
            raise RuntimeError(f"replay holds too few steps to sample ({self.t} vector steps added)")
        t_abs, env, weights = self._sample_slots(batch_size)
        returns, discounts, next_t = self._n_step(t_abs, env)
        return Batch(obs=self._stacks(t_abs, env), actions=self.actions[t_abs % self.T, env].long(),
                     returns=returns, discounts=discounts, next_obs=self._stacks(next_t, env), weights=weights,
                     indices=(t_abs % self.T) * self.num_envs + env)

    def _n_step(self, t_abs: torch.Tensor, env: torch.Tensor):
        """n-step return, bootstrap discount and bootstrap step of each sampled start."""
        returns = torch.zeros(t_abs.shape, dtype=torch.float32, device=self.device)
        alive = torch.ones(t_abs.shape, dtype=torch.bool, device=self.device)
        done = torch.zeros_like(alive)
        steps = torch.full(t_abs.shape, self.n_step, dtype=torch.long, device=self.device)
        for k in range(self.n_step):
            slot = (t_abs + k) % self.T
            if k > 0:
                # A not-executed slot holds the final observation of a truncated episode: bootstrap there.
                truncated_here = alive & ~self.executed[slot, env]
                steps = torch.where(truncated_here, k, steps)
                alive &= ~truncated_here
            reward = self.rewards[slot, env]
            if self.reward_clip is not None:
                reward = reward.clamp(-self.reward_clip, self.reward_clip)
            returns += alive * (self.gamma**k) * reward
            ended = alive & self.terminal[slot, env]
            done |= ended
            alive &= ~ended
        discounts = torch.where(done, 0.0, torch.pow(self.gamma, steps.float()))
        return returns, discounts, t_abs + steps

    def _stacks(self, t_abs: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
        """Rebuild [B, stack, H, W] ending at t_abs; frames before the episode's first frame are zeros."""
        offsets = torch.arange(-self.stack + 1, 1, device=self.device)
        slots = (t_abs[:, None] + offsets) % self.T  # [B, stack], oldest first
        frames = self.frames[slots, env[:, None]]
        first = self.first[slots, env[:, None]]
        # Frame j belongs to an earlier episode if some later frame j' > j in the stack starts an episode.
        later_first = torch.flip(torch.cumsum(torch.flip(first.int(), [1]), 1), [1]) - first.int()
        return frames * (later_first == 0)[:, :, None, None]

    # --- checkpointing ---------------------------------------------------------------------------------
    # A slot's row is written once (`add_observation` + `add_outcome`) and only replaced by the circular
    # overwrite, so the rows of a range of vector steps never change: checkpoints store each range once, as
    # "chunks" of rows, and a checkpoint only needs the chunks added since the previous one.
    ROW_FIELDS = ("frames", "actions", "rewards", "terminal", "first", "executed")

    def chunk_ranges(self, since: int = 0, max_bytes: int = 1 << 30) -> list[tuple[int, int]]:
        """Ranges [start, end) of the vector steps since `since` still in memory, each in consecutive slots (split
        where the circular buffer wraps) and of at most `max_bytes` of frames."""
        max_rows = max(1, max_bytes // self.frames[0].nbytes)
        lo, ranges = max(since, self.t - self.T, 0), []
        while lo < self.t:
            hi = min(self.t, (lo // self.T + 1) * self.T, lo + max_rows)
            ranges.append((lo, hi))
            lo = hi
        return ranges

    def rows(self, start: int, end: int) -> dict:
        """A CPU copy of the rows of vector steps [start, end), one range of `chunk_ranges`."""
        a, b = start % self.T, (end - 1) % self.T + 1
        return {"start": start, "end": end,
                **{name: getattr(self, name)[a:b].to("cpu", copy=True) for name in self.ROW_FIELDS}}

    def counters(self) -> dict:
        """The replay's state apart from its rows."""
        return {"t": self.t, "T": self.T, "num_envs": self.num_envs, "transitions_added": self.transitions_added,
                "generator": self.generator.get_state()}

    def state_dict(self, since: int = 0) -> dict:
        """Counters plus the rows of vector steps [since, t) still in memory, as chunks. `since=0`: everything."""
        return {**self.counters(), "chunks": [self.rows(a, b) for a, b in self.chunk_ranges(since)]}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()` counters and chunks that together hold the steps [max(0, t - T), t)."""
        if state["T"] != self.T or state["num_envs"] != self.num_envs:
            raise ValueError(f"replay checkpoint has {state['T']} slots x {state['num_envs']} envs, this buffer "
                             f"{self.T} x {self.num_envs}")
        t = int(state["t"])
        covered = lo = max(0, t - self.T)
        for chunk in sorted(state["chunks"], key=lambda c: c["start"]):
            start, end = int(chunk["start"]), int(chunk["end"])
            a, b = max(start, lo), min(end, t)
            if b <= a:
                continue
            if a > covered:
                break
            if (start // self.T) != ((end - 1) // self.T) or chunk["frames"].shape[0] != end - start:
                raise ValueError(f"replay chunk of steps [{start}, {end}) is malformed")
            for name in self.ROW_FIELDS:
                getattr(self, name)[a % self.T:(b - 1) % self.T + 1].copy_(chunk[name][a - start:b - start])
            covered = max(covered, b)
        if covered < t:
            raise ValueError(f"the replay chunks hold vector steps up to {covered}, the checkpoint needs [{lo}, {t})")
        self.t = t
        self.t_device.fill_(t)
        self.transitions_added = int(state["transitions_added"])
        self.generator.set_state(state["generator"])


# ---------------------------------------------------------------------------------------------------------
# Prioritized replay (Schaul et al. 2016) with Dopamine's compact-Rainbow rules
# ---------------------------------------------------------------------------------------------------------
class SumTree:
    """Sums over `size` non-negative leaves in a tree of fan-out `fanout`, stored level by level as tensors.

    Level 0 is the root; every level's length is a multiple of `fanout` (zero padding), so the children of
    node j are row j of `levels[l + 1].view(-1, fanout)`. With fan-out 32, 1M leaves take 4 levels, and both
    updating and searching a batch are a few tensor ops per level: no Python loop over the batch, and the
    same code runs on the GPU without a host sync. Parents are always recomputed from their children (never
    updated by deltas), so sums do not drift and a subtree of zeros sums to exactly 0.
    """

    def __init__(self, size: int, device: torch.device, fanout: int = 32):
        self.fanout, self.size = fanout, size
        lengths = [-(-size // fanout) * fanout]
        while lengths[0] > fanout:
            lengths.insert(0, -(-(lengths[0] // fanout) // fanout) * fanout)
        # float64: the root of 1M priorities keeps ~1e-16 relative precision.
        self.levels = [torch.zeros(1, dtype=torch.float64, device=device)]
        self.levels += [torch.zeros(n, dtype=torch.float64, device=device) for n in lengths]

    @property
    def leaves(self) -> torch.Tensor:
        return self.levels[-1]

    @property
    def total(self) -> torch.Tensor:
        return self.levels[0][0]

    def set(self, index: torch.Tensor, values: torch.Tensor) -> None:
        """leaves[index] = values (duplicates: any one wins), then recompute every ancestor."""
        self.leaves[index] = values.to(torch.float64)
        for level in range(len(self.levels) - 2, -1, -1):
            index = torch.div(index, self.fanout, rounding_mode="floor")
            self.levels[level][index] = self.levels[level + 1].view(-1, self.fanout)[index].sum(1)

    def set_range(self, start: int, end: int, values) -> None:
        """leaves[start:end] = values for a contiguous range (one row of the replay), ancestors by slices."""
        self.leaves[start:end] = values
        for level in range(len(self.levels) - 2, -1, -1):
            start, end = start // self.fanout, (end - 1) // self.fanout + 1
            self.levels[level][start:end] = self.levels[level + 1].view(-1, self.fanout)[start:end].sum(1)

    def rebuild(self) -> None:
        """Recompute every internal node from the leaves."""
        for level in range(len(self.levels) - 2, -1, -1):
            sums = self.levels[level + 1].view(-1, self.fanout).sum(1)
            self.levels[level].zero_()[: sums.numel()] = sums

    def find(self, query: torch.Tensor) -> torch.Tensor:
        """Leaf index of each query in [0, total): the leaf whose cumulative-sum interval contains it.

        Level by level over the whole batch: pick the first child whose running sum exceeds the query. A
        query that rounding pushed past a node's last non-empty child is clamped to that child, so a leaf of
        priority 0 is never returned while the total is positive.
        """
        node = torch.zeros(query.shape, dtype=torch.long, device=query.device)
        child_ids = torch.arange(self.fanout, device=query.device)
        for level in self.levels[1:]:
            children = level.view(-1, self.fanout)[node]  # [B, fanout]
            cum = children.cumsum(1)
            pick = (cum <= query[:, None]).sum(1)
            last_nonzero = torch.where(children > 0, child_ids, 0).amax(1)
            pick = torch.minimum(pick, last_nonzero)
            below = torch.where(pick > 0, cum.gather(1, (pick - 1).clamp_min(0)[:, None]).squeeze(1), 0.0)
            query = query - below
            node = node * self.fanout + pick
        return node


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritized replay as in Dopamine's compact Rainbow (no alpha, fixed beta = 0.5).

    - A transition enters the sum tree with the running max priority (1 at first) at the add that
      completes its n-step lookahead; priorities after a learner step are sqrt(loss + 1e-10).
    - Sampling is stratified: one query uniform in each of `batch_size` equal segments of the total.
    - Importance weights: w = 1 / sqrt(P(i) + 1e-10), P(i) = p_i / total, divided by the batch max.
    - Slots that must not be sampled have priority exactly 0, so they are never drawn (no rejection):
      not-executed auto-reset slots, the newest n_step rows (lookahead not written), and rows whose frame
      stack lost its oldest frame to the circular overwrite. This is the base class's
      `sample_range()` + `executed` rule, maintained incrementally: each add zeroes the new row and the row
      leaving the stack window and opens the row whose lookahead it completes.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tree = SumTree(self.capacity, self.device)
        self.max_priority = torch.ones((), dtype=torch.float64, device=self.device)

    def _set_row(self, row: int, values) -> None:
        n = self.num_envs
        self.tree.set_range(row * n, (row + 1) * n, values)

    def _on_add(self, slot: int) -> None:
        t, T = self.t, self.T  # absolute step of the row being written (self.t is incremented after)
        self._set_row(slot, 0.0)  # its lookahead is not written yet
        leaving = t - T + self.stack - 1  # its stack loses its oldest frame to this add
        if leaving >= 0:
            self._set_row(leaving % T, 0.0)
        ready = t - self.n_step  # this add writes the last step of its n-step lookahead
        if ready >= 0:
            row = ready % T
            self._set_row(row, torch.where(self.executed[row], self.max_priority, 0.0))

    def _sample_slots(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        total = self.tree.total
        u = torch.rand(batch_size, dtype=torch.float64, generator=self.generator, device=self.device)
        query = (torch.arange(batch_size, device=self.device) + u) * (total / batch_size)
        index = self.tree.find(query)
        probs = self.tree.leaves[index] / total
        weights = (probs + 1e-10).rsqrt()
        weights = (weights / weights.max()).float()
        row, env = torch.div(index, self.num_envs, rounding_mode="floor"), index % self.num_envs
        _, hi = self._device_range()
        t_abs = hi - (hi - row) % self.T  # the one absolute step in [lo, hi] stored in this row
        return t_abs, env, weights

    def update_priorities(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        """Set priorities sqrt(loss + 1e-10) of sampled slots (`Batch.indices`, per-sample loss)."""
        indices = indices.to(self.device)
        priorities = (losses.detach().to(self.device, torch.float64).clamp_min(0) + 1e-10).sqrt()
        # A slot that stopped being sampleable since it was sampled (only if adds came in between) stays 0.
        priorities = torch.where(self.tree.leaves[indices] > 0, priorities, 0.0)
        self.tree.set(indices, priorities)
        torch.maximum(self.max_priority, priorities.max(), out=self.max_priority)  # in place: graph-safe

    def priorities(self) -> torch.Tensor:
        """Current priority of every slot, flat index (t % T) * num_envs + env; 0 = never sampled."""
        return self.tree.leaves[: self.capacity]

    def counters(self) -> dict:
        return {**super().counters(), "priorities": self.priorities().to("cpu", copy=True),
                "max_priority": self.max_priority.to("cpu", copy=True)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.tree.leaves[: self.capacity].copy_(state["priorities"])
        self.tree.rebuild()
        self.max_priority.copy_(state["max_priority"])
