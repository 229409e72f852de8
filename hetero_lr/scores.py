"""Reference scores per environment, and the normalised score every cross-env aggregate uses.

Atari: human-normalised.

Values are those of Dopamine's `dopamine/labs/atari_100k/normalization_utils.py`
(`ATARI_HUMAN_SCORES`, `ATARI_RANDOM_SCORES`), i.e. the human and random scores of Mnih et al.
(2015, Extended Data Table 2) and Wang et al. (2016) as used by the Atari 100k literature.
Dopamine has no human score for Defender and Surround; those two come from Badia et al. (2020,
Agent57, Table H.4), as DeepMind's `atari_data.py` tables give them (18,688.9 and 6.5).

    hns(score, game) = (score - random[game]) / (human[game] - random[game])

MinAtar (Young & Tian 2019): 0 is the uniform random policy's mean return, measured here over
1,000 episodes with the `minatar` preset's environment (sticky actions 0.1, minimal action set;
`python -m analysis.random_scores`, `docs/results/minatar_ablation/random_scores.csv`), and 1 a
reference declared before any run used it: DQN's training return at 5M frames, read off the
learning curves of the MinAtar README (kenjyoung/MinAtar `img/learning_curves.gif`; full action
set, 100-episode moving average). The reference is a scale, not a target: our runs are shorter
and evaluated greedily.

An environment in neither table has no normalised score; callers fall back to the raw return and
say so (`normalizer`), and no aggregate over several such environments is computed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

HUMAN_SCORES: dict[str, float] = {
    "alien": 7127.7,
    "amidar": 1719.5,
    "assault": 742.0,
    "asterix": 8503.3,
    "asteroids": 47388.7,
    "atlantis": 29028.1,
    "bankheist": 753.1,
    "battlezone": 37187.5,
    "beamrider": 16926.5,
    "berzerk": 2630.4,
    "bowling": 160.7,
    "boxing": 12.1,
    "breakout": 30.5,
    "centipede": 12017.0,
    "choppercommand": 7387.8,
    "crazyclimber": 35829.4,
    "defender": 18688.9,  # Badia et al. 2020 (not in Dopamine's table)
    "demonattack": 1971.0,
    "doubledunk": -16.4,
    "enduro": 860.5,
    "fishingderby": -38.7,
    "freeway": 29.6,
    "frostbite": 4334.7,
    "gopher": 2412.5,
    "gravitar": 3351.4,
    "hero": 30826.4,
    "icehockey": 0.9,
    "jamesbond": 302.8,
    "kangaroo": 3035.0,
    "krull": 2665.5,
    "kungfumaster": 22736.3,
    "montezumarevenge": 4753.3,
    "mspacman": 6951.6,
    "namethisgame": 8049.0,
    "phoenix": 7242.6,
    "pitfall": 6463.7,
    "pong": 14.6,
    "privateeye": 69571.3,
    "qbert": 13455.0,
    "riverraid": 17118.0,
    "roadrunner": 7845.0,
    "robotank": 11.9,
    "seaquest": 42054.7,
    "skiing": -4336.9,
    "solaris": 12326.7,
    "spaceinvaders": 1668.7,
    "stargunner": 10250.0,
    "surround": 6.5,  # Badia et al. 2020 (not in Dopamine's table)
    "tennis": -8.3,
    "timepilot": 5229.2,
    "tutankham": 167.6,
    "upndown": 11693.2,
    "venture": 1187.5,
    "videopinball": 17667.9,
    "wizardofwor": 4756.5,
    "yarsrevenge": 54576.9,
    "zaxxon": 9173.3,
}

RANDOM_SCORES: dict[str, float] = {
    "alien": 227.8,
    "amidar": 5.8,
    "assault": 222.4,
    "asterix": 210.0,
    "asteroids": 719.1,
    "atlantis": 12850.0,
    "bankheist": 14.2,
    "battlezone": 2360.0,
    "beamrider": 363.9,
    "berzerk": 123.7,
    "bowling": 23.1,
    "boxing": 0.1,
    "breakout": 1.7,
    "centipede": 2090.9,
    "choppercommand": 811.0,
    "crazyclimber": 10780.5,
    "defender": 2874.5,
    "demonattack": 152.1,
    "doubledunk": -18.6,
    "enduro": 0.0,
    "fishingderby": -91.7,
    "freeway": 0.0,
    "frostbite": 65.2,
    "gopher": 257.6,
    "gravitar": 173.0,
    "hero": 1027.0,
    "icehockey": -11.2,
    "jamesbond": 29.0,
    "kangaroo": 52.0,
    "krull": 1598.0,
    "kungfumaster": 258.5,
    "montezumarevenge": 0.0,
    "mspacman": 307.3,
    "namethisgame": 2292.3,
    "phoenix": 761.4,
    "pitfall": -229.4,
    "pong": -20.7,
    "privateeye": 24.9,
    "qbert": 163.9,
    "riverraid": 1338.5,
    "roadrunner": 11.5,
    "robotank": 2.2,
    "seaquest": 68.4,
    "skiing": -17098.1,
    "solaris": 1236.3,
    "spaceinvaders": 148.0,
    "stargunner": 664.0,
    "surround": -10.0,
    "tennis": -23.8,
    "timepilot": 3568.0,
    "tutankham": 11.4,
    "upndown": 533.4,
    "venture": 0.0,
    "videopinball": 0.0,
    "wizardofwor": 563.5,
    "yarsrevenge": 3092.9,
    "zaxxon": 32.5,
}

ATARI_100K_GAMES: tuple[str, ...] = (
    "Alien", "Amidar", "Assault", "Asterix", "BankHeist", "BattleZone", "Boxing", "Breakout",
    "ChopperCommand", "CrazyClimber", "DemonAttack", "Freeway", "Frostbite", "Gopher", "Hero",
    "Jamesbond", "Kangaroo", "Krull", "KungFuMaster", "MsPacman", "Pong", "PrivateEye", "Qbert",
    "RoadRunner", "Seaquest", "UpNDown",
)  # fmt: skip
"""The 26 games of the Atari 100k benchmark (Kaiser et al. 2020; rliable's `ATARI_100K_GAMES`)."""


MINATAR_RANDOM_SCORES: dict[str, float] = {
    "asterix": 0.513,
    "breakout": 0.372,
    "freeway": 0.376,
    "seaquest": 0.09,
    "spaceinvaders": 4.323,
}
"""Uniform random policy, 1,000 episodes each (`docs/results/minatar_ablation/random_scores.csv`,
rounded to 3 decimals)."""

MINATAR_REFERENCE_SCORES: dict[str, float] = {
    "asterix": 17.0,
    "breakout": 10.0,
    "freeway": 50.0,
    "seaquest": 20.0,
    "spaceinvaders": 43.0,
}
"""DQN at 5M frames, read off the MinAtar README's learning curves (Young & Tian 2019)."""


def minatar_game(env_id: str) -> str | None:
    """Table key of a MinAtar id (`MinAtar/SpaceInvaders-v1` -> `spaceinvaders`), else None."""
    match = re.fullmatch(r"MinAtar/(\w+)-v\d+", env_id)
    return match.group(1).lower() if match else None


def atari_game(env_id: str) -> str | None:
    """Table key of an ALE environment id (`ALE/MsPacman-v5` -> `mspacman`), None otherwise."""
    match = re.fullmatch(r"ALE/(\w+)-v\d+", env_id)
    return match.group(1).lower() if match else None


def human_normalized(score: float, game: str) -> float:
    """Human-normalised score: 0 is the random agent, 1 the human reference.

    Raises:
        KeyError: for a game without both reference scores.
    """
    random, human = RANDOM_SCORES[game], HUMAN_SCORES[game]
    return (score - random) / (human - random)


def is_normalised(note: str) -> bool:
    """Whether a `normalizer` description names a normalised scale (not the raw return)."""
    return not note.startswith("raw return")


def normalizer(env_id: str) -> tuple[Callable[[float], float], str]:
    """The score transform a study uses for an environment, and a one-line description.

    Atari games in the tables get the human-normalised score, MinAtar games the score between
    the random policy (0) and the declared reference (1); everything else keeps the raw return,
    and the description says why (it is logged as a tag next to the objective).
    """
    minatar = minatar_game(env_id)
    if minatar in MINATAR_REFERENCE_SCORES:
        low, high = MINATAR_RANDOM_SCORES[minatar], MINATAR_REFERENCE_SCORES[minatar]
        return (
            lambda score: (score - low) / (high - low),
            f"normalised score ({minatar}: random {low}, reference {high}, DQN at 5M frames, "
            "Young & Tian 2019)",
        )
    game = atari_game(env_id)
    if game is None:
        return float, f"raw return ({env_id} has no reference scores)"
    if game not in HUMAN_SCORES or game not in RANDOM_SCORES:
        return float, f"raw return (no human/random reference scores for {game!r})"
    return (
        lambda score: human_normalized(score, game),
        f"human-normalised ({game}: random {RANDOM_SCORES[game]}, human {HUMAN_SCORES[game]})",
    )
