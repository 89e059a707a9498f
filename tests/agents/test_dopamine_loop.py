"""With one env the trainer runs Dopamine's loop: a brute-force re-implementation of Dopamine's Runner and
JaxDQNAgent order (dopamine/discrete_domains/run_experiment.py and dopamine/jax/agents/dqn/dqn_agent.py at
485ea99) on the chain MDP must produce the same sequence of events as the trainer.

Dopamine, per agent step j (0-based; j transitions stored so far):
    begin_episode / step:  store transition j-1 (step only; end_episode stored it at an episode's end),
                           _train_step: if add_count > min_replay: update if j % update_period == 0, then
                                        sync the target if j % target_update_period == 0; training_steps = j+1
                           select_action with epsilon(training_steps = j+1)
An update at step j may sample transitions 0..j-1-n (`is_valid_transition`: index < cursor - update_horizon).
add_count here counts real transitions; Dopamine's also counts the 3 zero-padding transitions its replay adds
at each episode start (a documented difference, see the README).
"""

import pytest
import torch

from agents.train import Trainer
from tests.agents.chain_env import ChainEnv
from tests.agents.test_learning import chain_config, fast_dqn


def dopamine_events(actions: list[int], total_steps: int, min_replay: int, update_period: int, target_period: int,
                    decay: int, epsilon_train: float, n_step: int, max_steps: int) -> list[tuple]:
    """The events of Dopamine's loop when it takes `actions` in order, until `total_steps` agent steps."""
    env = ChainEnv(num_envs=1, max_steps=max_steps)
    events, actions = [], list(actions)
    training_steps = add_count = 0

    def train_step():
        nonlocal training_steps
        if add_count > min_replay:
            if training_steps % update_period == 0:
                events.append(("update", training_steps, add_count - 1 - n_step))
            if training_steps % target_period == 0:
                events.append(("sync", training_steps))
        training_steps += 1

    def select_action():  # Dopamine's linearly_decaying_epsilon(decay, training_steps, min_replay, epsilon_train)
        bonus = (1.0 - epsilon_train) * (decay + min_replay - training_steps) / decay
        events.append(("act", epsilon_train + min(max(bonus, 0.0), 1.0 - epsilon_train)))
        return actions.pop(0)

    env.reset()
    train_step()  # begin_episode
    for _ in range(total_steps):  # the run stops before the next action, after that action's train step
        action = select_action()
        _, _, terminated, truncated, _ = env.step([action])
        add_count += 1  # step() stores the transition, or end_episode() at the episode's end
        if terminated[0] or truncated[0]:
            env.reset()  # begin_episode of the next one
        train_step()
    return events


def trainer_events(trainer: Trainer) -> tuple[list[tuple], list[int]]:
    """Record the trainer's executed actions (with their epsilon), updates (with the newest transition they may
    sample, counted in executed transitions) and target syncs, in the order they happen."""
    events, actions, last_epsilon = [], [], []
    act, add_observation, learn, sync = trainer.act, trainer.replay.add_observation, trainer.learn, trainer.sync_target

    def recording_act(obs, epsilon):
        last_epsilon[:] = [epsilon]
        return act(obs, epsilon)

    def recording_add(frame, action, first, executed):
        if executed[0]:
            events.append(("act", last_epsilon[0]))
            actions.append(int(action[0]))
        return add_observation(frame, action, first, executed)

    def recording_learn():
        replay = trainer.replay
        newest = int(replay.executed[: replay.sample_range()[1] + 1, 0].sum()) - 1
        events.append(("update", trainer.agent_steps, newest))
        return learn()

    def recording_sync():
        events.append(("sync", trainer.agent_steps))
        return sync()

    trainer.act, trainer.replay.add_observation = recording_act, recording_add
    trainer.learn, trainer.sync_target = recording_learn, recording_sync
    return events, actions


@pytest.mark.parametrize("update_period", [4, 3])
def test_one_env_runs_dopamines_loop(tmp_path, update_period):
    # min_replay and the target period are not multiples of the update period, so a schedule that counts
    # from the start of learning (or from the iteration) instead of Dopamine's global step would show.
    agent = fast_dqn(min_replay=30, target_update_period=14, epsilon_decay_steps=50, epsilon_train=0.05)
    cfg = chain_config(agent, sparsity=0.0, total_steps=260)
    cfg.replay_ratio, cfg.iteration_steps = 1 / update_period, 100
    torch.manual_seed(0)
    trainer = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=1, max_steps=6))
    events, actions = trainer_events(trainer)
    trainer.run()
    expected = dopamine_events(actions, cfg.total_steps, agent.min_replay, update_period, agent.target_update_period,
                               agent.epsilon_decay_steps, agent.epsilon_train, agent.n_step, max_steps=6)
    kinds = [e[0] for e in expected]
    assert kinds.count("update") > 40 and kinds.count("sync") >= 10 and len(actions) == cfg.total_steps
    assert 0 < sum(e[1] < 1 for e in expected if e[0] == "act") < len(actions), "epsilon never decayed or stuck"
    assert events == expected
    assert trainer.grad_steps == kinds.count("update")


@pytest.mark.parametrize("target_period", [1, 3])
def test_several_envs_sync_the_target_at_dopamines_agent_steps(tmp_path, target_period):
    """With 8 envs a vector step's 8 updates (replay ratio 1) are split at the target's sync steps: a period of 1
    (DrQ(eps)'s) syncs after every update, as Dopamine does, not once per vector step."""
    agent = fast_dqn(min_replay=30, target_update_period=target_period)
    cfg = chain_config(agent, sparsity=0.0, total_steps=160)
    cfg.replay_ratio, cfg.iteration_steps = 1.0, 80
    trainer = Trainer(cfg, tmp_path / "run", env=ChainEnv(num_envs=8, max_steps=6))
    events, _ = trainer_events(trainer)
    trainer.run()
    kinds = "".join(e[0][0] for e in events if e[0] != "act")  # u(pdate) and s(ync), in order
    # One update at each agent step j of the last grad_steps (replay ratio 1), each followed by a sync if
    # j % period == 0, as in Dopamine's _train_step.
    steps = range(trainer.agent_steps - trainer.grad_steps + 1, trainer.agent_steps + 1)
    assert trainer.grad_steps > 100 and steps[0] > agent.min_replay
    assert kinds == "".join("u" + "s" * (j % target_period == 0) for j in steps)
