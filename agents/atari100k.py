"""The Atari-100k agents of the paper's Fig. 7 (Table 1; Dopamine's `labs/atari_100k/configs/{DER,DrQ_eps}.gin`),
made of options of the shared agents; their hyperparameters are `paper_agent("der" | "drq_eps")` in
`agents/config.py` and their presets `der_*` / `drq_eps_*`.

- DER (data-efficient Rainbow, van Hasselt et al. 2019): C51 with n-step 10, an update every agent step, a
  target copy every 2,000 steps, prioritized replay, double DQN and a dueling head; Xavier-uniform dense
  layers as Dopamine's FullRainbowNetwork. Exploration is epsilon-greedy, 0.01 after 2,000 steps (Table 1).
  Dopamine's DER.gin also turns on noisy nets, which make its epsilon 0; noisy nets are not implemented here,
  so DER follows the paper's table.
- DrQ(eps) (Kostrikov et al. 2020; Agarwal et al. 2021's epsilon schedule): DQN with n-step 10, an update and a
  target copy every agent step, double DQN, a dueling head, Huber loss, and DrQ's augmentation of the sampled
  states and next states (`agents/augmentation.py`, applied by the trainer on the training device).

Both run without sticky actions and with a lost life as a learner terminal (`atari100k_env` in config.py).
"""

from __future__ import annotations

from agents.dqn import DQN
from agents.networks import LayerInit, xavier_
from agents.rainbow import Rainbow


class DER(Rainbow):
    dopamine_init: LayerInit = staticmethod(xavier_)  # Dopamine's FullRainbowNetwork


class DrQEps(DQN):
    """DQN; the trainer augments its replay batches (`agent.augmentation`)."""
