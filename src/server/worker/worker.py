"""Rayfine's Python worker: loads an environment's env.py and runs its methods for rayfine-server.

Standard library only, Python 3.8 or newer, so an image needs nothing but `python3`.

The server talks to this process over a private channel made of the stdin and stdout it was started
with: one JSON object per line each way, in the shapes src/protocol/worker.rs documents (the error
kinds below are its `FailureKind` names). At start-up the worker moves that channel to fresh file
descriptors and points fd 0 at /dev/null and fd 1 at stderr, so whatever the environment prints goes
to the log and can never corrupt the channel.

Server -> worker:  {"id": N, "method": "...", "args": [...], "kwargs": {...}}   a call
                   {"cancel": N}                                               cancel an async call
Worker -> server:  {"ready": true, "methods": [...]}     once, after env.py loaded
                   {"fatal": {"type", "message", "traceback"}}   loading failed; the worker exits
                   {"id": N, "result": <json>}           a call returned
                   {"id": N, "error": {"kind", "type", "message", "traceback"}}   a call failed

Async methods run as tasks on one event loop, which also reads the channel, so an async call costs
no thread switch. Sync methods run on a pool of threads that grows on demand, and each thread writes
its own reply. A sync method whose recent runs were all short runs on the loop's thread itself when
nothing else is in flight: handing it to a pool thread would cost more than the call.

On a virtual machine, waking a sleeping thread costs tens of microseconds, more than a trivial
call. So after each message the loop polls the channel for a short while (RAYFINE_WORKER_SPIN_US)
before it sleeps, and a client that calls again right away finds it awake.
"""

import asyncio
import dataclasses
import enum
import importlib.util
import inspect
import json
import os
import queue
import re
import selectors
import signal
import sys
import threading
import time
import traceback

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


MAX_SYNC_THREADS = int(os.environ.get("RAYFINE_MAX_SYNC_THREADS", "512"))
SPIN_SECONDS = int(os.environ.get("RAYFINE_WORKER_SPIN_US", "0")) / 1e6
# A sync method runs inline only after this many runs in a row took less than INLINE_LIMIT seconds,
# and one slow run sends it back to the pool: a method that is sometimes slow stays in the pool, and
# one that turns slow stalls the loop once. RAYFINE_INLINE_SYNC=0 keeps every sync call in the pool.
INLINE_SYNC = os.environ.get("RAYFINE_INLINE_SYNC", "1") not in ("0", "false", "no", "off")
INLINE_AFTER = 16
INLINE_LIMIT = 0.001
_write_lock = threading.Lock()


def log(message):
    """Writes to the log; never raises, since the log's reader may be gone before us."""
    try:
        sys.stderr.write("rayfine-worker: %s\n" % message)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def send(data):
    """Writes one message (bytes ending in a newline) to the server, whole, from any thread."""
    view = memoryview(data)
    with _write_lock:
        while view:
            written = os.write(CHANNEL_OUT, view)
            view = view[written:]


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
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
    }


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
        return error_message(
            call_id, "serialize", "ResultNotSerializable",
            "result is not JSON-serializable: %s (NaN and Infinity have no JSON form)" % exc)
    except (TypeError, RecursionError) as exc:
        return error_message(call_id, "serialize", "ResultNotSerializable",
                             "result is not JSON-serializable: %s" % exc)
    return b'{"id":%d,"result":%s}\n' % (call_id, payload.encode())


def error_message(call_id, kind, exc_type, message, tb=""):
    body = {"id": call_id, "error": {"kind": kind, "type": exc_type, "message": message, "traceback": tb}}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def raised_message(call_id, exc):
    info = exception_info(exc)
    return error_message(call_id, "raised", info["type"], info["message"], info["traceback"])


class Method:
    """A callable of the environment with what the server and the binder need to know of it."""

    __slots__ = ("name", "func", "signature", "source", "is_async", "takes_no_arguments", "short_runs")

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

    def bind(self, args, kwargs):
        """Checks the arguments against the signature; returns an error message or None."""
        if self.signature is None or (not args and not kwargs and self.takes_no_arguments):
            return None
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            return "arguments do not bind to %s%s: %s" % (self.name, self.signature, exc)
        return None

    def run_sync(self, call_id, args, kwargs):
        """Runs a sync method; returns the reply. Counts how many runs in a row were short."""
        started = time.perf_counter()
        try:
            message = encode_result(call_id, self.func(*args, **kwargs))
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
        }


def defined_in(obj, module_name):
    return getattr(obj, "__module__", None) == module_name


def discover_methods(module):
    """Public functions defined by env.py itself, and the public methods of its Actor.

    Imported functions, classes and names starting with '_' are never callable.
    """
    methods = {}
    for name, obj in vars(module).items():
        if not name.startswith("_") and inspect.isfunction(obj) and defined_in(obj, module.__name__):
            methods[name] = Method(name, obj, "module")
    actor_class = vars(module).get("Actor")
    if inspect.isclass(actor_class):
        actor = actor_class()
        for klass in reversed(actor_class.__mro__):
            if not defined_in(klass, module.__name__):
                continue
            for name, attr in vars(klass).items():
                if name.startswith("_"):
                    continue
                if isinstance(attr, (staticmethod, classmethod)):
                    attr = attr.__func__
                if inspect.isfunction(attr):
                    methods[name] = Method(name, getattr(actor, name), "Actor")
    return methods


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

    def submit(self, call_id, method, args, kwargs):
        """Hands the call to the pool; False when no thread exists nor can be started."""
        job = (call_id, method, args, kwargs)
        with self.lock:
            grow = self.idle == 0 and self.threads < MAX_SYNC_THREADS
            if grow:
                self.threads += 1
            else:
                self.idle -= 1
        if grow:
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
            call_id, method, args, kwargs = job
            send(method.run_sync(call_id, args, kwargs))
            with self.lock:
                self.idle += 1
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


class Worker:
    def __init__(self, loop, methods):
        self.loop = loop
        self.methods = methods
        self.pool = SyncPool()
        self.tasks = {}
        self.buffer = bytearray()

    def on_readable(self):
        try:
            chunk = os.read(CHANNEL_IN, 1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            try:
                log("server closed the channel; exiting")
            finally:
                if os.getpgrp() == os.getpid():
                    # The server started us as the leader of our own group (it may have been
                    # killed before it could kill the group): take what the environment started.
                    os.killpg(0, signal.SIGKILL)
                os._exit(0)
        self.buffer += chunk
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end < 0:
                break
            self.dispatch(bytes(self.buffer[start:end]))
            start = end + 1
        del self.buffer[:start]

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
            if task is not None:
                task.cancel()
            return
        call_id = message["id"]
        name = message.get("method")
        method = self.methods.get(name)
        if method is None:
            send(error_message(call_id, "not_found", "MethodNotFound", "no method named %r" % name))
            return
        args = message.get("args") or []
        kwargs = message.get("kwargs") or {}
        problem = method.bind(args, kwargs)
        if problem is not None:
            send(error_message(call_id, "args", "InvalidArguments", problem))
            return
        if method.is_async:
            task = self.loop.create_task(self.run_async(call_id, method, args, kwargs))
            self.tasks[call_id] = task
        elif INLINE_SYNC and method.short_runs >= INLINE_AFTER and not self.tasks and self.pool.busy() == 0:
            send(self.run_inline(call_id, method, args, kwargs))
        elif not self.pool.submit(call_id, method, args, kwargs):
            # No thread can be had: running it here stalls other calls until it returns, but it
            # is answered.
            send(self.run_inline(call_id, method, args, kwargs))

    def run_inline(self, call_id, method, args, kwargs):
        """Runs a sync call on the loop's thread, which it sees as a plain thread: with no
        running loop, so asyncio.run() inside it works as it does on a pool thread."""
        asyncio.events._set_running_loop(None)
        try:
            return method.run_sync(call_id, args, kwargs)
        finally:
            asyncio.events._set_running_loop(self.loop)
            asyncio.set_event_loop(self.loop)

    def may_spin(self):
        """Poll only while nothing is in flight, when the next message is likely a caller's next
        call. Under load, messages come often enough without it, and a sync call running on a
        pool thread needs the lock the poller would hold."""
        return not self.tasks and self.pool.busy() == 0

    async def run_async(self, call_id, method, args, kwargs):
        try:
            result = await method.func(*args, **kwargs)
            message = encode_result(call_id, result)
        except asyncio.CancelledError:
            self.tasks.pop(call_id, None)
            return
        except BaseException as exc:  # noqa: B902
            message = raised_message(call_id, exc)
        self.tasks.pop(call_id, None)
        send(message)


def main():
    take_channel()
    # multiprocessing's spawn and forkserver children re-run the main module from its file when
    # it has one; this one is not theirs to run (and /proc/self/fd/N is not theirs to open).
    sys.modules["__main__"].__dict__.pop("__file__", None)
    env_path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("RAYFINE_ENV_PATH", "/app/env.py")
    selector = SpinningSelector()
    loop = asyncio.SelectorEventLoop(selector)
    asyncio.set_event_loop(loop)
    try:
        methods = discover_methods(load_env(env_path))
    except BaseException as exc:  # noqa: B902 - a failed load is reported, whatever it was
        info = exception_info(exc)
        log("loading %s failed: %s: %s" % (env_path, info["type"], info["message"]))
        send_json({"fatal": info})
        os._exit(3)
    os.set_blocking(CHANNEL_IN, False)
    worker = Worker(loop, methods)
    selector.may_spin = worker.may_spin
    loop.add_reader(CHANNEL_IN, worker.on_readable)
    send_json({"ready": True, "methods": [m.describe() for m in methods.values()]})
    loop.run_forever()


if __name__ == "__main__":
    main()
