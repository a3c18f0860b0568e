"""The ceiling for Python HTTP on this machine: aiohttp on uvloop, read the body, answer 200."""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from aiohttp import web

SUCCESS = b'{"success": true}'


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=SUCCESS, content_type="application/json")


async def serve(port: int) -> None:
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.port))


if __name__ == "__main__":
    main()
