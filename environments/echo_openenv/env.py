"""Echo, OpenEnv style: a port of OpenEnv's classic `echo_env` (the `echoed_message` version).

The observations, rewards and state match OpenEnv's own echo environment, so an OpenEnv client
(`GenericEnvClient`, or EchoEnv's client) drives it unchanged through Rayfine's OpenEnv layer:
`reset` answers "Echo environment ready!", and each `step` echoes the action's `message` back with
a reward of 0.1 per character. Episodes never end by themselves (`done` is always False).

Rayfine's server creates one Actor per OpenEnv (WebSocket) session, so the episode state lives on
the instance and sessions never see each other's. The OpenEnv action `{"message": "hi"}` arrives as
the keyword argument `message`.
"""

import uuid
from typing import Any, Dict, Optional


class Actor:
    def __init__(self):
        # As in OpenEnv's echo_env, state() has an id even before the first reset.
        self.episode_id = str(uuid.uuid4())
        self.step_count = 0

    def reset(self, seed: Optional[int] = None, episode_id: Optional[str] = None) -> Dict[str, Any]:
        """Starts an episode (with `episode_id` if given, else a new uuid4); `seed` is unused."""
        self.episode_id = episode_id if episode_id is not None else str(uuid.uuid4())
        self.step_count = 0
        return {"echoed_message": "Echo environment ready!", "message_length": 0,
                "metadata": {}, "reward": 0.0, "done": False}

    def step(self, message: str) -> Dict[str, Any]:
        """Echoes `message` back; the reward is 0.1 per character."""
        if not isinstance(message, str) or not message:
            raise ValueError("message must be a non-empty string")
        self.step_count += 1
        return {"echoed_message": message, "message_length": len(message),
                "metadata": {"original_message": message, "step": self.step_count},
                "reward": len(message) * 0.1, "done": False}

    def state(self) -> Dict[str, Any]:
        """The episode's id and how many steps it has taken."""
        return {"episode_id": self.episode_id, "step_count": self.step_count}

    def close(self) -> None:
        """Rayfine calls this when the session ends; the echo environment holds nothing to free."""
