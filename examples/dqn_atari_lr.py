# CleanRL's single-file DQN for Atari (vwxyzjn/cleanrl, cleanrl/dqn_atari.py at fe8d8a0) with the
# target network learned by Lookahead-Replicate (Asadi et al., ICML 2024) instead of copied.
# Diff it against CleanRL's file (examples/README.md): the algorithmic changes are the target's
# construction (another architecture, from hetero_lr.build_network) and pair.step replacing the
# hard copy; the rest are ports to gymnasium 1.x / ale-py 0.11+ and SB3's copies of cleanrl_utils.
import os
import random
import time
from dataclasses import dataclass

import ale_py
import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import tyro

# cleanrl_utils.atari_wrappers and cleanrl_utils.buffers are copies of these SB3 modules
from stable_baselines3.common.atari_wrappers import (
    ClipRewardEnv,
    EpisodicLifeEnv,
    FireResetEnv,
    MaxAndSkipEnv,
    NoopResetEnv,
)
from stable_baselines3.common.buffers import ReplayBuffer
from torch.utils.tensorboard import SummaryWriter

from hetero_lr import HeteroPair, Replicate, build_network

# ale-py >= 0.9 registers its ids (still including BreakoutNoFrameskip-v4) only on request.
gym.register_envs(ale_py)


# Defaults are CleanRL's dqn_atari.py defaults, except the four target-network fields, which
# replace CleanRL's `tau` (1.0) and `target_network_frequency` (1000).
@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """name of this experiment"""
    seed: int = 1
    """experiment seed"""
    torch_deterministic: bool = True
    """sets `torch.backends.cudnn.deterministic`"""
    cuda: bool = True
    """use CUDA when available"""
    track: bool = False
    """log to Weights and Biases"""
    wandb_project_name: str = "cleanRL"
    """Weights and Biases project"""
    wandb_entity: str = None
    """Weights and Biases entity (team)"""
    capture_video: bool = False
    """record videos of the first env into `videos/`"""
    save_model: bool = False
    """save the networks into `runs/{run_name}`"""
    upload_model: bool = False
    """upload the saved model to the Hugging Face Hub"""
    hf_entity: str = ""
    """Hugging Face user or organisation"""

    # Algorithm specific arguments
    env_id: str = "BreakoutNoFrameskip-v4"
    """environment id"""
    total_timesteps: int = 10000000
    """environment steps in total"""
    learning_rate: float = 1e-4
    """online optimizer learning rate"""
    num_envs: int = 1
    """parallel environments"""
    buffer_size: int = 1000000
    """replay memory size"""
    gamma: float = 0.99
    """discount factor"""
    target_network: str = "impala"
    """target architecture, a hetero_lr spec (nature, impala, timm/<model>, ...)"""
    target_learning_rate: float = 1e-3
    """learning rate of the target's own Adam (Replicate steps)"""
    lookahead_steps: int = 250
    """KL: online updates between Replicate phases (CleanRL copies every 1000 steps = 250 updates)"""
    replicate_steps: int = 25
    """KR: target gradient steps per Replicate phase"""
    batch_size: int = 32
    """replay batch size"""
    start_e: float = 1
    """initial exploration epsilon"""
    end_e: float = 0.01
    """final exploration epsilon"""
    exploration_fraction: float = 0.10
    """fraction of `total-timesteps` over which epsilon decays from start-e to end-e"""
    learning_starts: int = 80000
    """environment step at which learning starts"""
    train_frequency: int = 4
    """environment steps per online update"""


def make_env(env_id, seed, idx, capture_video, run_name):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)

        env = NoopResetEnv(env, noop_max=30)
        env = MaxAndSkipEnv(env, skip=4)
        env = EpisodicLifeEnv(env)
        if "FIRE" in env.unwrapped.get_action_meanings():
            env = FireResetEnv(env)
        env = ClipRewardEnv(env)
        env = gym.wrappers.ResizeObservation(env, (84, 84))
        # gymnasium 1.x names of GrayScaleObservation / FrameStack
        env = gym.wrappers.GrayscaleObservation(env)
        env = gym.wrappers.FrameStackObservation(env, 4)

        env.action_space.seed(seed)
        return env

    return thunk


# ALGO LOGIC: initialize agent here:
# The online network: Nature DQN (Mnih et al. 2015), as in CleanRL.
class QNetwork(nn.Module):
    def __init__(self, env):
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512),
            nn.ReLU(),
            nn.Linear(512, env.single_action_space.n),
        )

    def forward(self, x):
        return self.network(x / 255.0)


def linear_schedule(start_e: float, end_e: float, duration: int, t: int):
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


if __name__ == "__main__":
    args = tyro.cli(Args)
    assert args.num_envs == 1, "vectorized envs are not supported at the moment"
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=vars(args),
            name=run_name,
            monitor_gym=True,
            save_code=True,
        )
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
    )

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic

    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # env setup
    # SAME_STEP autoreset keeps gymnasium 0.29's `final_obs`/`final_info` on the terminal step
    # (gymnasium 1.x defaults to resetting on the next step).
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, args.seed + i, i, args.capture_video, run_name) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    assert isinstance(envs.single_action_space, gym.spaces.Discrete), "only discrete action space is supported"

    q_network = QNetwork(envs).to(device)
    optimizer = optim.Adam(q_network.parameters(), lr=args.learning_rate)
    # LR: the target is another architecture; it is trained to replicate q_network's outputs,
    # so no load_state_dict copy (impossible across architectures).
    obs_shape = envs.single_observation_space.shape
    target_network = build_network(args.target_network, obs_shape, envs.single_action_space.n).to(device)
    pair = HeteroPair(
        q_network,
        target_network,
        Replicate(kr=args.replicate_steps, kl=args.lookahead_steps, lr=args.target_learning_rate),
        example_obs=torch.zeros((1, *obs_shape), dtype=torch.uint8, device=device),
    )

    rb = ReplayBuffer(
        args.buffer_size,
        envs.single_observation_space,
        envs.single_action_space,
        device,
        optimize_memory_usage=True,
        handle_timeout_termination=False,
    )

    # LR: each Replicate step draws its own replay batch (uint8 frames; both networks scale them)
    def replicate_batch():
        batch = rb.sample(args.batch_size)
        return batch.observations, batch.actions.flatten()

    start_time = time.time()

    # TRY NOT TO MODIFY: start the game
    obs, _ = envs.reset(seed=args.seed)
    for global_step in range(args.total_timesteps):
        # ALGO LOGIC: put action logic here
        epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps, global_step)
        if random.random() < epsilon:
            actions = np.array([envs.single_action_space.sample() for _ in range(envs.num_envs)])
        else:
            q_values = q_network(torch.Tensor(obs).to(device))
            actions = torch.argmax(q_values, dim=1).cpu().numpy()

        # TRY NOT TO MODIFY: execute the game and log data.
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)

        # TRY NOT TO MODIFY: record rewards for plotting purposes
        # gymnasium 1.x: one dict of per-env arrays, `_episode` marks the envs that finished
        if "final_info" in infos and "episode" in infos["final_info"]:
            final_info = infos["final_info"]
            for idx in np.flatnonzero(final_info["_episode"]):
                episode = {key: final_info["episode"][key][idx] for key in ("r", "l")}
                print(f"global_step={global_step}, episodic_return={episode['r']}")
                writer.add_scalar("charts/episodic_return", episode["r"], global_step)
                writer.add_scalar("charts/episodic_length", episode["l"], global_step)

        # TRY NOT TO MODIFY: save data to reply buffer; handle `final_obs`
        real_next_obs = next_obs.copy()
        for idx, trunc in enumerate(truncations):
            if trunc:
                real_next_obs[idx] = infos["final_obs"][idx]
        rb.add(obs, real_next_obs, actions, rewards, terminations, infos)

        # TRY NOT TO MODIFY: CRUCIAL step easy to overlook
        obs = next_obs

        # ALGO LOGIC: training.
        if global_step > args.learning_starts:
            if global_step % args.train_frequency == 0:
                data = rb.sample(args.batch_size)
                with torch.no_grad():
                    # LR: max_a of the (other-architecture) target, as CleanRL's target_max
                    target_max = pair.bootstrap(data.next_observations)
                    td_target = data.rewards.flatten() + args.gamma * target_max * (1 - data.dones.flatten())
                old_val = q_network(data.observations).gather(1, data.actions).squeeze()
                loss = F.mse_loss(td_target, old_val)

                if global_step % 100 == 0:
                    writer.add_scalar("losses/td_loss", loss, global_step)
                    writer.add_scalar("losses/q_values", old_val.mean().item(), global_step)
                    print("SPS:", int(global_step / (time.time() - start_time)))
                    writer.add_scalar("charts/SPS", int(global_step / (time.time() - start_time)), global_step)

                # optimize the model
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

                # update target network
                # LR: replaces CleanRL's copy every `target_network_frequency` steps: after every
                # `lookahead_steps` updates, `replicate_steps` gradient steps move the target
                # toward q_network on fresh replay states (Asadi et al. 2024, Algorithm 1).
                metrics = pair.step(replicate_batch)
                if "loss/replicate_after" in metrics:
                    writer.add_scalar("losses/replicate_loss", metrics["loss/replicate_after"], global_step)

    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.cleanrl_model"
        torch.save(q_network.state_dict(), model_path)
        # LR: the target and the Replicate optimizer and counters, to resume training
        torch.save(pair.state_dict(), f"runs/{run_name}/{args.exp_name}.pair")
        print(f"model saved to {model_path}")
        # Needs CleanRL's cleanrl_utils (run from a CleanRL checkout).
        from cleanrl_utils.evals.dqn_eval import evaluate

        episodic_returns = evaluate(
            model_path,
            make_env,
            args.env_id,
            eval_episodes=10,
            run_name=f"{run_name}-eval",
            Model=QNetwork,
            device=device,
            epsilon=args.end_e,
        )
        for idx, episodic_return in enumerate(episodic_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)

        if args.upload_model:
            from cleanrl_utils.huggingface import push_to_hub

            repo_name = f"{args.env_id}-{args.exp_name}-seed{args.seed}"
            repo_id = f"{args.hf_entity}/{repo_name}" if args.hf_entity else repo_name
            push_to_hub(args, episodic_returns, repo_id, "DQN", f"runs/{run_name}", f"videos/{run_name}-eval")

    envs.close()
    writer.close()
