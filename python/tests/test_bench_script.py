"""The bench's Python script (python/bench/client_call_cost.py): a peer's client that cannot run
skips its own row and keeps the others."""

import importlib.util
import os
import sys
import types

from conftest import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("client_call_cost", os.path.join(REPO, "python", "bench", "client_call_cost.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_affinetes_that_cannot_make_a_client_skips_its_row(monkeypatch):
    broken = types.ModuleType("affinetes")

    def load_env(**_):
        raise ModuleNotFoundError("No module named 'httpx'")

    broken.load_env = load_env
    monkeypatch.setitem(sys.modules, "affinetes", broken)
    result = load_script().affinetes_call_cost("http://127.0.0.1:9", 10, 1)
    assert "cannot make a client" in result["skipped"] and "httpx" in result["skipped"], result


def test_an_affinetes_whose_calls_fail_skips_its_row(monkeypatch):
    class Env:
        async def ping(self):
            raise ConnectionError("refused")

        async def cleanup(self):
            pass

    failing = types.ModuleType("affinetes")
    failing.load_env = lambda **_: Env()
    monkeypatch.setitem(sys.modules, "affinetes", failing)
    result = load_script().affinetes_call_cost("http://127.0.0.1:9", 10, 1)
    assert "failed calling the server" in result["skipped"] and "refused" in result["skipped"], result
