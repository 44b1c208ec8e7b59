"""Echo: module-level functions, sync and async. The smallest function-based environment."""

import asyncio


def echo(text="hello"):
    """Returns its argument unchanged."""
    return text


def add(a, b):
    """Adds two numbers."""
    return a + b


async def slow_echo(text, delay=0.1):
    """Returns `text` after sleeping `delay` seconds without blocking other calls."""
    await asyncio.sleep(delay)
    return text


def ping():
    """A trivial sync call: what latency benchmarks measure."""
    return "pong"


async def aping():
    """A trivial async call."""
    return "pong"
