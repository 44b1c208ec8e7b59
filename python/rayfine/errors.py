"""Rayfine's exceptions: one hierarchy under :class:`RayfineError`.

The Rust core raises these (``rayfine._rayfine`` imports this module), with the structured fields
set as attributes.
"""

import builtins

__all__ = [
    "RayfineError",
    "RemoteError",
    "MethodNotFound",
    "InvalidArguments",
    "ResultNotSerializable",
    "CallTimeout",
    "NotReady",
    "StartFailed",
    "EnvironmentStopped",
    "ConnectionError",
    "InvalidInput",
    "BuildFailed",
    "DockerError",
]


class RayfineError(Exception):
    """Base class of every error Rayfine raises."""


class RemoteError(RayfineError):
    """The environment's own code raised.

    Attributes: ``method``, ``remote_type`` (e.g. ``"ValueError"``), ``remote_message`` and
    ``remote_traceback`` (the Python traceback inside the environment).
    """

    method = ""
    remote_type = ""
    remote_message = ""
    remote_traceback = ""

    def __str__(self):
        text = super().__str__()
        if self.remote_traceback:
            return "%s\n--- remote traceback ---\n%s" % (text, self.remote_traceback.rstrip())
        return text


class MethodNotFound(RayfineError):
    """No method of that name; the message lists the environment's methods."""

    method = ""


class InvalidArguments(RayfineError):
    """The arguments do not fit the method's signature."""

    method = ""


class ResultNotSerializable(RayfineError):
    """The method returned something JSON cannot carry."""

    method = ""


class CallTimeout(RayfineError, TimeoutError):
    """The call ran past its timeout; the environment stopped the work."""

    method = ""


class NotReady(RayfineError):
    """The environment is up but not serving (loading, restarting its worker)."""


class StartFailed(RayfineError):
    """The environment did not start; ``logs`` holds its last log lines."""

    name = ""
    logs = ()


class EnvironmentStopped(RayfineError):
    """The environment has stopped, or was cleaned up; ``logs`` holds its last log lines."""

    name = ""
    logs = ()


class ConnectionError(RayfineError, builtins.ConnectionError):  # noqa: A001 - the name users expect
    """The environment could not be reached, refused the token, or did not speak the protocol."""

    url = ""


class InvalidInput(RayfineError, ValueError):
    """An argument of Rayfine's own (an option, a path, a tag) is unusable."""


class BuildFailed(RayfineError):
    """An image build failed; ``step`` is the Dockerfile step that failed, when known."""

    tag = ""
    step = None


class DockerError(RayfineError):
    """The Docker engine refused or failed an operation; the message quotes the daemon."""
