"""Rayfine from Python: run environments for agentic RL as isolated services, and call them like
local objects, on Rayfine's Rust core.

    import rayfine
    env = rayfine.load_env("echo:latest", env_vars={"API_KEY": "..."})
    print(env.evaluate(task_type="sat", num_samples=5))
    env.cleanup()

``rayfine.aio`` has the same surface with ``await``. Environments end when cleaned up, at
interpreter exit, on SIGTERM, and (through their stdin and lease) when the interpreter is killed.
"""

import atexit as _atexit
import os as _os
import signal as _signal
import threading as _threading
import zlib as _zlib

from . import _rayfine
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

__all__ = [
    "Environment",
    "load_env",
    "build_image_from_env",
    "remove_image",
    "list_active_environments",
    "get_environment",
    "cleanup_all_environments",
] + list(_errors_all)


def _load_options(image, path, url, mode, env_vars, name, env_type, mem_limit, cpu_limit, startup_timeout, call_timeout, token, keep, lease, server_program, hosts):
    """The keyword arguments of load_env as the Rust side reads them; only those given."""
    if mode == "docker" and path is not None and image is None:
        # A folder in Docker mode: build it first, as `rayfine run --mode docker` does.
        # One tag per folder: two folders of the same name never share (and retag) an image.
        folder = _os.path.abspath(path)
        tag = "rayfine-local/%s-%08x:latest" % (_slug(name or _os.path.basename(folder)), _zlib.crc32(folder.encode()))
        image, path = build_image_from_env(path, tag, quiet=True), None
    options = {
        "image": image, "path": path, "url": url, "mode": mode, "env_vars": env_vars, "name": name,
        "env_type": env_type, "mem_limit": mem_limit, "cpu_limit": cpu_limit,
        "startup_timeout": startup_timeout, "call_timeout": call_timeout, "token": token,
        "keep": keep, "server_program": server_program, "hosts": hosts,
    }
    options = {k: v for k, v in options.items() if v is not None}
    if lease is not _DEFAULT:
        options["lease"] = lease
    return options


def _slug(text):
    slug = "".join(c if (c.isascii() and c.isalnum()) or c == "-" else "-" for c in text.lower()).strip("-")
    return slug or "env"


_DEFAULT = object()


def _remote_method(call, name):
    """The function ``env.<name>`` returns: calls the remote method ``name`` through ``call``
    (the extension's sync ``call`` or its ``call_async``), ``_timeout=`` in seconds."""

    def remote(*args, _timeout=None, **kwargs):
        return call(name, args, kwargs, _timeout)

    remote.__name__ = remote.__qualname__ = name
    remote.__doc__ = "Calls the environment's method `%s`." % name
    return remote


class _Handle:
    """What the sync and the async environment share: the extension's handle and what it tells."""

    __slots__ = ("_env",)

    def __init__(self, env):
        self._env = env

    id = property(lambda self: self._env.id, doc="Registry id, unique in this process.")
    name = property(lambda self: self._env.name, doc="Name.")
    mode = property(lambda self: self._env.mode, doc='"process", "docker" or "remote".')
    url = property(lambda self: self._env.url, doc="Base URL of the server.")
    env_type = property(lambda self: self._env.env_type, doc='"function" or "http".')
    container_id = property(lambda self: self._env.container_id, doc="The container's id, in Docker mode.")
    pid = property(lambda self: self._env.pid, doc="The server's process id, in process mode.")


class Environment(_Handle):
    """A loaded environment. ``env.evaluate(x=1)`` calls the remote method ``evaluate``;
    ``env.call("evaluate", x=1)`` does the same by name. ``_timeout=`` (seconds) bounds one call.

    Methods of the remote that share a name with this class's own (``call``, ``cleanup``,
    ``list_methods``, ``is_ready``) are reached with ``env.call(name, ...)``.
    """

    __slots__ = ("_method_names",)

    def __init__(self, env):
        super().__init__(env)
        self._method_names = None

    def call(self, method, *args, _timeout=None, **kwargs):
        """Calls ``method`` with these arguments and returns its result."""
        return self._env.call(method, args, kwargs, _timeout)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return _remote_method(self._env.call, name)

    def __dir__(self):
        names = set(super().__dir__())
        if self._method_names is None:
            try:
                self._method_names = [m["name"] for m in self._env.list_methods()]
            except RayfineError:  # noqa: F405
                self._method_names = []
        return sorted(names.union(self._method_names))

    def list_methods(self):
        """The environment's methods: dicts with ``name``, ``signature``, ``doc``, ``is_async``."""
        return self._env.list_methods()

    def is_ready(self):
        """Whether the environment answers its health check with ready."""
        return self._env.is_ready()

    def cleanup(self):
        """Stops the environment (removes its container or process). Idempotent."""
        self._env.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False


    def __repr__(self):
        return "<rayfine.Environment %s mode=%s url=%s>" % (self.name, self.mode, self.url)


def load_env(image=None, *, path=None, url=None, mode="auto", env_vars=None, name=None, env_type=None,
             mem_limit=None, cpu_limit=None, startup_timeout=None, call_timeout=None, token=None,
             keep=False, lease=_DEFAULT, server_program=None, hosts=None):
    """Starts an environment (or connects to one) and waits until it is ready.

    - ``image``: a Docker image, run as a container (isolated);
    - ``path=``: an environment folder, run as a local process (``mode="docker"`` builds it into
      an image first);
    - ``url=``: a server someone else runs.

    ``env_vars`` reach the environment (never logged); ``mem_limit`` (bytes or ``"512m"``) and
    ``cpu_limit`` bound a container; ``startup_timeout`` and ``call_timeout`` are in seconds
    (defaults 120 and 600); ``lease`` (seconds, default 60; ``None`` for none) is how long the
    environment outlives a frozen or killed interpreter; ``keep=True`` lets it outlive this one.
    ``hosts`` names the Docker engines an image may run on (``["local", "tcp://10.0.0.2:2375", "ssh://ops@10.0.0.3"]``;
    default ``RAYFINE_HOSTS``, else this machine's): it goes to the one with the most free
    capacity, and an engine that lacks the image gets a copy. ``mode="swarm"`` runs the image as
    a Swarm service on the first host, a Swarm manager.
    """
    options = _load_options(image, path, url, mode, env_vars, name, env_type, mem_limit, cpu_limit,
                            startup_timeout, call_timeout, token, keep, lease, server_program, hosts)
    return Environment(_rayfine.load_env(options))


def build_image_from_env(env_path, image_tag, nocache=False, quiet=False, buildargs=None, base_image=None, progress=None, dockerfile=None):
    """Builds an environment folder into the image ``image_tag`` (two stages for function-based
    environments) and returns the tag. ``progress(stage, line)`` receives the build output;
    ``dockerfile`` names one other than the folder's top-level ``Dockerfile`` (``docker build -f``)."""
    dockerfile = None if dockerfile is None else str(dockerfile)
    return _rayfine.build_image_from_env(str(env_path), image_tag, nocache, quiet, buildargs, base_image, progress, dockerfile)


def remove_image(image):
    """Removes the image ``image`` (a tag or an id), with its untagged parents nothing else uses;
    a missing one is not an error. Unlike ``docker rmi``, it waits for the builds Rayfine is
    running on this machine, so it never removes a layer one of them is taking from the cache."""
    _rayfine.remove_image(image)


def list_active_environments():
    """Every environment this interpreter loaded and has not cleaned up."""
    return [Environment(env) for env in _rayfine.list_active_environments()]


def get_environment(id_or_name):
    """The environment with this id, or else the only one with this name; ``None`` if none."""
    env = _rayfine.get_environment(id_or_name)
    return None if env is None else Environment(env)


def cleanup_all_environments():
    """Cleans up every environment, kept ones included; returns how many there were."""
    return _rayfine.cleanup_all_environments()


_OWNER_PID = _os.getpid()


def _end_all():
    # A forked child that exits normally runs the parent's atexit hooks: its parent's
    # environments are not its to end.
    if _os.getpid() == _OWNER_PID:
        _rayfine.end_all_now()
    # After this, the extension's background threads stay out of Python: one entering it while
    # the interpreter finalizes would abort the process.
    _rayfine.interpreter_exiting()


def _on_sigterm(signum, frame):
    # The fallback, in Python's own table: what `signal.getsignal` reports while Rayfine's
    # handler is installed, and what a program that saves and restores the SIGTERM handler puts
    # back. It ends the environments too, but waits for the main thread as every Python handler
    # does.
    _end_all()
    _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
    _os.kill(_os.getpid(), _signal.SIGTERM)


_atexit.register(_end_all)
# SIGTERM: Rayfine's handler ends the environments on a thread of its own, then the process dies
# of SIGTERM as the default action would. Not a Python handler alone: CPython runs those on the
# main thread between bytecodes, so a SIGTERM during a long C call (a tensor op, a `time.sleep`
# not yet entered) waited for the call. Only where SIGTERM still has its default action: a
# program with a handler of its own keeps it, and one it sets later replaces Rayfine's (its
# environments still end at exit, or through their stdin and lease).
if _threading.current_thread() is _threading.main_thread() and _signal.getsignal(_signal.SIGTERM) is _signal.SIG_DFL:
    _signal.signal(_signal.SIGTERM, _on_sigterm)
    try:
        _rayfine.end_environments_on_sigterm()
    except OSError as _err:
        import warnings as _warnings

        _warnings.warn("%s; SIGTERM ends the environments from Python's handler instead" % _err, RuntimeWarning, stacklevel=2)
