"""A replica for the balancing benchmark (`rayfine bench --only balancing`).

`work` takes a fixed time, like a short environment step. `slow_down` multiplies that time on
this replica only, so the benchmark can make one replica of a pool slow (a noisy neighbour, a
throttled host) and see where the balancing sends calls.
"""

import asyncio


class Actor:
    def __init__(self):
        self.factor = 1.0

    async def work(self, ms=10):
        """Waits `ms` milliseconds (times this replica's slow-down) and returns `ms`."""
        await asyncio.sleep(ms * self.factor / 1000)
        return ms

    def slow_down(self, factor=10):
        """Makes every later `work` on this replica `factor` times slower."""
        self.factor = float(factor)
        return self.factor
