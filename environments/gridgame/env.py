"""Grid game: an OpenEnv-style environment with reset/step/state, episodes kept by id.

The agent walks on a small grid from (0, 0) towards a goal; each step costs -0.01 and reaching the
goal gives +1.0. Several episodes can run at once: each `reset` returns a new `episode_id`.
"""

import random
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional

MOVES = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}


@dataclass
class Observation:
    position: List[int]
    goal: List[int]
    legal_actions: List[str]


@dataclass
class StepResult:
    episode_id: str
    observation: Observation
    reward: float = 0.0
    done: bool = False
    info: Dict[str, object] = field(default_factory=dict)


@dataclass
class Episode:
    size: int
    position: List[int]
    goal: List[int]
    steps: int = 0
    total_reward: float = 0.0
    done: bool = False


class Actor:
    def __init__(self):
        self.episodes: Dict[str, Episode] = {}

    def _observe(self, episode):
        return Observation(list(episode.position), list(episode.goal), sorted(MOVES))

    def reset(self, size: int = 5, seed: Optional[int] = None):
        """Starts an episode on a `size` x `size` grid; returns its id and first observation."""
        if not 2 <= size <= 100:
            raise ValueError("size must be between 2 and 100, got %d" % size)
        rng = random.Random(seed)
        goal = [rng.randrange(1, size), rng.randrange(1, size)]
        episode_id = uuid.uuid4().hex
        self.episodes[episode_id] = Episode(size=size, position=[0, 0], goal=goal)
        return StepResult(episode_id, self._observe(self.episodes[episode_id]))

    def step(self, episode_id: str, action: str):
        """Moves one cell; returns the observation, reward and whether the episode is over."""
        episode = self.episodes.get(episode_id)
        if episode is None:
            raise KeyError("no episode %r; call reset first" % episode_id)
        if episode.done:
            raise RuntimeError("episode %s is over; call reset" % episode_id)
        if action not in MOVES:
            raise ValueError("unknown action %r; legal: %s" % (action, ", ".join(sorted(MOVES))))
        dx, dy = MOVES[action]
        episode.position[0] = min(max(episode.position[0] + dx, 0), episode.size - 1)
        episode.position[1] = min(max(episode.position[1] + dy, 0), episode.size - 1)
        episode.steps += 1
        reward = -0.01
        if episode.position == episode.goal:
            reward, episode.done = 1.0, True
        episode.total_reward += reward
        info = {"steps": episode.steps, "total_reward": round(episode.total_reward, 4)}
        return StepResult(episode_id, self._observe(episode), reward, episode.done, info)

    def state(self, episode_id: str):
        """The whole state of one episode."""
        episode = self.episodes.get(episode_id)
        if episode is None:
            raise KeyError("no episode %r" % episode_id)
        return episode

    def close(self, episode_id: str):
        """Forgets an episode; returns whether it existed."""
        return self.episodes.pop(episode_id, None) is not None
