"""OpenEnv's scaling benchmark environment, as a Rayfine environment.

The same semantics as the benchmark environment of OpenEnv's scaling tutorial: each session has an
Actor of its own; `step(wait_seconds)` blocks its thread for that long with a plain `time.sleep`
(the cost of a slow simulator or tool call) and reports who served it. `rayfine bench --only
openenv` opens thousands of WebSocket sessions against it at once; `ping` is the trivial `/call`
the one-step latency is compared with.
"""

import os
import time
import uuid
from typing import Any, Dict, Optional


class Actor:
    def __init__(self):
        self.session_hash = uuid.uuid4().hex[:16]
        self.step_count = 0

    def reset(self, seed: Optional[int] = None, episode_id: Optional[str] = None) -> Dict[str, Any]:
        """Starts an episode."""
        self.step_count = 0
        return {"waited_seconds": 0.0, "pid": os.getpid(), "session_hash": self.session_hash, "step_count": 0, "reward": 0.0, "done": False}

    def step(self, wait_seconds: float = 0.0) -> Dict[str, Any]:
        """Blocks for `wait_seconds` (a sync sleep, as OpenEnv's benchmark does), then answers."""
        if not 0.0 <= wait_seconds <= 60.0:
            raise ValueError("wait_seconds must be between 0 and 60, got %r" % (wait_seconds,))
        if wait_seconds:
            time.sleep(wait_seconds)
        self.step_count += 1
        return {
            "waited_seconds": wait_seconds,
            "pid": os.getpid(),
            "session_hash": self.session_hash,
            "step_count": self.step_count,
            "reward": 0.0,
            "done": False,
        }

    def ping(self) -> str:
        """The trivial call."""
        return "pong"
