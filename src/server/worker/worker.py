"""Rayfine's Python worker: loads an environment's env.py and runs its methods for rayfine-server.

Standard library only, Python 3.8 or newer, so an image needs nothing but `python3`.

The server talks to this process over a private channel made of the stdin and stdout it was started
with: one JSON object per line each way, in the shapes src/protocol/worker.rs documents (the error
kinds below are its `FailureKind` names). At start-up the worker moves that channel to fresh file
descriptors and points fd 0 at /dev/null and fd 1 at stderr, so whatever the environment prints goes
to the log and can never corrupt the channel.

Server -> worker:  {"id": N, "method": "...", "args": [...], "kwargs": {...}}   a call, which may add
                       "instance": K     run it on session instance K (without it: instance 0)
                       "lenient": true   drop keyword arguments the method cannot take
                       "action": <json>  OpenEnv's step action (see `Method.adapt`)
                   {"id": N, "open": K}    make session instance K, a new Actor(); answers null
                   {"id": N, "close": K}   drop instance K and call its close(); answers null
                   {"cancel": N}           cancel an async call
Worker -> server:  {"ready": true, "methods": [...], "env": {"name", "doc", "factory"}}   once,
                                                         after env.py loaded
                   {"fatal": {"type", "message", "traceback"}}   loading failed; the worker exits
                   {"id": N, "result": <json>}           a call returned
                   {"id": N, "error": {"kind", "type", "message", "traceback"}}   a call failed

Sessions: the Actor made at load is instance 0, which calls without "instance" use. Each client
session of a factory env (one that has an Actor class) gets its own instance K, chosen by the
server. A module env (functions only) cannot be isolated: its instances all name the same functions.

Async methods run as tasks on one event loop, which also reads the channel, so an async call costs
no thread switch; a task's first step runs as its call is read, so a call that never waits costs
no turn of the loop either. Sync methods run on a pool of threads that grows on demand, and each
thread writes its own reply. A sync method whose recent runs were all short runs on the loop's
thread itself when nothing else is in flight: handing it to a pool thread would cost more than the
call. Not while others are: a method is short until it is not (`step(wait_seconds)`), and its
first slow run there would hold up every session's messages (measured: a first 1 s step inline
made 1,024 sessions' resets wait 1 s).

On a virtual machine, waking a sleeping thread costs tens of microseconds, more than a trivial
call. So after each message the loop polls the channel for a short while (RAYFINE_WORKER_SPIN_US)
before it sleeps, and a client that calls again right away finds it awake.
"""

import asyncio
import collections.abc
import dataclasses
import enum
import importlib.util
import inspect
import json
import os
import queue
import re
import select
import selectors
import signal
import sys
import threading
import time
import traceback
import types
import typing

# The channel to the server, set by `take_channel()` in `main()`: importing this module (as its unit
# tests do) has no side effects.
CHANNEL_IN = -1
CHANNEL_OUT = -1


def take_channel():
    """Moves the channel (the stdin and stdout this process was started with) to fresh descriptors,
    points fd 0 at /dev/null and fd 1 at stderr, so that whatever the environment prints goes to
    the log and never into the channel; and leaves stop signals to the server.

    The server supervises this process: it ends it by closing the channel or with SIGKILL. Signals
    sent to the whole process group (Ctrl-C in a terminal, a group SIGTERM on cleanup) are for the
    server, which then shuts down in order. Python-level handlers, unlike SIG_IGN, are not
    inherited by programs the environment starts.
    """
    global CHANNEL_IN, CHANNEL_OUT
    CHANNEL_IN = os.dup(0)
    CHANNEL_OUT = os.dup(1)
    # Non-blocking, so that `send` can never block while it keeps the GIL. The flag belongs to the
    # pipe's write end, which the server's read end does not share; whoever else may hold it (a
    # child forked by the environment, fd 1 until it is replaced below) never writes to it.
    os.set_blocking(CHANNEL_OUT, False)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda signum, frame: None)


# Every session may hold a sync call that blocks (a sleep, a subprocess), and each of those holds a
# thread, so the server raises this for many sessions. The threads keep the platform's stack size
# (8 MiB on glibc) on purpose: a stack is an address-space reservation whose pages are committed as
# they are touched, so 4,200 sleeping threads cost about 80 MB resident at 8 MiB stacks as at 1 MiB
# ones. A smaller stack saves only address space, which matters under strict overcommit or a
# `ulimit -v`, and there a thread that cannot start is already handled (the call waits for a busy
# one). But a stack too small for the environment's code is a SIGSEGV that ends every session of
# the worker: with 1 MiB, 320 levels of recursion through `sorted(key=...)` crash CPython 3.11.
MAX_SYNC_THREADS = int(os.environ.get("RAYFINE_MAX_SYNC_THREADS", "512"))
SPIN_SECONDS = int(os.environ.get("RAYFINE_WORKER_SPIN_US", "0")) / 1e6
# A sync method runs inline only after this many runs in a row took less than INLINE_LIMIT seconds,
# and one slow run sends it back to the pool: a method that is sometimes slow stays in the pool, and
# one that turns slow stalls the loop once. RAYFINE_INLINE_SYNC=0 keeps every sync call in the pool.
# Only while at most one session is open (INLINE_MAX_INSTANCES counts instance 0 too): a stalled
# loop stalls every caller, and with two sessions or more that is another session's episode, which
# one session's slow step must never hold up. A single client loses nothing by it.
INLINE_SYNC = os.environ.get("RAYFINE_INLINE_SYNC", "1") not in ("0", "false", "no", "off")
INLINE_AFTER = 16
# An async call's task runs its first step at once, inside the dispatch, as Python 3.12's eager
# tasks do, instead of one turn of the loop later: a call that never waits (most calls to a
# trivial or cached method) is answered without that turn, which costs more than the call
# (measured: 12-16 µs on a busy VM). RAYFINE_EAGER_ASYNC=0 starts tasks as plain ones.
EAGER_ASYNC = os.environ.get("RAYFINE_EAGER_ASYNC", "1") not in ("0", "false", "no", "off")
INLINE_LIMIT = 0.001
INLINE_MAX_INSTANCES = 2
# CPython's GIL: every thread waiting for it wakes each switch interval (5 ms) to ask for it. With
# thousands of sync calls finishing at once (OpenEnv sessions all stepping a `time.sleep`), those
# wake-ups became most of the worker's CPU, in the kernel (measured: 6 s of system time in 5 s
# of wall time at 4,096 sessions), and stretched a 1 s step to 3.7 s. While that many calls are
# in flight, the interval is raised: the threads hand the GIL on when they block, as these do
# within microseconds, and a CPU-bound method may hold it up to CROWDED_SWITCH before the loop
# gets a turn, which at that load it waits for anyway.
CROWDED_THREADS = 256
CROWDED_SWITCH = 0.05
# Linux 6.16 gave each process a private futex hash table, sized for its threads but capped by its
# CPUs: on two, 16 buckets, however many threads there are. Every lock and condition a thread sleeps
# on (the GIL's, the pool's queue) is a futex in one bucket, and waking one walks its bucket past the
# sleepers of every other futex there, under the bucket's spinlock. With thousands of pool threads
# asleep on the pool's queue, a hot futex (the GIL's) that lands in their bucket makes each of its
# wake-ups walk past all of them: measured at 4,096 OpenEnv sessions, about 1 worker in 3 spent
# 2 to 40 times the CPU of the others (in futex_wake and the spinlock), all its life. So as the
# pool starts its WIDE_FUTEX_HASH_AFTER-th thread, the worker asks for FUTEX_HASH_SLOTS buckets
# (16,384 buckets cost the kernel about 1 MiB; the request waits for the old table's last user,
# which stalls the loop once, briefly); on older kernels, which share one large table among all
# processes, the request fails and nothing changes.
WIDE_FUTEX_HASH_AFTER = 64
FUTEX_HASH_SLOTS = 16384
PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, PR_FUTEX_HASH_GET_SLOTS = 78, 1, 2
_write_lock = threading.Lock()


def log(message):
    """Writes to the log; never raises, since the log's reader may be gone before us."""
    try:
        sys.stderr.write("rayfine-worker: %s\n" % message)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def send(data, hold_gil=False):
    """Writes one message (bytes ending in a newline) to the server, whole, from any thread.

    `os.write` lets go of the GIL for the system call, and a thread that lets go of it while
    others wait for it may get it back only after them: with thousands of sync calls ending at
    once (OpenEnv sessions stepping a `time.sleep`), each reply could cost its thread a wait
    behind the others, and the loop's thread, which dispatches everyone's next message, waited
    too. So a thread that writes while other threads may want the GIL (`hold_gil`) writes
    through `write_keeping_the_gil`, which keeps it; the channel is non-blocking, so that call
    cannot block. A full pipe (or an error) falls back to `os.write`, which waits for room
    without the GIL and raises as it always did. Uncontended, the ctypes call costs 0.5 µs more
    than `os.write`, so the loop's thread keeps `os.write` while the pool is idle.
    """
    with _write_lock:
        write = write_keeping_the_gil if hold_gil else None
        if write is NOT_LOADED:
            write = load_gil_keeping_write()
        if write is not None:
            if type(data) is not bytes:
                data = bytes(data)
            written = write(CHANNEL_OUT, data, len(data))
            if written == len(data):
                return
            view = memoryview(data)[max(written, 0):]
        else:
            view = memoryview(data)
        while view:
            try:
                written = os.write(CHANNEL_OUT, view)
            except BlockingIOError:
                select.select((), (CHANNEL_OUT,), ())
                continue
            view = view[written:]


def gil_keeping_write():
    """libc's write(2) through ctypes.PyDLL, which keeps the GIL during the call (ctypes.CDLL lets
    go of it); None where ctypes cannot be had (a minimal image)."""
    try:
        import ctypes

        write = ctypes.PyDLL(None).write
    except (ImportError, OSError, AttributeError):
        return None
    write.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
    write.restype = ctypes.c_ssize_t
    return write


def load_gil_keeping_write():
    """Sets `write_keeping_the_gil` on the first send that needs it: importing ctypes costs a
    worker's start 2-6 ms, which one that never starts a pool thread need not pay."""
    global write_keeping_the_gil
    write_keeping_the_gil = gil_keeping_write()
    return write_keeping_the_gil


NOT_LOADED = object()
# In `Worker.tasks` while a task runs its first step, so that a call answered then is seen to be.
STARTING = object()
# The channel is read into this one buffer. `os.read(fd, 1 MiB)` allocated a fresh 1 MiB each
# time, which glibc maps and unmaps: 19-24 µs a read on a VM (measured), against 1.5 µs for
# `os.readv` into a buffer kept for the purpose, and more than a trivial call costs. 64 KiB, a
# pipe's whole default capacity: a larger buffer would only hold more memory for every worker.
READ_BUFFER = bytearray(1 << 16)
READ_INTO = [READ_BUFFER]
READ_VIEW = memoryview(READ_BUFFER)
write_keeping_the_gil = NOT_LOADED


def send_json(obj):
    send(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


# This file's name as Python compiled it (the server may run it as /proc/self/fd/N).
WORKER_FILE = __file__


def exception_info(exc):
    tb = exc.__traceback__
    # The worker's own frames say nothing about the environment's error.
    while tb is not None and tb.tb_frame.f_code.co_filename == WORKER_FILE:
        tb = tb.tb_next
    return {
        "type": type(exc).__name__,
        "message": exception_text(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
    }


def exception_text(exc):
    """str(exc), or what can be said of it when its __str__ itself raises: the call must still be
    answered, and an exception escaping here would leave it without a reply."""
    try:
        return str(exc)
    except BaseException as failure:  # noqa: B902 - any error of the environment's __str__
        return "<str() of %s failed: %s: %s>" % (type(exc).__name__, type(failure).__name__,
                                                  object.__repr__(failure))


def finite_float(text):
    """json.loads' float hook: 1e999 is valid JSON but no number; refuse it instead of inf."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number %s is out of range" % (text if len(text) <= 40 else text[:40] + "..."))
    return value


def reject_constant(name):
    """json.loads accepts NaN and Infinity, which are not JSON."""
    raise ValueError("%s is not JSON" % name)


# One decoder for all messages: json.loads with hooks would build a new one for every call.
DECODER = json.JSONDecoder(parse_float=finite_float, parse_constant=reject_constant)


CALL_PREFIX = re.compile(rb'^\{"id":(\d+),')


def call_id_of(line):
    """The id of a call line that cannot be decoded whole. The server writes every call as
    `{"id":N,"method":...}` with the id first (src/protocol/worker.rs), so the id is read from
    that prefix; None for a line that does not start so."""
    match = CALL_PREFIX.match(line)
    return int(match.group(1)) if match else None


class NotSerializable(TypeError):
    pass


def to_jsonable(value):
    """json.dumps' fallback: turns the result types environments commonly return into JSON."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    for method in ("model_dump", "to_dict", "tolist"):
        convert = getattr(value, method, None)
        if callable(convert):
            return convert()
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise NotSerializable("result of type %s is not JSON-serializable" % type(value).__name__)


def encode_result(call_id, result):
    try:
        payload = json.dumps(result, default=to_jsonable, allow_nan=False, separators=(",", ":"))
    except NotSerializable as exc:
        return error_message(call_id, "serialize", "ResultNotSerializable", str(exc))
    except ValueError as exc:
        # json.dumps says "Out of range float values are not JSON compliant" for NaN and Infinity,
        # which deserves a word on why; its other ValueErrors (a circular reference) speak for
        # themselves.
        hint = " (NaN and Infinity have no JSON form)" if "float" in str(exc) else ""
        return error_message(call_id, "serialize", "ResultNotSerializable",
                             "result is not JSON-serializable: %s%s" % (exc, hint))
    except (TypeError, RecursionError) as exc:
        return error_message(call_id, "serialize", "ResultNotSerializable",
                             "result is not JSON-serializable: %s" % exc)
    return b'{"id":%d,"result":%s}\n' % (call_id, payload.encode())


def error_message(call_id, kind, exc_type, message, tb=""):
    body = {"id": call_id, "error": {"kind": kind, "type": exc_type, "message": message, "traceback": tb}}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def raised_message(call_id, exc):
    """The answer to a call that raised `exc`. It never raises itself: a call it failed to answer
    would leave its caller waiting, and a pool thread it escaped from would be lost to the pool."""
    try:
        info = exception_info(exc)
    except BaseException:  # noqa: B902 - formatting the traceback ran the environment's code
        info = {"type": type(exc).__name__, "message": exception_text(exc), "traceback": ""}
    return error_message(call_id, "raised", info["type"], info["message"], info["traceback"])


def null_result(call_id):
    return b'{"id":%d,"result":null}\n' % call_id


def json_type(value):
    """The JSON name of a decoded value's type, for messages about it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class Method:
    """A callable of the environment with what the server and the binder need to know of it.

    `func` is bound to instance 0; a session's instance has its own bound method (`Worker.instances`),
    but shares this: the signature and what is derived from it are worked out once, at load.
    """

    __slots__ = ("name", "func", "signature", "source", "is_async", "takes_no_arguments", "short_runs",
                 "keywords", "takes_action", "action_class", "action_may_be_null")

    def __init__(self, name, func, source):
        self.name = name
        self.func = func
        self.source = source
        self.is_async = inspect.iscoroutinefunction(func)
        try:
            self.signature = inspect.signature(func)
        except (TypeError, ValueError):
            self.signature = None
        # A call without arguments binds if no parameter needs a value; knowing that up front
        # saves the binder's work on the commonest trivial call.
        self.takes_no_arguments = self.signature is not None and all(
            p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            for p in self.signature.parameters.values())
        # How many runs in a row took less than INLINE_LIMIT (sync methods).
        self.short_runs = 0
        # The names a keyword argument may have; None when any will do (**kwargs, or no signature).
        self.keywords = keyword_names(self.signature)
        # OpenEnv's step(action): whether an `action` goes in as the keyword `action`, and the class
        # (pydantic model or dataclass) its JSON is converted to first, if the annotation names one.
        action = self.signature.parameters.get("action") if self.signature is not None else None
        self.takes_action = action is not None and action.kind in (action.POSITIONAL_OR_KEYWORD, action.KEYWORD_ONLY)
        self.action_class, self.action_may_be_null = None, True
        if self.takes_action:
            self.action_class, self.action_may_be_null = action_class(
                type_hints(func).get("action", action.annotation))

    def bind(self, args, kwargs):
        """Checks the arguments against the signature; returns an error message or None."""
        if self.signature is None or (not args and not kwargs and self.takes_no_arguments):
            return None
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            return "arguments do not bind to %s%s: %s" % (self.name, self.signature, exc)
        return None

    def adapt(self, kwargs, lenient, has_action, action):
        """Applies a call's binding options to its keyword arguments; returns (kwargs, None), or
        (None, why) when the action does not fit.

        `lenient` drops the keyword arguments the signature cannot take, as OpenEnv does with the
        extra members of a request. An `action` is passed as the keyword `action` when there is
        such a parameter, converted to its annotated class; otherwise it must be an object, whose
        members are keyword arguments (never dropped, and winning over a kwarg of the same name).
        """
        if lenient and self.keywords is not None:
            kwargs = {key: value for key, value in kwargs.items() if key in self.keywords}
        if not has_action:
            return kwargs, None
        if self.takes_action:
            if self.action_class is not None and not (action is None and self.action_may_be_null):
                try:
                    action = convert_action(self.action_class, action)
                except Exception as exc:  # noqa: B902 - the model's validation says what is wrong
                    return None, "the action is not a valid %s: %s" % (self.action_class.__name__, exc)
            kwargs = dict(kwargs)
            kwargs["action"] = action
            return kwargs, None
        if not isinstance(action, dict):
            return None, ("%s takes no `action` parameter, so the action must be a JSON object of its "
                          "keyword arguments, not %s" % (self.name, json_type(action)))
        kwargs = dict(kwargs)
        kwargs.update(action)
        return kwargs, None

    def run_sync(self, call_id, func, args, kwargs):
        """Runs a sync method (`func`, bound to the call's instance); returns the reply. Counts how
        many runs in a row were short."""
        started = time.perf_counter()
        try:
            message = encode_result(call_id, func(*args, **kwargs))
        except BaseException as exc:  # noqa: B902 - the environment's errors go to the caller
            message = raised_message(call_id, exc)
        if time.perf_counter() - started < INLINE_LIMIT:
            self.short_runs += 1
        else:
            self.short_runs = 0
        return message

    def describe(self):
        return {
            "name": self.name,
            "signature": str(self.signature) if self.signature is not None else "(...)",
            "source": self.source,
            "endpoint": "/" + self.name,
            "doc": inspect.getdoc(self.func) or "",
            "is_async": self.is_async,
            "input_schema": self.input_schema(),
        }

    def input_schema(self):
        try:
            return input_schema(self.signature, self.func)
        except Exception:  # noqa: B902 - the handshake must go out whatever the annotations are
            return {"type": "object", "properties": {}, "required": [], "additionalProperties": True}


def keyword_names(signature):
    """The names a keyword argument may have, or None if any name will do."""
    if signature is None:
        return None
    names = set()
    for param in signature.parameters.values():
        if param.kind is param.VAR_KEYWORD:
            return None
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            names.add(param.name)
    return frozenset(names)


def type_hints(obj):
    """The annotations of a function or class, resolved (with Annotated's extras where the Python
    has them). Never raises: hints only ever refine what the worker does."""
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except TypeError:
        pass  # Python 3.8 has no include_extras (or an annotation is no type: tried once more)
    except Exception:  # noqa: B902 - a name that does not resolve, whatever the annotation runs
        return hints_one_by_one(obj)
    try:
        return typing.get_type_hints(obj)
    except Exception:  # noqa: B902
        return hints_one_by_one(obj)


def hints_one_by_one(obj):
    """The annotations resolved each on its own, for when one of them does not resolve (a name
    only a type checker imports, under `from __future__ import annotations`): the others still do,
    and that one stays a string."""
    if inspect.isclass(obj):
        namespace = getattr(sys.modules.get(obj.__module__), "__dict__", {})
    else:
        namespace = getattr(inspect.unwrap(getattr(obj, "__func__", obj)), "__globals__", {})
    hints = {}
    for name, annotation in dict(getattr(obj, "__annotations__", None) or {}).items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # noqa: S307 - what get_type_hints does
            except Exception:  # noqa: B902
                pass
        hints[name] = annotation
    return hints


ANNOTATED = getattr(typing, "Annotated", None)  # Python 3.9+
UNION_TYPE = getattr(types, "UnionType", None)  # `int | None`, Python 3.10+


def strip_annotated(annotation):
    """Annotated[T, ...] -> (T, its extras); anything else -> (it, ())."""
    if ANNOTATED is not None and typing.get_origin(annotation) is ANNOTATED:
        args = typing.get_args(annotation)
        return args[0], args[1:]
    return annotation, ()


def action_class(annotation):
    """The class an `action` argument's JSON becomes: a pydantic model or a dataclass, also inside
    Optional[...] or Annotated[...], and whether null passes as None; (None, True) for any other
    annotation (the JSON goes in as it is)."""
    annotation, _ = strip_annotated(annotation)
    may_be_null = False
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (UNION_TYPE is not None and origin is UNION_TYPE):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) != 1:
            return None, True
        annotation, _ = strip_annotated(members[0])
        may_be_null = True
    if inspect.isclass(annotation) and (
            callable(getattr(annotation, "model_validate", None)) or dataclasses.is_dataclass(annotation)):
        return annotation, may_be_null
    return None, True


def convert_action(cls, value):
    if callable(getattr(cls, "model_validate", None)):
        return cls.model_validate(value)
    if not isinstance(value, dict):
        raise TypeError("a %s is made from a JSON object, not %s" % (cls.__name__, json_type(value)))
    return cls(**value)


def input_schema(signature, func):
    """The JSON Schema of a method's keyword arguments, from its signature and type hints, for
    MCP's tools/list and OpenEnv's /schema. Never raises: what cannot be described is `{}`.

    The signature is that of the bound method, so `self` is not in it.
    """
    schema = {"type": "object", "properties": {}, "required": [], "additionalProperties": signature is None}
    if signature is None:
        return schema
    hints = type_hints(func)
    definitions = {}
    for name, param in signature.parameters.items():
        if param.kind is param.VAR_POSITIONAL:
            continue
        if param.kind is param.VAR_KEYWORD:
            schema["additionalProperties"] = True
            continue
        annotation = hints.get(name, param.annotation)
        prop = {} if annotation is param.empty else dict(schema_of(annotation, definitions))
        if not jsonable(prop):
            prop = {}  # a Literal of bytes, say: the handshake must stay JSON
        description = description_of(annotation)
        if description:
            prop["description"] = description
        if param.default is param.empty:
            schema["required"].append(name)
        else:
            default = param.default.value if isinstance(param.default, enum.Enum) else param.default
            if jsonable(default):
                prop["default"] = default
        schema["properties"][name] = prop
    if definitions and jsonable(definitions):
        # pydantic's schemas refer to "#/$defs/Model": the definitions go to the document's root.
        schema["$defs"] = definitions
    return schema


def jsonable(value):
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def description_of(annotation):
    """A parameter's description, when its Annotated extras carry one: a string, or an object with
    a `description` (pydantic's Field)."""
    try:
        for extra in strip_annotated(annotation)[1]:
            if isinstance(extra, str):
                return extra
            description = getattr(extra, "description", None)
            if isinstance(description, str):
                return description
    except Exception:  # noqa: B902 - an extra is any object, and its attributes run its code
        pass
    return None


SIMPLE_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"))
TYPE_NAMES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean", "None": "null",
              "list": "array", "dict": "object"}
ARRAY_ORIGINS = (list, set, frozenset, collections.abc.Sequence, collections.abc.MutableSequence,
                 collections.abc.Set, collections.abc.MutableSet, collections.abc.Collection,
                 collections.abc.Iterable)
OBJECT_ORIGINS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def schema_of(annotation, definitions, seen=()):
    """The JSON Schema of a type annotation; `{}` (anything) for what it cannot describe.
    `definitions` collects pydantic's `$defs`; `seen` stops a dataclass that contains itself."""
    try:
        return schema_of_type(annotation, definitions, seen)
    except Exception:  # noqa: B902 - a schema is a hint; an odd annotation must not fail the load
        return {}


def schema_of_type(annotation, definitions, seen):
    annotation, _ = strip_annotated(annotation)
    if annotation is None or annotation is type(None):
        return {"type": "null"}
    if annotation is typing.Any:
        return {}
    if isinstance(annotation, str):
        # An annotation that did not resolve: the builtins' names are still understood.
        name = TYPE_NAMES.get(annotation.strip())
        return {"type": name} if name else {}
    supertype = getattr(annotation, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return schema_of(supertype, definitions, seen)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or (UNION_TYPE is not None and origin is UNION_TYPE):
        return {"anyOf": [schema_of(arg, definitions, seen) for arg in args]}
    if origin is typing.Literal:
        return {"enum": [value.value if isinstance(value, enum.Enum) else value for value in args]}
    if origin is tuple:
        if not args or args == ((),):
            return {"type": "array"}
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": schema_of(args[0], definitions, seen)}
        return {"type": "array", "prefixItems": [schema_of(arg, definitions, seen) for arg in args],
                "minItems": len(args), "maxItems": len(args)}
    if origin in ARRAY_ORIGINS:
        schema = {"type": "array"}
        if args:
            schema["items"] = schema_of(args[0], definitions, seen)
        return schema
    if origin in OBJECT_ORIGINS:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = schema_of(args[1], definitions, seen)
        return schema
    if not inspect.isclass(annotation):
        return {}
    if issubclass(annotation, enum.Enum):
        return {"enum": [member.value for member in annotation]}
    if callable(getattr(annotation, "model_json_schema", None)):
        schema = dict(annotation.model_json_schema())
        definitions.update(schema.pop("$defs", {}))
        return schema
    if dataclasses.is_dataclass(annotation):
        return dataclass_schema(annotation, definitions, seen)
    for klass, name in SIMPLE_TYPES:
        if issubclass(annotation, klass):
            return {"type": name}
    if annotation in ARRAY_ORIGINS or issubclass(annotation, (list, tuple, set, frozenset)):
        return {"type": "array"}
    if annotation in OBJECT_ORIGINS or issubclass(annotation, dict):
        return {"type": "object"}
    return {}


def dataclass_schema(cls, definitions, seen):
    if cls in seen:
        return {"type": "object"}
    seen = seen + (cls,)
    hints = type_hints(cls)
    properties = {}
    required = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        prop = dict(schema_of(hints.get(field.name, field.type), definitions, seen))
        if field.default is not dataclasses.MISSING:
            default = field.default.value if isinstance(field.default, enum.Enum) else field.default
            if jsonable(default):
                prop["default"] = default
        elif field.default_factory is dataclasses.MISSING:
            required.append(field.name)
        properties[field.name] = prop
    return {"type": "object", "title": cls.__name__, "properties": properties, "required": required,
            "additionalProperties": False}


def defined_in(obj, module_name):
    return getattr(obj, "__module__", None) == module_name


class Environment:
    """What env.py offers: its methods, and for a factory env its Actor class and the Actor made at
    load, which is instance 0.

    Callable are the public functions defined by env.py itself, and the public methods of its
    Actor (defined in env.py's classes). Imported functions, classes and names starting with '_'
    never are.
    """

    def __init__(self, module):
        self.module = module
        actor_class = vars(module).get("Actor")
        self.actor_class = actor_class if inspect.isclass(actor_class) else None
        self.methods = {}
        for name, obj in vars(module).items():
            if not name.startswith("_") and inspect.isfunction(obj) and defined_in(obj, module.__name__):
                self.methods[name] = Method(name, obj, "module")
        if self.actor_class is not None:
            actor = self.actor_class()
            for name in self.actor_method_names():
                self.methods[name] = Method(name, getattr(actor, name), "Actor")
        # The Actor's methods, which a session's instance binds to itself.
        self.actor_methods = [name for name, method in self.methods.items() if method.source == "Actor"]

    def actor_method_names(self):
        names = []
        for klass in reversed(self.actor_class.__mro__):
            if not defined_in(klass, self.module.__name__):
                continue
            for name, attr in vars(klass).items():
                if name.startswith("_"):
                    continue
                if isinstance(attr, (staticmethod, classmethod)):
                    attr = attr.__func__
                if inspect.isfunction(attr) and name not in names:
                    names.append(name)
        return names

    def instance_zero(self):
        """Instance 0's methods, by name: those bound at load."""
        return {name: self.methods[name].func for name in self.actor_methods}

    def new_instance(self):
        """A new Actor's methods, by name; runs the constructor (which may be slow, or raise)."""
        actor = self.actor_class()
        return {name: getattr(actor, name) for name in self.actor_methods}

    def describe(self):
        """The handshake's "env": a name, a description, and whether sessions get instances."""
        return {"name": self.name(), "doc": self.doc(), "factory": self.actor_class is not None}

    def name(self):
        for holder, attributes in ((self.actor_class, ("NAME", "name")), (self.module, ("NAME",))):
            for attribute in attributes:
                value = getattr(holder, attribute, None) if holder is not None else None
                if isinstance(value, str) and value.strip():
                    return value.strip()
        path = getattr(self.module, "__file__", None)
        folder = os.path.basename(os.path.dirname(os.path.abspath(path))) if path else ""
        return folder or "env"

    def doc(self):
        for holder in (self.module, self.actor_class):
            text = getattr(holder, "__doc__", None) if holder is not None else None
            if isinstance(text, str) and text.strip():
                return inspect.cleandoc(text)
        return ""


def discover_methods(module):
    """The callable methods of env.py, by name (see `Environment`)."""
    return Environment(module).methods


def load_env(path):
    path = os.path.abspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "env.py")
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location("env", path)
    if spec is None or spec.loader is None:
        raise ImportError("cannot load %s" % path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["env"] = module
    spec.loader.exec_module(module)
    return module


def futex_hash_slots(slots=None):
    """This process's private futex hash: asks for `slots` buckets if given, then returns how many
    it has: 0 where it has none but uses the kernel's shared table (a single thread so far, a
    kernel built without private hashes, or a process that asked for the shared one). None where
    it cannot be asked (Linux before 6.16, no ctypes in a minimal image) or the kernel refused the
    request; `ctypes.get_errno()` then says why."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    word = ctypes.c_ulong
    if slots is not None and prctl(PR_FUTEX_HASH, word(PR_FUTEX_HASH_SET_SLOTS), word(slots), word(0), word(0)) != 0:
        return None
    have = prctl(PR_FUTEX_HASH, word(PR_FUTEX_HASH_GET_SLOTS), word(0), word(0), word(0))
    return have if have >= 0 else None


def widen_futex_hash():
    """Gives the process FUTEX_HASH_SLOTS futex buckets, unless it has that many or shares the
    kernel's table (see WIDE_FUTEX_HASH_AFTER)."""
    have = futex_hash_slots()
    if have is None or have == 0 or have >= FUTEX_HASH_SLOTS:
        return
    if futex_hash_slots(FUTEX_HASH_SLOTS) is None:
        import ctypes

        log("could not widen the futex hash from %d buckets (%s); many threads may cost more CPU"
            % (have, os.strerror(ctypes.get_errno())))


class SyncPool:
    """Threads that run sync methods; grows while every thread is busy, up to MAX_SYNC_THREADS.

    A thread may fail to start (the container's pids limit, memory): the call then waits for a
    thread of the pool, or, when the pool has none, is refused by `submit` for the caller to run
    another way. No call is ever left without an answer.
    """

    def __init__(self):
        self.jobs = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.threads = 0
        self.idle = 0
        # Whether CROWDED_THREADS calls or more are in flight, and the interval to go back to.
        self.crowded = False
        self.switch = sys.getswitchinterval()

    def submit(self, call_id, method, func, args, kwargs):
        """Hands the call to the pool; False when no thread exists nor can be started."""
        job = (call_id, method, func, args, kwargs)
        with self.lock:
            grow = self.idle == 0 and self.threads < MAX_SYNC_THREADS
            if grow:
                self.threads += 1
            else:
                self.idle -= 1
            if not self.crowded and self.threads - self.idle >= CROWDED_THREADS:
                self.crowded = True
                sys.setswitchinterval(CROWDED_SWITCH)
        if grow:
            if self.threads == WIDE_FUTEX_HASH_AFTER:
                widen_futex_hash()
            try:
                threading.Thread(target=self.run, args=(job,), name="rayfine-sync", daemon=True).start()
                return True
            except RuntimeError as exc:
                with self.lock:
                    self.threads -= 1
                    if self.threads == 0:
                        log("cannot start a thread for `%s` (%s)" % (method.name, exc))
                        return False
                    # Queued: the next thread of the pool to finish takes it.
                    self.idle -= 1
                log("cannot start a thread for `%s` (%s); it waits for a busy one" % (method.name, exc))
        self.jobs.put(job)
        return True

    def busy(self):
        """How many calls the pool holds, running or queued (idle goes negative while calls wait)."""
        return self.threads - self.idle

    def run(self, job):
        while True:
            call_id, method, func, args, kwargs = job
            send(method.run_sync(call_id, func, args, kwargs), True)
            with self.lock:
                self.idle += 1
                if self.crowded and self.threads - self.idle < CROWDED_THREADS // 4:
                    self.crowded = False
                    sys.setswitchinterval(self.switch)
            job = self.jobs.get()


class SpinningSelector(selectors.DefaultSelector):
    """A selector that polls for a while before it sleeps, so that a message arriving meanwhile
    costs no wake-up.

    It adapts like the kernel's haltpoll: after a wait that a poll of SPIN_SECONDS would have
    caught, it polls that long again; after a longer one it halves its budget, down to none. A
    client that calls every few milliseconds therefore costs no polling after a few calls.
    """

    def __init__(self):
        super().__init__()
        self.may_spin = lambda: True
        self.budget = SPIN_SECONDS

    def select(self, timeout=None):
        if SPIN_SECONDS <= 0 or (timeout is not None and timeout <= 0):
            return super().select(timeout)
        started = time.perf_counter()
        remaining = timeout
        if self.budget > 0 and self.may_spin():
            budget = self.budget if timeout is None else min(self.budget, timeout)
            while True:
                ready = super().select(0)
                if ready:
                    self.budget = SPIN_SECONDS
                    return ready
                spent = time.perf_counter() - started
                if spent >= budget:
                    break
            remaining = None if timeout is None else max(0.0, timeout - spent)
        ready = super().select(remaining)
        if ready:
            waited = time.perf_counter() - started
            if waited <= SPIN_SECONDS:
                self.budget = SPIN_SECONDS
            elif self.budget > SPIN_SECONDS / 4:
                self.budget /= 2
            else:
                self.budget = 0
        return ready


class Opening:
    """The pool's job that makes session instance K: an Actor constructor may be slow, so it runs
    where a sync call would, never on the loop's thread (unless no thread can be had at all).

    The thread that ran it registers the instance (under `Worker.instances_lock`) and answers, as
    a sync call's thread does: handing that to the loop's thread would cost every session a
    wake-up of the loop (measured at 4,096 sessions, 6 bench runs each way, interleaved: the
    worker's CPU in a repetition 0.56-0.83 s without it, against 0.65-1.02 s with it).
    Only when a close came meanwhile does the loop's thread take over (`Worker.opened`), since
    the close runs there."""

    __slots__ = ("worker", "key")
    name = "Actor()"  # in the pool's log lines

    def __init__(self, worker, key):
        self.worker = worker
        self.key = key

    def run_sync(self, call_id, func, args, kwargs):
        try:
            methods, failure = self.worker.env.new_instance(), None
        except BaseException as exc:  # noqa: B902 - a constructor's error goes to the caller
            methods, failure = None, raised_message(call_id, exc)
        worker = self.worker
        with worker.instances_lock:
            if not worker.opening[self.key]:
                del worker.opening[self.key]
                if failure is None:
                    worker.instances[self.key] = methods
                return failure or null_result(call_id)  # sent by the pool, keeping the GIL
        worker.loop.call_soon_threadsafe(worker.opened, call_id, self.key, methods, failure)
        return b""  # the loop's thread answers, then carries out the closes


def returning_none(func, is_async):
    """`func` made to return None: a close answers null, whatever the Actor's close() returns."""
    if is_async:
        async def closing():
            await func()
    else:
        def closing():
            func()
    return closing


EAGER_TASKS_BUILT_IN = sys.version_info >= (3, 12)


def start_task(loop, coro):
    """A task for `coro` on `loop`, its first step already run when EAGER_ASYNC allows it.

    Python 3.12 has this built in (`eager_start`). On 3.11 and before, the step the new task
    scheduled (`call_soon`, at the end of the loop's ready queue) is taken back and run here: it
    is the same step the loop would run, in the task's own context and as the current task, so
    `asyncio.current_task()` and `asyncio.timeout()` work in it as they always did. The step is
    found by its task, not by its place (another thread's `call_soon_threadsafe` may have come in
    behind it). Only where nothing else is running as a task (a step entered from inside one
    would be refused), and only for the loop's own tasks: under a task factory the environment
    set, tasks start as plain ones."""
    if not EAGER_ASYNC or loop.get_task_factory() is not None:
        return loop.create_task(coro)
    if EAGER_TASKS_BUILT_IN:
        return asyncio.Task(coro, loop=loop, eager_start=True)
    task = loop.create_task(coro)
    if asyncio.current_task(loop) is not None:
        return task
    ready = loop._ready
    for step in reversed(ready):
        if getattr(step._callback, "__self__", None) is task:
            ready.remove(step)
            step._run()
            break
    return task


class Worker:
    def __init__(self, loop, env):
        self.loop = loop
        self.env = env
        self.methods = env.methods
        # Session instances by the server's number: each an Actor's methods by name, bound to it
        # ({} for a module env, whose instances all use the module's functions).
        self.instances = {0: env.instance_zero()}
        # Instances whose constructor is running, with the ids of closes that wait for it.
        self.opening = {}
        # Held while `instances` and `opening` change together: an Opening's thread registers
        # its instance while the loop's thread may be closing it. Never held across a call.
        self.instances_lock = threading.Lock()
        self.pool = SyncPool()
        self.tasks = {}
        self.buffer = bytearray()
        # The last call came while others were in flight on the server: no polling after it.
        self.concurrent = False

    def on_readable(self):
        try:
            read = os.readv(CHANNEL_IN, READ_INTO)
        except BlockingIOError:
            return
        if not read:
            try:
                log("server closed the channel; exiting")
            finally:
                if os.getpgrp() == os.getpid():
                    # The server started us as the leader of our own group (it may have been
                    # killed before it could kill the group): take what the environment started.
                    os.killpg(0, signal.SIGKILL)
                os._exit(0)
        buffer = self.buffer
        buffer += READ_VIEW[:read]
        last = buffer.rfind(b"\n")
        if last < 0:
            return
        # The whole lines leave the buffer before any is dispatched: an async call's first step
        # runs inside `dispatch`, and one that runs the loop itself (`nest_asyncio`) would come
        # back here and must not find them again.
        lines = bytes(buffer[:last])
        del buffer[:last + 1]
        for line in lines.split(b"\n"):
            self.dispatch(line)

    def dispatch(self, line):
        try:
            message = DECODER.decode(line.decode())
        except (ValueError, RecursionError) as exc:
            # A call whose arguments cannot be decoded is still answered: its id comes first.
            call_id = call_id_of(line)
            if call_id is None:
                log("dropped a malformed message: %s" % exc)
                return
            send(error_message(call_id, "bad_request", "BadRequest", "arguments cannot be decoded: %s" % exc))
            return
        if "cancel" in message:
            task = self.tasks.pop(message["cancel"], None)
            if task is not None and task is not STARTING:
                task.cancel()
            return
        call_id = message["id"]
        name = message.get("method")
        method = self.methods.get(name)
        if method is None:
            if name is None and ("open" in message or "close" in message):
                self.manage(call_id, message)
            else:
                send(error_message(call_id, "not_found", "MethodNotFound", "no method named %r" % name))
            return
        self.concurrent = "concurrent" in message
        args = message.get("args") or []
        kwargs = message.get("kwargs") or {}
        func = method.func
        # A plain call (instance 0, strict binding) pays these three lookups and nothing more.
        if "instance" in message or "lenient" in message or "action" in message:
            call = self.options(call_id, method, message, kwargs)
            if call is None:
                return
            func, kwargs = call
        problem = method.bind(args, kwargs)
        if problem is not None:
            send(error_message(call_id, "args", "InvalidArguments", problem))
            return
        # The rest is `start`, written out: calling it would cost a trivial call about 1%.
        if method.is_async:
            self.start_async(call_id, func, args, kwargs)
        elif (INLINE_SYNC and method.short_runs >= INLINE_AFTER and not self.tasks
              and self.pool.threads == self.pool.idle  # pool.busy() == 0, without the call
              and len(self.instances) <= INLINE_MAX_INSTANCES):
            send(self.run_inline(call_id, method, func, args, kwargs))
        elif not self.pool.submit(call_id, method, func, args, kwargs):
            # No thread can be had: running it here stalls other calls until it returns, but it
            # is answered.
            send(self.run_inline(call_id, method, func, args, kwargs))

    def start(self, call_id, method, func, args, kwargs):
        """Runs a bound call where its kind runs: a task, inline, or on the pool."""
        if method.is_async:
            self.start_async(call_id, func, args, kwargs)
        elif (INLINE_SYNC and method.short_runs >= INLINE_AFTER and not self.tasks
              and self.pool.threads == self.pool.idle and len(self.instances) <= INLINE_MAX_INSTANCES):
            send(self.run_inline(call_id, method, func, args, kwargs))
        elif not self.pool.submit(call_id, method, func, args, kwargs):
            send(self.run_inline(call_id, method, func, args, kwargs))

    def start_async(self, call_id, func, args, kwargs):
        """Starts an async call as a task, registered in `tasks` unless its first step answered it."""
        tasks = self.tasks
        tasks[call_id] = STARTING
        try:
            task = start_task(self.loop, self.run_async(call_id, func, args, kwargs))
        except BaseException:
            tasks.pop(call_id, None)
            raise
        if call_id in tasks:  # not answered in its first step
            tasks[call_id] = task

    def options(self, call_id, method, message, kwargs):
        """A call's optional members: the instance it runs on, lenient binding, the action.
        Returns (the method bound to the instance, the keyword arguments), or None once the
        error is sent."""
        func = method.func
        key = message.get("instance", 0)
        if key != 0 or type(key) is not int:
            if type(key) is not int:
                send(error_message(call_id, "bad_request", "BadRequest",
                                   "instance must be an integer, not %s" % json_type(key)))
                return None
            methods = self.instances.get(key)
            if methods is None:
                send(error_message(call_id, "no_instance", "InstanceNotFound",
                                   "no session instance %d (it was closed or never opened)" % key))
                return None
            func = methods.get(method.name, func)
        lenient = message.get("lenient") is True
        has_action = "action" in message
        if lenient or has_action:
            kwargs, problem = method.adapt(kwargs, lenient, has_action, message.get("action"))
            if problem is not None:
                send(error_message(call_id, "args", "InvalidArguments", problem))
                return None
        return func, kwargs

    def manage(self, call_id, message):
        """`{"id":N,"open":K}` and `{"id":N,"close":K}`: a session's instance begins or ends."""
        opening = "open" in message
        key = message["open"] if opening else message["close"]
        if type(key) is not int or (opening and key <= 0):
            send(error_message(call_id, "bad_request", "BadRequest",
                               "an instance is named by a positive integer, not %s" % json.dumps(key)))
        elif opening:
            self.open(call_id, key)
        else:
            self.close(call_id, key)

    def open(self, call_id, key):
        with self.instances_lock:
            taken = key in self.instances or key in self.opening
            if not taken:
                if self.env.actor_class is None:
                    self.instances[key] = {}
                else:
                    self.opening[key] = []
        if taken:
            send(error_message(call_id, "bad_request", "BadRequest", "instance %d is already open" % key))
            return
        if self.env.actor_class is None:
            send(null_result(call_id))
            return
        job = Opening(self, key)
        if not self.pool.submit(call_id, job, None, (), {}):
            send(self.run_inline(call_id, job, None, (), {}))

    def opened(self, call_id, key, methods, failure):
        """On the loop's thread, after instance `key`'s constructor ran while a close came:
        registers it (or says why not), then carries out the closes that came meanwhile."""
        with self.instances_lock:
            waiting = self.opening.pop(key, ())
            if failure is None:
                self.instances[key] = methods
        send(failure or null_result(call_id))
        for close_id in waiting:
            self.close(close_id, key)

    def close(self, call_id, key):
        """Forgets instance `key`, then runs its Actor's close(), if there is one. Closing an
        unknown instance does nothing: a close may be repeated, and instance 0 lives on."""
        with self.instances_lock:
            if key in self.opening:
                self.opening[key].append(call_id)
                return
            methods = self.instances.pop(key, None) if key != 0 else None
        close = methods.get("close") if methods else None
        if close is None:
            send(null_result(call_id), self.pool.busy() != 0)
            return
        method = self.methods["close"]
        self.start(call_id, method, returning_none(close, method.is_async), (), {})

    def run_inline(self, call_id, method, func, args, kwargs):
        """Runs a sync call on the loop's thread, which it sees as a plain thread: with no
        running loop, so asyncio.run() inside it works as it does on a pool thread."""
        asyncio.events._set_running_loop(None)
        try:
            return method.run_sync(call_id, func, args, kwargs)
        finally:
            asyncio.events._set_running_loop(self.loop)
            asyncio.set_event_loop(self.loop)

    def may_spin(self):
        """Poll only while nothing is in flight, when the next message is likely a caller's next
        call. Under load (the server marks a call sent while others were in flight "concurrent"),
        messages come often enough without it, and polling takes a core from the server and
        the callers; a sync call running on a pool thread needs the lock the poller would hold."""
        return not self.concurrent and not self.tasks and self.pool.busy() == 0

    async def run_async(self, call_id, func, args, kwargs):
        try:
            result = await func(*args, **kwargs)
            message = encode_result(call_id, result)
        except asyncio.CancelledError as exc:
            # The server's cancel takes the task out of `tasks` first, and wants no answer. A
            # cancellation of the environment's own (awaiting a future that something else
            # cancelled) is an error of the call like any other, and must be answered: the
            # caller would otherwise wait for ever.
            if self.tasks.pop(call_id, None) is None:
                return
            message = raised_message(call_id, exc)
        except BaseException as exc:  # noqa: B902
            message = raised_message(call_id, exc)
        self.tasks.pop(call_id, None)
        # While pool threads run, keeping the GIL through the write keeps the loop's turn.
        send(message, self.pool.busy() != 0)


def interpreter_info(environ):
    """The handshake's "interpreter": `sys.executable` and the variables as this process started,
    for the server to run the interpreter directly next time (see `Interpreter` in the server).
    None when a variable is not text the server can read (bytes that are not UTF-8), and when the
    interpreter was started with options of its own (a wrapper's `-I`, `-X ...`): the server
    would start it without them, which is not the same interpreter. The resource limits go along
    ("limits"), so that the server can tell a wrapper that set one (`ulimit -v` before `exec`),
    which it would lose by skipping the wrapper."""
    started_as = getattr(sys, "orig_argv", None)
    if not sys.executable or started_as is None or started_as[1:] != sys.argv:
        return None
    try:
        for key, value in environ.items():
            key.encode("utf-8")
            value.encode("utf-8")
        sys.executable.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return {"executable": sys.executable, "environ": environ, "limits": resource_limits()}


def resource_limits():
    """[[resource, soft, hard], ...] for every limit this platform has, by the C constant's
    number; None for unlimited."""
    import resource  # only here: the handshake is its one use

    numbers = sorted({getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")})
    limits = []
    for number in numbers:
        try:
            soft, hard = resource.getrlimit(number)
        except (OSError, ValueError):
            continue
        limits.append([number] + [None if value == resource.RLIM_INFINITY else value for value in (soft, hard)])
    return limits


def main():
    # Before anything, env.py above all, can change a variable.
    start_environ = dict(os.environ)
    take_channel()
    # multiprocessing's spawn and forkserver children re-run the main module from its file when
    # it has one; this one is not theirs to run (and /proc/self/fd/N is not theirs to open).
    sys.modules["__main__"].__dict__.pop("__file__", None)
    env_path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("RAYFINE_ENV_PATH", "/app/env.py")
    selector = SpinningSelector()
    loop = asyncio.SelectorEventLoop(selector)
    asyncio.set_event_loop(loop)
    try:
        env = Environment(load_env(env_path))
    except BaseException as exc:  # noqa: B902 - a failed load is reported, whatever it was
        info = exception_info(exc)
        log("loading %s failed: %s: %s" % (env_path, info["type"], info["message"]))
        send_json({"fatal": info})
        os._exit(3)
    os.set_blocking(CHANNEL_IN, False)
    worker = Worker(loop, env)
    selector.may_spin = worker.may_spin
    loop.add_reader(CHANNEL_IN, worker.on_readable)
    methods = [m.describe() for m in env.methods.values()]
    send_json({"ready": True, "methods": methods, "env": env.describe(), "interpreter": interpreter_info(start_environ)})
    loop.run_forever()


if __name__ == "__main__":
    main()
