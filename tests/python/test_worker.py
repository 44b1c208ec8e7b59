"""Unit tests of the worker's parts: argument binding and its options (lenient, action), result
conversion, method discovery, parameter schemas, the handshake's env block, the call-id rule, the
sync pool when no thread can be started, and session instances (open, close, calls on them); and
end-to-end tests that run worker.py as the server does. Standard library only; run by `cargo test`
(tests/it/python_worker.rs) as `python3 -m unittest discover -s tests/python`."""

import asyncio
import dataclasses
import enum
import importlib.util
import json
import os
import select
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
import unittest
from typing import Dict, List, Literal, Optional, Tuple, Union

WORKER_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "src", "server", "worker", "worker.py")


def load_worker():
    spec = importlib.util.spec_from_file_location("rayfine_worker", WORKER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Whatever sys.stdin is before the import (a test runner may have put its own there, as pytest
# does): importing the worker must leave it alone.
STDIN_BEFORE_IMPORT = sys.stdin
worker = load_worker()


def env_module(source):
    """A module made from `source`, as env.py would be loaded."""
    module = types.ModuleType("env")
    exec(compile(source, "env.py", "exec"), module.__dict__)
    return module


class ImportTest(unittest.TestCase):
    def test_importing_the_worker_touches_no_descriptor_or_signal(self):
        self.assertEqual(worker.CHANNEL_IN, -1)
        self.assertEqual(worker.CHANNEL_OUT, -1)
        self.assertIs(sys.stdin, STDIN_BEFORE_IMPORT)


class BindTest(unittest.TestCase):
    def setUp(self):
        module = env_module("def add(a, b=1):\n    return a + b\n\ndef ping():\n    return 'pong'\n")
        self.methods = worker.discover_methods(module)

    def test_arguments_that_fit_bind(self):
        self.assertIsNone(self.methods["add"].bind([1], {"b": 2}))
        self.assertIsNone(self.methods["ping"].bind([], {}))

    def test_arguments_that_do_not_fit_say_why_with_the_signature(self):
        problem = self.methods["add"].bind([], {"c": 3})
        self.assertIn("add(a, b=1)", problem)
        self.assertIn("missing a required argument", problem)


class ResultTest(unittest.TestCase):
    def decode(self, message):
        return json.loads(message)

    def test_common_result_types_become_json(self):
        @dataclasses.dataclass
        class Point:
            x: int
            y: int

        class Colour(enum.Enum):
            RED = "red"

        message = self.decode(worker.encode_result(7, {"p": Point(1, 2), "s": {3}, "c": Colour.RED}))
        self.assertEqual(message, {"id": 7, "result": {"p": {"x": 1, "y": 2}, "s": [3], "c": "red"}})

    def test_unserializable_results_are_errors_naming_the_type(self):
        message = self.decode(worker.encode_result(8, object()))
        self.assertEqual(message["error"]["kind"], "serialize")
        self.assertIn("object", message["error"]["message"])

    def test_nan_has_no_json_form(self):
        message = self.decode(worker.encode_result(9, float("nan")))
        self.assertEqual(message["error"]["kind"], "serialize")
        self.assertIn("NaN", message["error"]["message"])

    def test_a_circular_result_says_so_without_the_nan_hint(self):
        loop = []
        loop.append(loop)
        message = self.decode(worker.encode_result(10, loop))["error"]["message"]
        self.assertIn("Circular reference", message)
        self.assertNotIn("NaN", message)

    def test_numbers_no_float_holds_are_refused_on_the_way_in(self):
        with self.assertRaises(ValueError):
            worker.DECODER.decode('{"id":1,"args":[1e999]}')
        with self.assertRaises(ValueError):
            worker.DECODER.decode('{"id":1,"args":[NaN]}')


class DiscoveryTest(unittest.TestCase):
    def test_public_functions_and_actor_methods_are_found_and_nothing_else(self):
        module = env_module(
            "import os\n"
            "from json import dumps\n"
            "def evaluate(task):\n    return task\n"
            "def _helper():\n    pass\n"
            "class Actor:\n"
            "    def __init__(self):\n        self.n = 0\n"
            "    def step(self):\n        self.n += 1\n        return self.n\n"
            "    async def reset(self):\n        return 0\n"
            "    def _private(self):\n        pass\n"
            "    @staticmethod\n    def info():\n        return 'i'\n"
        )
        methods = worker.discover_methods(module)
        self.assertEqual(sorted(methods), ["evaluate", "info", "reset", "step"])
        self.assertTrue(methods["reset"].is_async)
        self.assertEqual(methods["step"].source, "Actor")
        self.assertEqual(methods["evaluate"].describe()["signature"], "(task)")


class CallIdTest(unittest.TestCase):
    def test_the_id_of_an_undecodable_call_is_read_from_its_prefix(self):
        self.assertEqual(worker.call_id_of(b'{"id":42,"method":"f","args":[1e999],"kwargs":{}}'), 42)
        self.assertIsNone(worker.call_id_of(b'{"cancel":3}'))
        self.assertIsNone(worker.call_id_of(b"garbage"))


class SyncPoolTest(unittest.TestCase):
    """A thread that cannot be started (a pids limit) must never leave a call unanswered."""

    def setUp(self):
        self.sent = []
        self.original_send = worker.send
        self.original_start = threading.Thread.start
        worker.send = lambda data, hold_gil=False: self.sent.append(data)
        module = env_module("def nap():\n    return 'done'\n")
        self.method = worker.discover_methods(module)["nap"]

    def tearDown(self):
        worker.send = self.original_send
        threading.Thread.start = self.original_start

    def refuse_threads(self):
        def start(thread):
            raise RuntimeError("can't start new thread")

        threading.Thread.start = start

    def test_with_no_thread_at_all_the_pool_refuses_so_the_caller_runs_it(self):
        pool = worker.SyncPool()
        self.refuse_threads()
        self.assertFalse(pool.submit(1, self.method, self.method.func, [], {}))
        self.assertEqual(pool.busy(), 0)

    def test_with_a_busy_thread_the_call_waits_for_it(self):
        pool = worker.SyncPool()
        release = threading.Event()
        blocking = env_module("import threading\nEVENT = None\ndef wait():\n    EVENT.wait(5)\n    return 'waited'\n")
        blocking.EVENT = release
        wait = worker.discover_methods(blocking)["wait"]
        self.assertTrue(pool.submit(1, wait, wait.func, [], {}))
        self.refuse_threads()
        self.assertTrue(pool.submit(2, self.method, self.method.func, [], {}))
        self.assertEqual(pool.busy(), 2)
        release.set()
        deadline = 50
        while len(self.sent) < 2 and deadline:
            threading.Event().wait(0.1)
            deadline -= 1
        ids = sorted(json.loads(message)["id"] for message in self.sent)
        self.assertEqual(ids, [1, 2], "both calls answered by the one thread")


@unittest.skipIf(worker.futex_hash_slots() is None, "no private futex hash here (Linux before 6.16)")
class FutexHashTest(unittest.TestCase):
    """A pool of many threads gets a futex hash wide enough for them (see WIDE_FUTEX_HASH_AFTER)."""

    def test_a_pool_that_grows_to_many_threads_widens_the_futex_hash_and_a_small_one_does_not(self):
        # In a child, so that this process's hash stays as the kernel made it.
        script = textwrap.dedent("""
            import importlib.util, json, threading, types
            spec = importlib.util.spec_from_file_location("rayfine_worker", %r)
            worker = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(worker)
            worker.send = lambda data, hold_gil=False: None
            gate = threading.Event()
            env = types.ModuleType("env")
            env.GATE = gate
            exec("def wait():" + chr(10) + "    GATE.wait(10)", env.__dict__)
            wait = worker.discover_methods(env)["wait"]
            pool = worker.SyncPool()
            seen = []
            for n in range(worker.WIDE_FUTEX_HASH_AFTER * 2):
                pool.submit(n, wait, wait.func, [], {})
                # The kernel makes the hash with the process's second thread.
                if n + 1 in (1, worker.WIDE_FUTEX_HASH_AFTER - 1):
                    seen.append(worker.futex_hash_slots())
            seen.append(worker.futex_hash_slots())
            gate.set()
            print(json.dumps({"slots": seen, "threads": pool.threads}))
        """ % WORKER_PATH)
        # The pool's own limit must let it grow past the point, whatever this environment sets.
        env = dict(os.environ, RAYFINE_MAX_SYNC_THREADS=str(worker.WIDE_FUTEX_HASH_AFTER * 4))
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
        self.assertEqual(out.returncode, 0, out.stderr)
        report = json.loads(out.stdout)
        first, small, after = report["slots"]
        if first == 0:
            self.skipTest("this kernel gives the process no private futex hash")
        if report["threads"] < worker.WIDE_FUTEX_HASH_AFTER:
            self.skipTest("only %d threads could be started here" % report["threads"])
        # The kernel sizes its own hash by the threads and the CPUs: 16 buckets up to 4 CPUs.
        self.assertLess(small, worker.FUTEX_HASH_SLOTS, "a pool of a few threads leaves the hash alone")
        self.assertEqual(after, worker.FUTEX_HASH_SLOTS)


class Harness:
    """A Worker on a real event loop, with `send` stubbed: each message is dispatched on the loop's
    thread while the loop runs, as in the worker, and the replies are collected by id."""

    def __init__(self, test, source):
        self.module = env_module(source)
        self.loop = asyncio.new_event_loop()
        self.replies = {}
        self.order = []
        original_send = worker.send

        def collect(data, hold_gil=False):
            for line in bytes(data).splitlines():
                reply = json.loads(line)
                self.order.append(reply["id"])
                self.replies[reply["id"]] = reply

        worker.send = collect
        test.addCleanup(self.loop.close)
        test.addCleanup(setattr, worker, "send", original_send)
        self.worker = worker.Worker(self.loop, worker.Environment(self.module))

    def send(self, *messages, wait=()):
        """Dispatches the messages, then runs the loop until the ids in `wait` are answered."""

        async def run():
            for message in messages:
                self.worker.dispatch(json.dumps(message).encode())
            deadline = time.monotonic() + 10
            while not all(i in self.replies for i in wait) and time.monotonic() < deadline:
                await asyncio.sleep(0.002)

        self.loop.run_until_complete(run())
        return [self.replies.get(i) for i in wait]

    def call(self, call_id, method, args=(), kwargs=None, **options):
        message = {"id": call_id}
        message.update(options)
        message.update({"method": method, "args": list(args), "kwargs": kwargs or {}})
        return self.send(message, wait=[call_id])[0]


class SendTest(unittest.TestCase):
    """`send` from a thread that keeps the GIL through the write: whole messages, even past a full
    pipe."""

    def setUp(self):
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.write_end, False)
        self.addCleanup(os.close, self.read_end)
        self.addCleanup(os.close, self.write_end)
        self.addCleanup(setattr, worker, "CHANNEL_OUT", worker.CHANNEL_OUT)
        self.addCleanup(setattr, worker, "write_keeping_the_gil", worker.write_keeping_the_gil)
        worker.CHANNEL_OUT = self.write_end

    @unittest.skipIf(worker.gil_keeping_write() is None, "no ctypes here")
    def test_a_thread_that_holds_the_gil_writes_with_a_call_that_keeps_it(self):
        import ctypes

        worker.write_keeping_the_gil = worker.NOT_LOADED
        worker.send(b"loaded\n", True)
        write = worker.write_keeping_the_gil
        self.assertTrue(write._flags_ & ctypes._FUNCFLAG_PYTHONAPI,
                        "loaded on first use, a PyDLL function: ctypes keeps the GIL through the call")
        used = []
        worker.write_keeping_the_gil = lambda fd, data, size: used.append(data) or write(fd, data, size)
        worker.send(b"kept\n", True)
        worker.send(b"let go\n")
        self.assertEqual(used, [b"kept\n"], "only the send asked to keep the GIL")
        self.assertEqual(os.read(self.read_end, 100), b"loaded\nkept\nlet go\n")

    def test_messages_larger_than_the_pipe_arrive_whole(self):
        worker.write_keeping_the_gil = worker.gil_keeping_write()
        messages = [b"a" * 300_000 + b"\n", b'{"id":1,"result":null}\n', b"b" * 70_000 + b"\n"]
        received = bytearray()

        def read_all():
            while len(received) < sum(map(len, messages)):
                chunk = os.read(self.read_end, 1 << 16)
                if not chunk:
                    return
                received.extend(chunk)

        writers = [threading.Thread(target=worker.send, args=(m, True), daemon=True) for m in messages]
        for writer in writers:
            writer.start()
        # The reader starts once the pipe is full: a writer then waits for room in the fallback.
        deadline = time.monotonic() + 10
        while select.select((), (self.write_end,), (), 0)[1] and time.monotonic() < deadline:
            time.sleep(0.005)
        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        for thread in writers + [reader]:
            thread.join(10)
        self.assertEqual(sorted(bytes(received).splitlines(keepends=True)), sorted(messages),
                         "every message whole, none interleaved with another")


class PollingTest(unittest.TestCase):
    """The worker polls for the next message only after a call that came alone: the server marks
    one sent while others were in flight "concurrent"."""

    def test_a_concurrent_call_stops_polling_and_a_lone_one_resumes_it(self):
        h = Harness(self, "def ping():\n    return 'pong'\n")
        self.assertTrue(h.worker.may_spin(), "nothing has come yet")
        self.assertEqual(h.call(1, "ping", concurrent=True)["result"], "pong")
        self.wait_for_idle_pool(h)
        self.assertFalse(h.worker.may_spin(), "the last call came while others were in flight")
        self.assertEqual(h.call(2, "ping")["result"], "pong")
        self.wait_for_idle_pool(h)
        self.assertTrue(h.worker.may_spin(), "the last call came alone")

    def wait_for_idle_pool(self, h):
        """A sync call's thread sends its answer before it counts itself idle again: what is read
        here must not depend on which of the two the test sees first."""
        deadline = time.monotonic() + 5
        while h.worker.pool.busy() != 0:
            self.assertLess(time.monotonic(), deadline, "the pool's thread never came back")
            time.sleep(0.001)


class InterpreterInfoTest(unittest.TestCase):
    """The handshake names the interpreter for the server to start directly next time, unless it
    was started with options of its own, which a direct start would lose."""

    def started_as(self, orig_argv):
        """The handshake's interpreter as if started with `orig_argv` (None: a Python before 3.10,
        which has no sys.orig_argv)."""
        missing = object()
        saved = getattr(sys, "orig_argv", missing)
        if orig_argv is None:
            if saved is not missing:
                del sys.orig_argv
        else:
            sys.orig_argv = orig_argv
        try:
            return worker.interpreter_info({"PATH": "/usr/bin"})
        finally:
            if saved is missing:
                sys.__dict__.pop("orig_argv", None)
            else:
                sys.orig_argv = saved

    def test_a_python_that_cannot_tell_its_own_options_names_no_interpreter(self):
        self.assertIsNone(self.started_as(None))

    def test_plain_start_is_reported_with_its_limits(self):
        import resource

        info = self.started_as([sys.executable] + sys.argv)
        limits = info.pop("limits")
        self.assertEqual(info, {"executable": sys.executable, "environ": {"PATH": "/usr/bin"}})
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        unlimited = resource.RLIM_INFINITY
        expected = [resource.RLIMIT_NOFILE, None if soft == unlimited else soft, None if hard == unlimited else hard]
        self.assertIn(expected, limits)
        self.assertEqual(len({number for number, _, _ in limits}), len(limits), "each resource once")

    def test_a_start_with_interpreter_options_is_not(self):
        for options in (["-I"], ["-X", "utf8"], ["-S", "-E"]):
            self.assertIsNone(self.started_as([sys.executable] + options + sys.argv), options)


COUNTER_ENV = """
import threading
CLOSED = []
SLEPT = []
GATE = None
class Actor:
    def __init__(self):
        if GATE is not None:
            GATE.wait(5)
        self.n = 0
        self.made_on = threading.current_thread().name
    def step(self, by=1):
        self.n += by
        return self.n
    def made_on_thread(self):
        return self.made_on
    async def slow(self):
        import asyncio
        SLEPT.append(self.n)
        await asyncio.sleep(30)
    def close(self):
        CLOSED.append(self.n)
        return "not this"
"""


class InstanceTest(unittest.TestCase):
    """Factory mode: one Actor per client session, opened and closed by the server."""

    def setUp(self):
        self.h = Harness(self, COUNTER_ENV)

    def test_opened_instances_keep_their_own_state_and_instance_0_is_the_default(self):
        self.assertEqual(self.h.send({"id": 1, "open": 1}, {"id": 2, "open": 2}, wait=[1, 2]),
                         [{"id": 1, "result": None}, {"id": 2, "result": None}])
        self.assertEqual(self.h.call(3, "step", instance=1)["result"], 1)
        self.assertEqual(self.h.call(4, "step", kwargs={"by": 5}, instance=1)["result"], 6)
        self.assertEqual(self.h.call(5, "step", instance=2)["result"], 1)
        self.assertEqual(self.h.call(6, "step")["result"], 1, "a call without instance uses instance 0")
        self.assertEqual(self.h.call(7, "step", instance=0)["result"], 2)

    def test_the_constructor_runs_on_a_pool_thread_not_the_loop(self):
        self.h.send({"id": 1, "open": 4}, wait=[1])
        self.assertEqual(self.h.call(2, "made_on_thread", instance=4)["result"], "rayfine-sync")

    def test_the_constructors_thread_answers_the_open_without_the_loop(self):
        answered_on = []
        collect = worker.send
        worker.send = lambda data, hold_gil=False: (answered_on.append(threading.current_thread().name), collect(data))
        self.h.send({"id": 1, "open": 4}, wait=[1])
        self.assertEqual(answered_on, ["rayfine-sync"])

    def test_opening_an_open_instance_is_a_bad_request(self):
        self.h.send({"id": 1, "open": 3}, wait=[1])
        reply = self.h.send({"id": 2, "open": 3}, wait=[2])[0]
        self.assertEqual(reply["error"]["kind"], "bad_request")
        self.assertEqual(self.h.send({"id": 3, "open": 0}, wait=[3])[0]["error"]["kind"], "bad_request")

    def test_a_constructor_that_raises_is_reported_and_makes_no_instance(self):
        self.h.module.GATE = None
        self.h.module.Actor.__init__ = lambda actor: 1 / 0
        reply = self.h.send({"id": 1, "open": 5}, wait=[1])[0]
        self.assertEqual(reply["error"]["kind"], "raised")
        self.assertEqual(reply["error"]["type"], "ZeroDivisionError")
        self.assertEqual(self.h.call(2, "step", instance=5)["error"]["kind"], "no_instance")

    def test_close_forgets_the_instance_then_calls_the_actors_close_and_answers_null(self):
        self.h.send({"id": 1, "open": 1}, wait=[1])
        self.h.call(2, "step", kwargs={"by": 7}, instance=1)
        self.assertEqual(self.h.send({"id": 3, "close": 1}, wait=[3])[0], {"id": 3, "result": None})
        self.assertEqual(self.h.module.CLOSED, [7], "close() ran on that instance")
        reply = self.h.call(4, "step", instance=1)
        self.assertEqual(reply["error"]["kind"], "no_instance")
        self.assertEqual(self.h.send({"id": 5, "close": 1}, {"id": 6, "close": 0}, {"id": 7, "close": 99},
                                     wait=[5, 6, 7]),
                         [{"id": 5, "result": None}, {"id": 6, "result": None}, {"id": 7, "result": None}])
        self.assertEqual(self.h.module.CLOSED, [7], "instance 0 and unknown instances are never closed")
        self.assertEqual(self.h.call(8, "step")["result"], 1, "instance 0 lives on")

    def test_a_close_that_raises_is_reported_and_the_instance_is_gone_anyway(self):
        def close(actor):
            raise RuntimeError("cannot close")

        self.h.module.Actor.close = close
        self.h.send({"id": 1, "open": 1}, wait=[1])
        reply = self.h.send({"id": 2, "close": 1}, wait=[2])[0]
        self.assertEqual((reply["error"]["kind"], reply["error"]["type"]), ("raised", "RuntimeError"))
        self.assertEqual(self.h.call(3, "step", instance=1)["error"]["kind"], "no_instance")

    def test_a_close_that_comes_while_the_constructor_runs_waits_for_it(self):
        gate = threading.Event()
        self.h.module.GATE = gate
        self.h.loop.call_later(0.05, gate.set)
        replies = self.h.send({"id": 1, "open": 2}, {"id": 2, "close": 2}, wait=[1, 2])
        self.assertEqual(replies, [{"id": 1, "result": None}, {"id": 2, "result": None}])
        self.assertEqual(self.h.order, [1, 2])
        self.assertEqual(self.h.module.CLOSED, [0])

    def test_a_call_on_an_unknown_instance_says_so(self):
        reply = self.h.call(1, "step", instance=7)
        self.assertEqual(reply["error"]["kind"], "no_instance")
        self.assertEqual(reply["error"]["type"], "InstanceNotFound")
        self.assertIn("no session instance 7", reply["error"]["message"])

    def test_an_async_call_on_an_instance_can_be_cancelled(self):
        self.h.send({"id": 1, "open": 1}, wait=[1])
        self.h.call(2, "step", kwargs={"by": 3}, instance=1)
        self.h.call(4, "step", kwargs={"by": 10})
        self.h.send({"id": 3, "instance": 1, "method": "slow", "args": [], "kwargs": {}})
        self.assertIn(3, self.h.worker.tasks)
        self.h.send(wait=[])
        self.assertEqual(self.h.module.SLEPT, [3], "it runs on instance 1")
        self.h.send({"cancel": 3})
        self.h.send(wait=[])
        self.assertNotIn(3, self.h.worker.tasks)
        self.assertNotIn(3, self.h.replies)

    def test_an_async_close_is_awaited(self):
        source = COUNTER_ENV.replace("    def close(self):", "    async def close(self):")
        h = Harness(self, source)
        h.send({"id": 1, "open": 1}, wait=[1])
        self.assertEqual(h.send({"id": 2, "close": 1}, wait=[2])[0], {"id": 2, "result": None})
        self.assertEqual(h.module.CLOSED, [0])


FAILING_ENV = """
import asyncio

class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no words")

def unprintable():
    raise Unprintable()

def ping():
    return "pong"

async def cancelled_inside():
    # The environment's own cancellation: awaiting a future that something else cancelled.
    future = asyncio.get_running_loop().create_future()
    future.cancel()
    await future
"""


class FailureAnswerTest(unittest.TestCase):
    """Every call is answered, however its failure looks: a caller left without an answer waits for
    ever (the server has no call timeout unless one is set)."""

    def setUp(self):
        self.h = Harness(self, FAILING_ENV)

    def test_an_exception_whose_str_raises_is_answered_and_the_pool_thread_lives_on(self):
        reply = self.h.call(1, "unprintable")
        self.assertEqual((reply["error"]["kind"], reply["error"]["type"]), ("raised", "Unprintable"))
        self.assertIn("str() of Unprintable failed", reply["error"]["message"])
        pool = self.h.worker.pool
        deadline = time.monotonic() + 5
        while pool.busy() != 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        self.assertEqual((pool.threads, pool.busy()), (1, 0), "the thread went back to the pool")
        self.assertEqual(self.h.call(2, "ping")["result"], "pong")

    def test_an_async_call_cancelled_by_the_environment_itself_is_answered(self):
        reply = self.h.call(1, "cancelled_inside")
        self.assertEqual((reply["error"]["kind"], reply["error"]["type"]), ("raised", "CancelledError"))
        self.assertNotIn(1, self.h.worker.tasks)


EAGER_ENV = """
import asyncio

async def ping():
    return "pong"

async def in_a_task():
    timeout = getattr(asyncio, "timeout", None)  # 3.11+: it needs the current task
    if timeout is None:
        return asyncio.current_task() is not None
    async with timeout(5):
        return asyncio.current_task() is not None

async def waits():
    await asyncio.sleep(0)
    return "waited"
"""


class EagerAsyncTest(unittest.TestCase):
    """An async call's first step runs as its message is dispatched (from the loop's reader
    callback, as in the worker), so a call that never waits is answered before the loop turns."""

    def setUp(self):
        self.h = Harness(self, EAGER_ENV)

    def answered_during_dispatch(self):
        """Dispatches three calls from a plain callback; which were answered before it returned."""
        answered = []

        def dispatch():
            for call_id, method in ((1, "ping"), (2, "in_a_task"), (3, "waits")):
                self.h.worker.dispatch(json.dumps({"id": call_id, "method": method, "args": [], "kwargs": {}}).encode())
            answered.extend(i for i in (1, 2, 3) if i in self.h.replies)

        self.h.loop.call_soon(dispatch)
        replies = self.h.send(wait=[1, 2, 3])
        self.assertEqual([r["result"] for r in replies], ["pong", True, "waited"],
                         "each ran as its own task: asyncio.current_task() and asyncio.timeout() work")
        self.assertEqual(self.h.worker.tasks, {})
        return answered

    def test_a_call_that_never_waits_is_answered_in_its_dispatch(self):
        self.assertEqual(self.answered_during_dispatch(), [1, 2])

    def started(self, set_up=None):
        """Runs `start_task` on a quick coroutine from a plain callback; what happened, in order."""
        loop, happened = self.h.loop, []

        async def quick():
            return 1

        def start():
            if set_up is not None:
                set_up(loop, happened)
            happened.append(("done at once", worker.start_task(loop, quick()).done()))

        loop.call_soon(start)
        loop.run_until_complete(asyncio.sleep(0.01))
        return happened

    def test_only_the_new_tasks_own_step_is_taken_from_the_ready_queue(self):
        def queue_another_after_each_task(loop, happened):
            create = loop.create_task

            def create_then_queue(coro, **options):
                task = create(coro, **options)
                loop.call_soon(happened.append, "the other callback")  # as another thread might
                return task

            loop.create_task = create_then_queue

        self.assertEqual(self.started(queue_another_after_each_task), [("done at once", True), "the other callback"])

    def test_under_the_environments_task_factory_tasks_start_as_plain_ones(self):
        def own_factory(loop, happened):
            loop.set_task_factory(lambda loop, coro, **options: asyncio.Task(coro, loop=loop, **options))

        self.assertEqual(self.started(own_factory), [("done at once", False)])

    def test_without_eager_tasks_every_call_waits_for_a_turn_of_the_loop(self):
        self.addCleanup(setattr, worker, "EAGER_ASYNC", worker.EAGER_ASYNC)
        worker.EAGER_ASYNC = False
        self.assertEqual(self.answered_during_dispatch(), [])


class InlineWithSessionsTest(unittest.TestCase):
    """A short sync call runs on the loop's thread for a lone client, never while two sessions are
    open: a call that turns slow there would stall the other session's episode."""

    def setUp(self):
        self.h = Harness(self, "import threading\nclass Actor:\n    def where(self):\n"
                               "        return threading.current_thread().name\n")

    def where(self, call_id, instance):
        # A pool thread counts itself idle just after its answer: wait for that, or the pool
        # would still look busy and the call go to it for that reason alone.
        pool = self.h.worker.pool
        deadline = time.monotonic() + 5
        while pool.busy() != 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        # A run preempted past 1 ms (a busy machine) would send it back to the pool.
        self.h.worker.methods["where"].short_runs = worker.INLINE_AFTER
        return self.h.call(call_id, "where", instance=instance)["result"]

    def test_one_session_runs_short_calls_inline_two_do_not(self):
        self.h.send({"id": 1, "open": 1}, wait=[1])
        self.assertEqual(self.where(2, 1), threading.current_thread().name, "one session: inline")
        self.h.send({"id": 3, "open": 2}, wait=[3])
        self.assertEqual(self.where(4, 1), "rayfine-sync")
        self.assertEqual(self.where(5, 0), "rayfine-sync", "instance 0 too, while two sessions are open")
        self.h.send({"id": 6, "close": 2}, wait=[6])
        self.assertEqual(self.where(7, 1), threading.current_thread().name, "back to one session")


class ModuleEnvInstanceTest(unittest.TestCase):
    def test_instances_of_a_module_env_are_its_functions_and_close_calls_nothing(self):
        h = Harness(self, "CALLS = []\ndef ping():\n    return 'pong'\ndef close():\n    CALLS.append(1)\n")
        self.assertEqual(h.send({"id": 1, "open": 3}, wait=[1])[0], {"id": 1, "result": None})
        self.assertEqual(h.call(2, "ping", instance=3)["result"], "pong")
        self.assertEqual(h.send({"id": 3, "close": 3}, wait=[3])[0], {"id": 3, "result": None})
        self.assertEqual(h.module.CALLS, [], "a module's close is no session's to call")
        self.assertEqual(h.call(4, "ping", instance=3)["error"]["kind"], "no_instance")


@dataclasses.dataclass
class Move:
    x: int
    y: int = 0


class BindingOptionsTest(unittest.TestCase):
    """`lenient` and `action`, the call options OpenEnv's requests need."""

    def setUp(self):
        self.h = Harness(self, textwrap.dedent("""
            def add(a, b=1):
                return a + b
            def anything(**kw):
                return sorted(kw)
            def step(action, timeout_s=None):
                return {"action": action, "timeout_s": timeout_s}
            def typed_step(action: "Move"):
                return [type(action).__name__, action.x, action.y]
        """))
        self.h.module.Move = Move
        self.h.worker.methods["typed_step"] = worker.Method("typed_step", self.h.module.typed_step, "module")

    def test_lenient_drops_the_keywords_the_signature_cannot_take(self):
        self.assertEqual(self.h.call(1, "add", [1], {"b": 2, "request_id": "r"}, lenient=True)["result"], 3)
        self.assertEqual(self.h.call(2, "add", [1], {"request_id": "r"})["error"]["kind"], "args",
                         "without lenient an unknown keyword is an error, as before")
        self.assertEqual(self.h.call(3, "anything", [], {"z": 1}, lenient=True)["result"], ["z"],
                         "**kwargs takes every keyword")
        self.assertEqual(self.h.call(4, "add", [1, 2, 3], {}, lenient=True)["error"]["kind"], "args",
                         "positional arguments are not dropped")

    def test_an_action_goes_in_as_the_action_parameter(self):
        reply = self.h.call(1, "step", [], {"timeout_s": 5, "junk": 1}, lenient=True, action={"m": 1})
        self.assertEqual(reply["result"], {"action": {"m": 1}, "timeout_s": 5})

    def test_an_action_annotated_with_a_dataclass_is_converted(self):
        self.assertEqual(self.h.call(1, "typed_step", action={"x": 3})["result"], ["Move", 3, 0])
        reply = self.h.call(2, "typed_step", action={"x": 3, "z": 1})
        self.assertEqual((reply["error"]["kind"], reply["error"]["type"]), ("args", "InvalidArguments"))
        self.assertIn("z", reply["error"]["message"])
        reply = self.h.call(3, "typed_step", action=[1])
        self.assertEqual(reply["error"]["kind"], "args")

    def test_an_action_annotated_with_a_pydantic_model_is_validated(self):
        try:
            import pydantic
        except ImportError:
            self.skipTest("pydantic is not installed")

        class Echo(pydantic.BaseModel):
            message: str = pydantic.Field(min_length=1)

        def step(action: Echo):
            return [type(action).__name__, action.message]

        self.h.worker.methods["step"] = worker.Method("step", step, "module")
        self.assertEqual(self.h.call(1, "step", action={"message": "hi"})["result"], ["Echo", "hi"])
        reply = self.h.call(2, "step", action={"message": ""})
        self.assertEqual(reply["error"]["kind"], "args")
        self.assertIn("at least 1 character", reply["error"]["message"])

    def test_without_an_action_parameter_the_action_is_keyword_arguments(self):
        reply = self.h.call(1, "add", [], {"b": 5, "x": 0}, lenient=True, action={"a": 1, "b": 2})
        self.assertEqual(reply["result"], 3, "the action wins a clash; lenient drops x")
        reply = self.h.call(2, "add", [], {}, lenient=True, action={"a": 1, "nope": 2})
        self.assertEqual(reply["error"]["kind"], "args", "an action's members are never dropped")

    def test_an_action_that_is_no_object_cannot_be_keyword_arguments(self):
        reply = self.h.call(1, "add", [], {}, action=[1, 2])
        self.assertEqual((reply["error"]["kind"], reply["error"]["type"]), ("args", "InvalidArguments"))
        self.assertIn("takes no `action` parameter", reply["error"]["message"])
        self.assertIn("JSON object", reply["error"]["message"])


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class SchemaTest(unittest.TestCase):
    def test_a_signature_becomes_the_json_schema_of_its_keyword_arguments(self):
        class Actor:
            def step(self, action: Move, count: int, ratio: float = 0.5, name: str = "n", on: bool = False,
                     tags: List[str] = (), weights: Optional[Dict[str, float]] = None, pair: Tuple[int, str] = (1, "a"),
                     maybe: Optional[int] = None, either: Union[int, str] = 1, mode: Literal["a", "b"] = "a",
                     colour: Colour = Colour.RED, free=object(), *rest, **extra):
                pass

        # As the handshake carries it: a tuple default is a JSON array.
        schema = json.loads(json.dumps(worker.Method("step", Actor().step, "Actor").describe()["input_schema"]))
        self.assertEqual(schema["type"], "object")
        self.assertEqual(schema["required"], ["action", "count"])
        self.assertIs(schema["additionalProperties"], True, "**extra takes any keyword")
        properties = schema["properties"]
        self.assertEqual(list(properties), ["action", "count", "ratio", "name", "on", "tags", "weights", "pair",
                                            "maybe", "either", "mode", "colour", "free"])
        self.assertEqual(properties["action"], {
            "type": "object", "title": "Move", "properties": {"x": {"type": "integer"}, "y": {"type": "integer", "default": 0}},
            "required": ["x"], "additionalProperties": False})
        self.assertEqual(properties["count"], {"type": "integer"})
        self.assertEqual(properties["ratio"], {"type": "number", "default": 0.5})
        self.assertEqual(properties["name"], {"type": "string", "default": "n"})
        self.assertEqual(properties["on"], {"type": "boolean", "default": False})
        self.assertEqual(properties["tags"], {"type": "array", "items": {"type": "string"}, "default": []})
        self.assertEqual(properties["weights"], {
            "anyOf": [{"type": "object", "additionalProperties": {"type": "number"}}, {"type": "null"}], "default": None})
        self.assertEqual(properties["pair"]["prefixItems"], [{"type": "integer"}, {"type": "string"}])
        self.assertEqual(properties["maybe"], {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None})
        self.assertEqual(properties["either"], {"anyOf": [{"type": "integer"}, {"type": "string"}], "default": 1})
        self.assertEqual(properties["mode"], {"enum": ["a", "b"], "default": "a"})
        self.assertEqual(properties["colour"], {"enum": ["red", "blue"], "default": "red"})
        self.assertEqual(properties["free"], {}, "no annotation, and a default JSON cannot hold")

    def test_without_kwargs_no_other_property_is_allowed_and_odd_annotations_are_anything(self):
        def f(a: "NoSuchName", b: "int" = 1):
            pass

        schema = worker.Method("f", f, "module").describe()["input_schema"]
        self.assertEqual(schema, {"type": "object", "properties": {"a": {}, "b": {"type": "integer", "default": 1}},
                                  "required": ["a"], "additionalProperties": False})

    def test_a_pydantic_model_gives_its_own_schema(self):
        try:
            import pydantic
        except ImportError:
            self.skipTest("pydantic is not installed")

        class Inner(pydantic.BaseModel):
            v: int

        class Echo(pydantic.BaseModel):
            message: str
            inner: Optional[Inner] = None

        def step(action: Echo):
            pass

        schema = worker.Method("step", step, "module").describe()["input_schema"]
        self.assertEqual(schema["properties"]["action"]["title"], "Echo")
        self.assertIn("Inner", schema["$defs"], "nested models' definitions are at the root their $ref names")


class HandshakeEnvTest(unittest.TestCase):
    def env(self, source, path="/srv/echo_env/env.py"):
        module = env_module(source)
        module.__file__ = path
        return worker.Environment(module).describe()

    def test_a_factory_env_is_named_by_its_actor_then_its_module_then_its_folder(self):
        self.assertEqual(self.env('"""Echoes."""\nNAME = "mod"\nclass Actor:\n    NAME = "echo"\n'),
                         {"name": "echo", "doc": "Echoes.", "factory": True})
        self.assertEqual(self.env('NAME = "mod"\nclass Actor:\n    """The actor."""\n')["name"], "mod")
        self.assertEqual(self.env('class Actor:\n    """The actor."""\n'),
                         {"name": "echo_env", "doc": "The actor.", "factory": True})

    def test_a_module_env_is_no_factory(self):
        self.assertEqual(self.env("def ping():\n    return 1\n", "/app/env.py"),
                         {"name": "app", "doc": "", "factory": False})


class Driver:
    """worker.py run as the server runs it: one JSON line each way over its stdin and stdout."""

    def __init__(self, test, source, environ=None):
        folder = tempfile.mkdtemp(prefix="rayfine-env-")
        path = os.path.join(folder, "env.py")
        with open(path, "w") as handle:
            handle.write(source)
        self.process = subprocess.Popen(
            [sys.executable, WORKER_PATH, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=dict(os.environ, **(environ or {})))
        test.addCleanup(self.stop)
        self.pending = b""
        self.folder = os.path.basename(folder)

    def stop(self):
        self.process.stdin.close()
        self.process.wait(10)
        self.process.stdout.close()

    def write(self, *messages):
        self.process.stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
        self.process.stdin.flush()

    def read(self, timeout=10):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.process.stdout], [], [], remaining)[0]:
                raise AssertionError("no message from the worker in %ss" % timeout)
            chunk = os.read(self.process.stdout.fileno(), 1 << 16)
            if not chunk:
                raise AssertionError("the worker closed the channel")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def ask(self, message):
        self.write(message)
        return self.read()


class EndToEndTest(unittest.TestCase):
    SOURCE = textwrap.dedent('''
        """Counts, per session."""
        import time
        CLOSED = []
        class Actor:
            def __init__(self):
                self.n = 0
            def step(self, by: int = 1) -> int:
                self.n += by
                return self.n
            def nap(self, seconds: float):
                time.sleep(seconds)
                return self.n
            def close(self):
                CLOSED.append(self.n)
        def closed():
            return CLOSED
    ''')

    def test_the_handshake_describes_the_env_and_its_parameters(self):
        driver = Driver(self, self.SOURCE)
        ready = driver.read()
        self.assertTrue(ready["ready"])
        self.assertEqual(ready["env"], {"name": driver.folder, "doc": "Counts, per session.", "factory": True})
        step = next(m for m in ready["methods"] if m["name"] == "step")
        self.assertEqual(step["input_schema"], {"type": "object", "properties": {"by": {"type": "integer", "default": 1}},
                                                "required": [], "additionalProperties": False})

    def test_sessions_open_call_and_close_over_the_channel(self):
        driver = Driver(self, self.SOURCE)
        driver.read()
        self.assertEqual(driver.ask({"id": 1, "open": 1}), {"id": 1, "result": None})
        self.assertEqual(driver.ask({"id": 2, "instance": 1, "method": "step", "args": [], "kwargs": {"by": 4}}),
                         {"id": 2, "result": 4})
        self.assertEqual(driver.ask({"id": 3, "method": "step", "args": [], "kwargs": {}}), {"id": 3, "result": 1})
        self.assertEqual(driver.ask({"id": 4, "instance": 1, "method": "step", "args": [], "kwargs": {"x": 0},
                                     "lenient": True, "action": {"by": 2}}), {"id": 4, "result": 6})
        self.assertEqual(driver.ask({"id": 5, "close": 1}), {"id": 5, "result": None})
        self.assertEqual(driver.ask({"id": 6, "method": "closed", "args": [], "kwargs": {}}), {"id": 6, "result": [6]})
        reply = driver.ask({"id": 7, "instance": 1, "method": "step", "args": [], "kwargs": {}})
        self.assertEqual(reply["error"]["kind"], "no_instance")

    def test_the_worker_writes_to_a_non_blocking_channel(self):
        """A pool thread writes keeping the GIL: on a blocking channel, a full pipe would stop every
        thread of the worker until the server read."""
        driver = Driver(self, self.SOURCE)
        driver.read()
        ours = os.fstat(driver.process.stdout.fileno())
        flags = []
        for fd in os.listdir("/proc/%d/fd" % driver.process.pid):
            try:
                theirs = os.stat("/proc/%d/fd/%s" % (driver.process.pid, fd))
                with open("/proc/%d/fdinfo/%s" % (driver.process.pid, fd)) as info:
                    fd_flags = next(int(line.split()[1], 8) for line in info if line.startswith("flags:"))
            except OSError:
                continue
            if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino) and fd_flags & os.O_WRONLY:
                flags.append(fd_flags)
        self.assertTrue(flags, "the worker holds the write end of its channel")
        self.assertTrue(all(f & os.O_NONBLOCK for f in flags), "flags %s" % [oct(f) for f in flags])

    def test_many_sessions_each_sleeping_in_a_sync_call_run_at_once(self):
        sessions = 300
        driver = Driver(self, self.SOURCE, {"RAYFINE_MAX_SYNC_THREADS": str(sessions + 10)})
        driver.read()
        driver.write(*({"id": k, "open": k} for k in range(1, sessions + 1)))
        self.assertTrue(all(driver.read()["result"] is None for _ in range(sessions)))
        started = time.monotonic()
        driver.write(*({"id": 1000 + k, "instance": k, "method": "nap", "args": [0.5], "kwargs": {}}
                       for k in range(1, sessions + 1)))
        replies = [driver.read() for _ in range(sessions)]
        self.assertEqual(sorted(r["id"] for r in replies), list(range(1001, 1001 + sessions)))
        self.assertLess(time.monotonic() - started, 0.5 * 4, "the sleeps overlap")


if __name__ == "__main__":
    unittest.main()
