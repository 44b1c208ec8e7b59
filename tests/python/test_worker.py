"""Unit tests of the worker's pure parts: argument binding, result conversion, method discovery,
the call-id rule, and the sync pool when no thread can be started. Standard library only; run by
`cargo test` (tests/it/python_worker.rs) as `python3 -m unittest discover -s tests/python`."""

import dataclasses
import enum
import importlib.util
import json
import os
import sys
import threading
import types
import unittest

WORKER_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "src", "server", "worker", "worker.py")


def load_worker():
    spec = importlib.util.spec_from_file_location("rayfine_worker", WORKER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        self.assertIs(sys.stdin, sys.__stdin__)


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
        worker.send = self.sent.append
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
        self.assertFalse(pool.submit(1, self.method, [], {}))
        self.assertEqual(pool.busy(), 0)

    def test_with_a_busy_thread_the_call_waits_for_it(self):
        pool = worker.SyncPool()
        release = threading.Event()
        blocking = env_module("import threading\nEVENT = None\ndef wait():\n    EVENT.wait(5)\n    return 'waited'\n")
        blocking.EVENT = release
        wait = worker.discover_methods(blocking)["wait"]
        self.assertTrue(pool.submit(1, wait, [], {}))
        self.refuse_threads()
        self.assertTrue(pool.submit(2, self.method, [], {}))
        self.assertEqual(pool.busy(), 2)
        release.set()
        deadline = 50
        while len(self.sent) < 2 and deadline:
            threading.Event().wait(0.1)
            deadline -= 1
        ids = sorted(json.loads(message)["id"] for message in self.sent)
        self.assertEqual(ids, [1, 2], "both calls answered by the one thread")


if __name__ == "__main__":
    unittest.main()
