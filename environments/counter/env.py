"""Counter: an Actor that keeps state between calls and reads its configuration from env vars.

The constructor runs once when the environment starts. Without COUNTER_NAME it raises, so a
missing setting stops the start with a clear error instead of failing the first call.
"""

import os


class Actor:
    def __init__(self):
        self.name = os.environ["COUNTER_NAME"]
        self.step = int(os.environ.get("COUNTER_STEP", "1"))
        self.value = 0

    def increment(self, times=1):
        """Adds `times` steps to the counter and returns the new value."""
        self.value += self.step * times
        return self.value

    def get(self):
        """Returns the counter's name and value."""
        return {"name": self.name, "value": self.value}

    def reset(self):
        """Sets the counter back to zero."""
        self.value = 0
        return self.value

    async def evaluate(self, answer=None):
        """Scores an answer: 1.0 when it equals the counter's value."""
        return {"score": 1.0 if answer == self.value else 0.0, "expected": self.value}
