"""Rayfine with asyncio: the surface of :mod:`rayfine`, awaitable. Calls run on Rayfine's Rust
runtime; the event loop only starts them and receives their results.

    import rayfine.aio as rf
    env = await rf.load_env("echo:latest")
    result = await env.evaluate(task_type="sat")
    await env.cleanup()

Code written for affinetes switches by changing its import.
"""

import asyncio
import weakref

from . import _rayfine
from . import _Handle, _load_options, _remote_method, _DEFAULT, build_image_from_env as _build_sync
from . import list_active_environments as _list_sync, get_environment as _get_sync
from .errors import *  # noqa: F401,F403

__all__ = ["AsyncEnvironment", "load_env", "build_image_from_env", "list_active_environments", "get_environment", "cleanup_all_environments"]


# One completer per event loop: it completes the loop's call futures in batches, so that under
# load one wake-up of the loop serves many finished calls (see python/src/completions.rs).
_completers = weakref.WeakKeyDictionary()


def _completer():
    loop = asyncio.get_running_loop()
    try:
        completer = _completers.get(loop)
        if completer is None:
            completer = _completers[loop] = _rayfine.Completer(loop)
    except TypeError:  # a loop type without weak references: one completer per call
        completer = _rayfine.Completer(loop)
    return completer


def _call_async(env):
    """The extension's `call_async` of `env`, on the running loop's completer."""
    def call(method, args, kwargs, timeout):
        return env.call_async(_completer(), method, args, kwargs, timeout)

    return call


class AsyncEnvironment(_Handle):
    """A loaded environment whose calls are awaited: ``await env.evaluate(x=1)``."""

    __slots__ = ()

    def call(self, method, *args, _timeout=None, **kwargs):
        """Calls ``method``; returns an awaitable of its result."""
        return self._env.call_async(_completer(), method, args, kwargs, _timeout)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return _remote_method(_call_async(self._env), name)

    async def list_methods(self):
        """The environment's methods."""
        return await self._env.list_methods_async(_completer())

    async def is_ready(self):
        """Whether the environment answers its health check with ready."""
        return await asyncio.get_running_loop().run_in_executor(None, self._env.is_ready)

    async def cleanup(self):
        """Stops the environment. Idempotent."""
        await self._env.cleanup_async(_completer())

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.cleanup()
        return False

    def __repr__(self):
        return "<rayfine.aio.AsyncEnvironment %s mode=%s url=%s>" % (self.name, self.mode, self.url)


async def load_env(image=None, *, path=None, url=None, mode="auto", env_vars=None, name=None, env_type=None,
                   mem_limit=None, cpu_limit=None, startup_timeout=None, call_timeout=None, token=None,
                   keep=False, lease=_DEFAULT, server_program=None, hosts=None):
    """Awaitable :func:`rayfine.load_env`."""
    def make_options():
        return _load_options(image, path, url, mode, env_vars, name, env_type, mem_limit, cpu_limit,
                             startup_timeout, call_timeout, token, keep, lease, server_program, hosts)

    if mode == "docker" and path is not None and image is None:
        # The options of a folder in Docker mode include its build: run that off the loop.
        options = await asyncio.get_running_loop().run_in_executor(None, make_options)
    else:
        options = make_options()
    return AsyncEnvironment(await _rayfine.load_env_async(options, _completer()))


async def build_image_from_env(env_path, image_tag, **options):
    """Awaitable :func:`rayfine.build_image_from_env` (the build runs in a thread)."""
    return await asyncio.get_running_loop().run_in_executor(None, lambda: _build_sync(env_path, image_tag, **options))


def list_active_environments():
    """Every environment this interpreter loaded and has not cleaned up."""
    return [AsyncEnvironment(env._env) for env in _list_sync()]


def get_environment(id_or_name):
    """The environment with this id or name, or ``None``."""
    env = _get_sync(id_or_name)
    return None if env is None else AsyncEnvironment(env._env)


async def cleanup_all_environments():
    """Cleans up every environment; returns how many there were."""
    return await asyncio.get_running_loop().run_in_executor(None, _rayfine.cleanup_all_environments)
