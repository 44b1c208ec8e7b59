"""OpenEnv's own clients (the `openenv` package from PyPI, 0.10.0) against a Rayfine server.

Run by tests/it/openenv.rs with the interpreter of target/openenv-venv (.ci/setup makes it), as
`python check_clients.py CASE URL [ARG]`; each case asserts and exits non-zero on failure. The
cases use the clients exactly as their documentation does: nothing here knows it talks to Rayfine.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from openenv.core import GenericEnvClient
from openenv.core.mcp_client import MCPToolClient


def http(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def close_enough(a, b):
    return abs(a - b) < 1e-9


def basics(url):
    """reset, steps, state, an environment error and close, over the WebSocket (sync and async),
    then OpenEnv's HTTP routes."""
    with GenericEnvClient(base_url=url).sync() as env:
        result = env.reset(seed=1, episode_id="ep-1")
        assert result.done is False, result
        assert result.observation["echoed_message"] == "Echo environment ready!", result
        assert result.reward == 0.0, result
        result = env.step({"message": "hello"})
        assert result.observation["message_length"] == 5 and result.observation["echoed_message"] == "hello", result
        assert close_enough(result.reward, 0.5) and result.done is False, result
        assert result.metadata == {"original_message": "hello", "step": 1}, result
        result = env.step({"message": "hello world"})
        assert close_enough(result.reward, 1.1), result
        state = env.state()
        assert state == {"episode_id": "ep-1", "step_count": 2}, state
        try:
            env.step({"message": ""})
            raise AssertionError("an empty message must fail")
        except RuntimeError as err:
            assert "EXECUTION_ERROR" in str(err) and "non-empty" in str(err), err
        try:
            env.step({"text": "wrong field"})
            raise AssertionError("an action that does not bind must fail")
        except RuntimeError as err:
            assert "VALIDATION_ERROR" in str(err), err
        assert env.state()["step_count"] == 2, "failed steps are not counted"

    async def async_episode():
        async with GenericEnvClient(base_url=url) as env:
            await env.reset()
            result = await env.step({"message": "async"})
            assert result.observation["message_length"] == 5, result
            state = await env.state()
            assert state["step_count"] == 1, state

    asyncio.run(async_episode())

    status, body = http("POST", url + "/reset", {"episode_id": "h", "not_a_parameter": 1})
    assert status == 200 and body["observation"]["echoed_message"] == "Echo environment ready!", (status, body)
    assert body["metadata"] is None and body["reward"] == 0.0 and body["done"] is False, body
    status, body = http("POST", url + "/step", {"action": {"message": "hey"}, "timeout_s": 5, "request_id": "r1"})
    assert status == 200 and body["observation"]["message_length"] == 3, (status, body)
    assert body["metadata"] == {"original_message": "hey", "step": 1}, body
    status, body = http("GET", url + "/state")
    assert status == 200 and body == {"episode_id": "h", "step_count": 1}, (status, body)
    status, body = http("POST", url + "/step", {"message": "no action"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "action"], (status, body)
    status, body = http("GET", url + "/schema")
    assert status == 200 and body["action"]["properties"]["message"]["type"] == "string", (status, body)
    assert body["action"]["required"] == ["message"], body
    status, body = http("GET", url + "/metadata")
    assert status == 200 and body["name"] and body["description"], (status, body)
    status, _ = http("GET", url + "/health")
    assert status == 200


def concurrent(url, sessions):
    """`sessions` episodes at once, each with its own number of steps and its own messages: each
    must see only its own."""
    sessions = int(sessions)

    async def episode(i):
        async with GenericEnvClient(base_url=url) as env:
            await env.reset(episode_id="ep-%d" % i)
            steps = i % 5 + 1
            for _ in range(steps):
                result = await env.step({"message": "x" * (i + 1)})
                assert result.observation["message_length"] == i + 1, (i, result)
            state = await env.state()
            assert state == {"episode_id": "ep-%d" % i, "step_count": steps}, (i, state)

    async def main():
        await asyncio.gather(*(episode(i) for i in range(sessions)))

    asyncio.run(main())


def refused(url, why):
    """Asserts that a new session is refused at once with OpenEnv's capacity answer."""
    env = GenericEnvClient(base_url=url).sync()
    env.connect()
    started = time.monotonic()
    try:
        env.reset()
        raise AssertionError(why)
    except RuntimeError as err:
        assert "CAPACITY_REACHED" in str(err), err
        assert time.monotonic() - started < 10, "the refusal came at once"
        return str(err)
    finally:
        env.close()


def first_free_session(url, within, why):
    """A new session, as soon as a slot is free; fails with `why` after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        env = GenericEnvClient(base_url=url).sync()
        try:
            env.connect()
            env.reset()
            return env
        except RuntimeError as err:
            env.close()
            assert "CAPACITY_REACHED" in str(err), err
            assert time.monotonic() < deadline, why
            time.sleep(0.2)


def client_process(url, then):
    """Another process holding a session: it resets, prints "ready", then runs `then`."""
    script = (
        "import sys, time\n"
        "from openenv.core import GenericEnvClient\n"
        "env = GenericEnvClient(base_url=sys.argv[1]).sync()\n"
        "env.connect()\n"
        "env.reset()\n"
        "print('ready', flush=True)\n" + then + "\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script, url], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def capacity(url, limit):
    """`limit` sessions fill the server; one more gets OpenEnv's capacity answer, not a hang; a
    freed slot is taken again."""
    limit = int(limit)
    held = []
    for _ in range(limit):
        env = GenericEnvClient(base_url=url).sync()
        env.connect()
        env.reset()
        held.append(env)
    message = refused(url, "a session over the limit must be refused")
    assert "%d/%d" % (limit, limit) in message, message
    held.pop().close()
    first_free_session(url, 10, "a closed session's slot was not given back").close()
    for env in held:
        env.close()


def reaped(url):
    """A client that vanishes without closing (frozen: its socket stays open, nothing answers the
    server's pings) loses its session after the idle timeout, and its slot is free again. The
    server runs with one slot."""
    holder = client_process(url, "time.sleep(3600)")
    try:
        os.kill(holder.pid, signal.SIGSTOP)
        refused(url, "the frozen client still holds the only slot")
        env = first_free_session(url, 30, "the frozen client's session was never reaped")
        result = env.step({"message": "after"})
        assert result.observation["echoed_message"] == "after", result
        env.close()
    finally:
        holder.kill()
        holder.wait()


def left_mid_step(url):
    """A client killed in the middle of a 3 s step: its slot stays taken until the worker is done
    with the step (so leaving cannot pile up work no limit bounds), then is free again. The
    server runs openenv_benchmark with one slot."""
    leaver = client_process(url, "env.step({'wait_seconds': 3})")
    time.sleep(0.5)
    leaver.kill()
    leaver.wait()
    killed = time.monotonic()
    time.sleep(0.5)
    refused(url, "the slot was freed while its step still ran")
    env = first_free_session(url, 20, "the slot never came back")
    assert time.monotonic() - killed >= 1.5, "the slot came back before the step could have ended"
    assert env.step({"wait_seconds": 0}).observation["step_count"] == 1
    env.close()


def mcp(url):
    """OpenEnv's MCPToolClient on a Rayfine Actor environment (the counter, COUNTER_NAME=mcp-test): tools listed from
    the Actor's methods, called on the client's own session instance."""
    with MCPToolClient(base_url=url).sync() as first, MCPToolClient(base_url=url).sync() as second:
        first.reset()
        second.reset()
        names = sorted(tool.name for tool in first.list_tools())
        assert names == ["evaluate", "get", "increment"], names
        increment = [tool for tool in first.list_tools() if tool.name == "increment"][0]
        assert increment.input_schema["type"] == "object" and "times" in increment.input_schema["properties"], increment
        assert first.call_tool("increment", times=3) == 3
        assert first.call_tool("increment") == 4
        assert second.call_tool("get") == {"name": "mcp-test", "value": 0}, "the second session has an Actor of its own"
        try:
            first.call_tool("no_such_tool")
            raise AssertionError("an unknown tool must fail")
        except RuntimeError as err:
            assert "no_such_tool" in str(err), err


if __name__ == "__main__":
    case, *args = sys.argv[1:]
    globals()[case](*args)
    print("ok", case)
