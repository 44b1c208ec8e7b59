"""What a trivial call costs from Python: Rayfine's sync and async clients and affinetes' client,
calling the same server one after another, plus Python's own HTTP floor and the calls per second
one asyncio loop gets with many calls in flight.

Run by `rayfine bench --only python`, which starts the server (no auth, so that affinetes'
client, which sends no token, can call it) and the echo floor, and prints these figures beside
the Rust client's. Prints one JSON object on stdout; progress goes to stderr.

    python3 client_call_cost.py --url http://127.0.0.1:PORT --echo-url http://127.0.0.1:PORT/echo
"""

import argparse
import asyncio
import http.client
import importlib.metadata
import json
import statistics
import sys
import time
import urllib.parse


def summary(samples_us):
    """Median and p99 of a list of microseconds."""
    ordered = sorted(samples_us)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"p50_us": statistics.median(ordered), "p99_us": p99, "calls": len(ordered)}


def timed(call, calls, warmup):
    """Microseconds of `calls` sequential `call()`s after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    took = []
    clock = time.perf_counter
    for _ in range(calls):
        started = clock()
        call()
        took.append((clock() - started) * 1e6)
    return took


async def timed_async(call, calls, warmup):
    """`timed` for a coroutine function, awaited one after another on the running loop."""
    for _ in range(warmup):
        await call()
    took = []
    clock = time.perf_counter
    for _ in range(calls):
        started = clock()
        await call()
        took.append((clock() - started) * 1e6)
    return took


def python_http_floor(echo_url, calls, warmup):
    """Python's own floor: `http.client` on one kept-alive connection, POSTing to the echo."""
    parsed = urllib.parse.urlsplit(echo_url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port)
    body = b'{"method":"ping","kwargs":{}}'
    headers = {"content-type": "application/json"}

    def post():
        connection.request("POST", parsed.path, body, headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError("the echo floor answered %d" % response.status)

    try:
        return timed(post, calls, warmup)
    finally:
        connection.close()


async def throughput(env, in_flight, seconds):
    """Calls per second from one loop, `in_flight` calls always outstanding."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def one_caller():
        nonlocal done
        while time.perf_counter() < deadline:
            await env.ping()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(one_caller() for _ in range(in_flight)))
    return done / (time.perf_counter() - started)


def affinetes_call_cost(url, calls, warmup):
    """affinetes' own client in URL mode (its documented way to call a server it did not start).

    A comparison, not Rayfine's figure: an affinetes that cannot run here (installed without its
    dependencies, or failing against this server) skips its row, saying why, rather than losing
    every row measured before it."""
    try:
        import affinetes
    except ImportError:
        return {"skipped": "affinetes is not installed (pip install affinetes)"}
    import logging

    try:
        version = importlib.metadata.version("affinetes")
    except importlib.metadata.PackageNotFoundError:
        version = "of unknown version"
    logging.disable(logging.INFO)  # its per-call debug logging is off by default; keep start-up quiet too
    try:
        env = affinetes.load_env(mode="url", base_url=url)
    except Exception as exc:  # noqa: BLE001 - any failure of the peer's client is its row's
        return {"skipped": "affinetes %s cannot make a client: %s: %s" % (version, type(exc).__name__, exc)}

    async def measure():
        return await timed_async(env.ping, calls, warmup)

    try:
        result = summary(asyncio.run(measure()))
        result["version"] = version
        return result
    except Exception as exc:  # noqa: BLE001
        return {"skipped": "affinetes %s failed calling the server: %s: %s" % (version, type(exc).__name__, exc)}
    finally:
        try:
            asyncio.run(env.cleanup())
        except Exception:  # noqa: BLE001 - closing its HTTP client is best effort after the figures
            pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the environment's server (no auth)")
    parser.add_argument("--echo-url", required=True, help="the plain HTTP echo floor")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    import rayfine
    import rayfine.aio

    out = {"python": sys.version.split()[0]}
    print("python client bench: Python's HTTP floor", file=sys.stderr)
    out["python_http_floor"] = summary(python_http_floor(args.echo_url, args.calls, args.warmup))

    print("python client bench: rayfine sync", file=sys.stderr)
    env = rayfine.load_env(url=args.url)
    try:
        out["rayfine_sync"] = summary(timed(env.ping, args.calls, args.warmup))
    finally:
        env.cleanup()

    async def async_figures():
        aenv = await rayfine.aio.load_env(url=args.url)
        try:
            print("python client bench: rayfine async", file=sys.stderr)
            out["rayfine_async"] = summary(await timed_async(aenv.ping, args.calls, args.warmup))
            print("python client bench: rayfine async, %d in flight" % args.in_flight, file=sys.stderr)
            await throughput(aenv, args.in_flight, 1.0)  # warm-up: connections, the pool
            out["rayfine_async_throughput"] = {
                "per_second": await throughput(aenv, args.in_flight, args.seconds),
                "in_flight": args.in_flight,
                "seconds": args.seconds,
            }
        finally:
            await aenv.cleanup()

    asyncio.run(async_figures())

    print("python client bench: affinetes", file=sys.stderr)
    out["affinetes"] = affinetes_call_cost(args.url, args.calls, args.warmup)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
