"""A training run as a steppable object: exact stepping, exact save/load, separate streams."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_configs import tiny

from hetero_lr.config import TrainConfig, from_dict
from hetero_lr.run import TrainingRun

RUN = {"eval_every": 10_000, "log_every": 150, "checkpoint_every": 0}
VARIANTS = {
    "replicate": {},
    "prioritized_nstep_c51_hardcopy": {
        "agent": {"prioritized": True, "n_step": 3, "categorical": True, "num_atoms": 11},
        "target_options": {"hidden": [32]},
        "target": {"rule": "hardcopy", "period": 50},
    },
    "minatar_polyak": {
        "pair": "minatar:minatar",
        "online_options": {},
        "target_options": {},
        "env": {"id": "MinAtar/Breakout-v1", "num_envs": 1, "sticky_actions": 0.1},
        "target": {"rule": "polyak", "tau": 0.05},
        "agent": {"optimizer": "rmsprop"},  # its averages are in the checkpoint too
        "steps": 500,
    },
}


class ListLogger:
    """Collects `(step, key, value)` rows; wall-clock rates are left out (they differ)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, float]] = []

    def log_params(self, params) -> None:
        pass

    def log_metrics(self, metrics, step) -> None:
        self.rows += [(step, k, v) for k, v in metrics.items() if k != "perf/sps"]

    def rewind(self, step) -> None:
        self.rows = [r for r in self.rows if r[0] <= step]

    def close(self) -> None:
        pass


def config(variant: str = "replicate", **overrides) -> TrainConfig:
    return tiny(RUN, VARIANTS[variant], overrides)


def _tensors(state, prefix=""):
    """Flatten nested dicts/lists of a state dict into `{path: tensor or value}`."""
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return {prefix: state}
    out = {}
    for key, value in items:
        out.update(_tensors(value, f"{prefix}/{key}"))
    return out


def assert_same_state(a: TrainingRun, b: TrainingRun) -> None:
    """Weights, both optimizers, replay contents, counters and RNG states are equal."""
    left, right = _tensors(a.state_dict()), _tensors(b.state_dict())
    assert left.keys() == right.keys()
    for key in left:
        if key.startswith("/envs/envs"):  # pickled games: compared by behaviour below
            continue
        x, y = left[key], right[key]
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), key
        elif isinstance(x, np.ndarray):
            assert np.array_equal(x, y), key
        else:
            assert x == y, key


@pytest.mark.parametrize("variant", VARIANTS)
def test_stepping_in_three_calls_equals_one_call(variant):
    cfg = config(variant)
    one_logger, three_logger = ListLogger(), ListLogger()
    with TrainingRun(cfg, logger=one_logger) as one, TrainingRun(cfg, logger=three_logger) as three:
        one.run_until(cfg.steps)
        for stop in (cfg.steps // 3, 2 * cfg.steps // 3 + 1, cfg.steps):
            three.run_until(stop)
        assert one.step == three.step >= cfg.steps and one.updates == three.updates > 0
        assert_same_state(one, three)
        assert one_logger.rows == three_logger.rows
        assert {"loss/td", "gap/function", "charts/epsilon"} <= {k for _, k, _ in one.logger.rows}
        assert one.evaluate() == three.evaluate()


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_and_load_mid_run_continues_as_if_never_stopped(variant, tmp_path):
    cfg = config(variant)
    middle = 2 * cfg.steps // 5 + 1  # mid-episode, mid-log-window, past learning_starts
    straight_logger = ListLogger()
    with TrainingRun(cfg, logger=straight_logger) as straight:
        straight.run_until(middle)
        straight.evaluate()
        straight.save(tmp_path / "checkpoint.pt")
        straight.run_until(cfg.steps)
        resumed_logger = ListLogger()
        with TrainingRun(cfg, logger=resumed_logger) as resumed:
            resumed.load(tmp_path / "checkpoint.pt")
            assert resumed.step == middle + (-middle) % cfg.env.num_envs
            assert resumed.eval_steps == straight.eval_steps[:1]
            resumed.run_until(cfg.steps)
            assert_same_state(straight, resumed)
            after = [r for r in straight_logger.rows if r[0] > resumed.eval_steps[0]]
            assert resumed_logger.rows == after
            assert straight.evaluate() == resumed.evaluate()


def test_logging_and_evaluating_do_not_change_training():
    """Diagnostics and evaluations draw from their own random streams."""
    quiet = TrainingRun(config(log_every=10_000))
    busy = TrainingRun(config(log_every=7))
    with quiet, busy:
        quiet.run_until(800)
        for stop in (300, 500, 800):
            busy.run_until(stop)
            busy.evaluate()
        for key in ("pair", "replay", "optimizer"):
            assert _same(quiet.state_dict()[key], busy.state_dict()[key]), key


def _same(a, b) -> bool:
    left, right = _tensors(a), _tensors(b)
    return left.keys() == right.keys() and all(
        torch.equal(left[k], right[k])
        if isinstance(left[k], torch.Tensor)
        else np.array_equal(left[k], right[k])
        for k in left
    )


def test_seeds_change_the_run_and_repeat_exactly():
    runs = [TrainingRun(config(seed=s)) for s in (0, 0, 1)]
    for run in runs:
        run.run_until(400)
    states = [run.state_dict() for run in runs]
    for key in ("pair", "replay", "optimizer", "obs"):
        assert _same(states[0][key], states[1][key]), key
    assert not _same(states[0]["pair"], states[2]["pair"])
    assert not _same(states[0]["obs"], states[2]["obs"])
    for run in runs:
        run.close()


def test_load_refuses_a_checkpoint_with_other_settings(tmp_path):
    with TrainingRun(config()) as run:
        run.run_until(300)
        run.save(tmp_path / "c.pt")
    with (
        TrainingRun(config(agent={"lr": 1e-3}, steps=1_600)) as other,
        pytest.raises(ValueError, match=r"other settings \(agent\.lr differ"),
    ):
        other.load(tmp_path / "c.pt")
    with TrainingRun(config(steps=1_600)) as longer:  # a longer run may continue it
        longer.load(tmp_path / "c.pt")
        assert longer.step == 300


@pytest.mark.atari
def test_atari_load_restarts_games_with_fresh_seeds(tmp_path):
    """ale-py's vector env has no snapshot: the games restart, the rest continues exactly."""
    cfg = from_dict(
        TrainConfig,
        {
            "pair": "nature:nature",
            "env": {"num_envs": 2},
            "online_options": {"hidden": 32},
            "target_options": {"hidden": 32},
            "agent": {"learning_starts": 50, "buffer_size": 500, "batch_size": 4, "train_freq": 8},
            "target": {"rule": "hardcopy", "period": 10},
            "steps": 120,
            "log_every": 1_000,
        },
    )
    with TrainingRun(cfg) as run:
        run.run_until(60)
        first_obs = copy.deepcopy(run._obs)
        run.save(tmp_path / "c.pt")
        with TrainingRun(cfg) as resumed:
            resumed.load(tmp_path / "c.pt")
            assert not resumed.envs.restorable and resumed.step == 60
            assert _same(run.state_dict()["pair"], resumed.state_dict()["pair"])
            # Not the run's first games: with sticky actions the same moves play out differently.
            fresh = TrainingRun(cfg)
            moves = [np.full(2, 2 + (t // 5) % 2) for t in range(30)]  # right, left, ...
            frames = [np.stack([r.envs.step(m).obs for m in moves]) for r in (resumed, fresh)]
            assert not np.array_equal(*frames)
            fresh.close()
            resumed.run_until(120)
            assert resumed.step == 120 and first_obs.shape == resumed._obs.shape


@pytest.mark.parametrize("sampling", ["uniform", "prioritized"])
def test_replicate_batches_under_prioritized_replay(sampling):
    """`target.replicate_sampling`: with very skewed priorities, uniform Replicate batches stay
    uniform over the stored transitions (priorities untouched); prioritised ones follow the
    priorities and bring their importance weights."""
    cfg = config(agent={"prioritized": True}, target={"replicate_sampling": sampling})
    with TrainingRun(cfg) as run:
        run.run_until(600)
        memory = run.replay
        valid = np.flatnonzero(memory._valid)
        hot = valid[:: len(valid) // 10][:10]  # 10 transitions hold ~98% of the mass
        memory.update_priorities(valid, np.full(len(valid), 1e-3))
        memory.update_priorities(hot, np.full(len(hot), 1e4))
        leaves = memory._tree.levels[0].copy()
        drawn = []
        sample = memory.sample

        def recording_sample(*args, **kwargs):
            batch = sample(*args, **kwargs)
            drawn.append(batch.indices)
            return batch

        memory.sample = recording_sample
        batches = [run._replicate_sample() for _ in range(600)]
        indices = np.concatenate(drawn)
        np.testing.assert_array_equal(memory._tree.levels[0], leaves)
    hot_share = np.isin(indices, hot).mean()
    if sampling == "uniform":
        assert all(len(b) == 2 for b in batches)
        counts = np.bincount(np.searchsorted(valid, indices), minlength=len(valid))
        assert np.isin(indices, valid).all()
        total_variation = 0.5 * np.abs(counts / counts.sum() - 1 / len(valid)).sum()
        assert total_variation < 0.2 and hot_share < 0.05  # expected: about 0.1 and 0.017
    else:
        assert all(len(b) == 3 for b in batches)
        assert hot_share > 0.9
        weights = torch.cat([b[2] for b in batches])
        assert weights.max() == 1 and weights.min() < 0.1  # the hot draws weigh much less


def test_evaluation_videos_show_what_the_agent_sees(tmp_path):
    """`eval_videos=N`: N evaluation episodes per evaluation become MP4 files of the run."""
    import imageio.v2 as imageio

    from hetero_lr.loggers import CSVLogger

    cfg = config("minatar_polyak", eval_videos=2, eval_episodes=3, eval_max_steps=60)
    logger = CSVLogger(tmp_path)
    with TrainingRun(cfg, logger=logger) as run:
        run.run_until(200)
        run.evaluate()
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["step000000200_episode0.mp4", "step000000200_episode1.mp4"]
    frames = imageio.mimread(videos[0])
    assert len(frames) > 2 and frames[0].shape[2] == 3 and frames[0].shape[0] >= 160
    assert len({f.tobytes() for f in frames}) > 1  # the game moves

    with TrainingRun(config(eval_videos=2)) as run:  # CartPole: vectors, nothing to film
        run.logger = CSVLogger(tmp_path / "cartpole")
        run.evaluate()
    assert not (tmp_path / "cartpole" / "videos").exists()
