"""Broker delivery benchmark: outbox to the local Redis, NATS JetStream, RabbitMQ and Mosquitto.

For each broker and batch size, N archived messages are queued for a broker destination
(`cdpd replay`), then cdpd (pinned to core 0) delivers the backlog, and this script (core 1)
counts what the broker holds: XLEN of the stream, the JetStream stream's message count, the
bound queue's message count, the messages an MQTT subscriber (QoS 1) receives. The rate is N
over the time from the first message seen to the last (startup excluded). The brokers run
unpinned, beside both.

    python bench/brokers.py [--messages 10000] [--concurrency 8] [--only redis]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aio_pika
import aiomqtt
import nats
import redis.asyncio as aioredis
import uvloop
from deliver import CLIENT_CPU, _ingest, _start_cdpd
from ingest import HERE, WRITE_KEY, free_port, peak_rss_mb, stop

Count = Callable[[], Awaitable[int]]
POLL_S = 0.005
MQTT_PORT = 1883


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--only", choices=["redis", "nats", "rabbitmq", "mqtt"])
    # Mosquitto delays its PUBACKs by Nagle's algorithm unless `set_tcp_nodelay true` is set:
    # point this at one so configured to see the difference.
    parser.add_argument("--mqtt-port", type=int, default=1883)
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    global MQTT_PORT
    MQTT_PORT = args.mqtt_port
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run(args))


async def run(args: argparse.Namespace) -> int:
    rows = []
    chosen = [t for t in TARGETS if not args.only or t.__name__.startswith(args.only)]
    for broker in chosen:
        for batch_size in (1, 100):
            name = broker.__name__.removesuffix("_target")
            async with broker() as (toml, count):
                rate, rss = await throughput(
                    name, toml, count, args.messages, args.concurrency, batch_size
                )
            rows.append((name, batch_size, rate, rss))
    print("| broker | batch_size | cdpd events/s | cdpd peak RSS MB |")
    print("|---|---|---|---|")
    for name, batch_size, rate, rss in rows:
        print(f"| {name} | {batch_size} | {rate:,.0f} | {rss:.0f} |")
    return 0


async def throughput(
    name: str, destination: str, count: Count, messages: int, concurrency: int, batch: int
) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="cdpd-brokers-") as tmp:
        port = free_port()
        plain = _config(Path(tmp), port, "")
        with_broker = _config(
            Path(tmp),
            port,
            destination + f"concurrency = {concurrency}\nbatch_size = {batch}\n",
        )
        await _ingest(plain, port, messages)
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "cdpd", "replay", "--destination", "broker",
             "--since", "2000-01-01", "--config", str(with_broker)],
            check=True, capture_output=True, cwd=HERE.parent,
        )  # fmt: skip
        proc = await _start_cdpd(with_broker, port)
        first_at = last_at = 0.0
        seen = 0
        deadline = time.perf_counter() + 300
        while seen < messages and time.perf_counter() < deadline:
            now_seen = await count()
            now = time.perf_counter()
            if now_seen and not seen:
                first_at = now
            if now_seen > seen:
                last_at = now
            seen = now_seen
            await asyncio.sleep(POLL_S)
        rss = peak_rss_mb(proc.pid)
        stop(proc)
    rate = seen / (last_at - first_at) if last_at > first_at else float("nan")
    print(f"{name} batch {batch:>3}: {rate:,.0f} events/s", file=sys.stderr)
    return rate, rss


def _config(tmp: Path, port: int, destination: str) -> Path:
    path = tmp / ("with-broker.toml" if destination else "plain.toml")
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n[logging]\naccess_log = false\n'
        f'[storage]\ndata_dir = "{tmp / "var"}"\nmin_free_disk_bytes = 0\n'
        f'[[sources]]\nname = "bench"\nwrite_key = "{WRITE_KEY}"\n{destination}'
    )
    return path


def _entry(kind: str, settings: str) -> str:
    return f'[[destinations]]\nname = "broker"\ntype = "{kind}"\n{settings}'


@asynccontextmanager
async def redis_target() -> AsyncIterator[tuple[str, Count]]:
    key = f"cdpd-bench-{secrets.token_hex(4)}"
    client = aioredis.Redis()
    yield _entry("redis", f'stream = "{key}"\n'), lambda: client.xlen(key)
    await client.delete(key)
    await client.aclose()


@asynccontextmanager
async def nats_target() -> AsyncIterator[tuple[str, Count]]:
    name, subject = f"CDPD_BENCH_{secrets.token_hex(4)}", f"cdpd-bench-{secrets.token_hex(4)}"
    client = await nats.connect("nats://127.0.0.1:4222")
    js = client.jetstream()
    await js.add_stream(name=name, subjects=[subject])

    async def count() -> int:
        return (await js.stream_info(name)).state.messages

    yield _entry("nats", f'subject = "{subject}"\n'), count
    await js.delete_stream(name)
    await client.close()


@asynccontextmanager
async def rabbitmq_target() -> AsyncIterator[tuple[str, Count]]:
    name = f"cdpd-bench-{secrets.token_hex(4)}"
    connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    channel = await connection.channel()
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(name, durable=True)
    await queue.bind(exchange, "#")

    async def count() -> int:
        declared = await channel.declare_queue(name, passive=True)
        return declared.declaration_result.message_count or 0

    yield _entry("rabbitmq", f'exchange = "{name}"\n'), count
    await queue.delete(if_unused=False, if_empty=False)
    await exchange.delete()
    await connection.close()


@asynccontextmanager
async def mqtt_target() -> AsyncIterator[tuple[str, Count]]:
    topic = f"cdpd-bench-{secrets.token_hex(4)}"
    received = 0

    async def listen(client: aiomqtt.Client) -> None:
        nonlocal received
        async for _ in client.messages:
            received += 1

    async def count() -> int:
        return received

    async with aiomqtt.Client("127.0.0.1", MQTT_PORT) as client:
        await client.subscribe(topic, qos=1)
        listener = asyncio.create_task(listen(client))
        yield _entry("mqtt", f'topic = "{topic}"\nport = {MQTT_PORT}\n'), count
        listener.cancel()


TARGETS = (redis_target, nats_target, rabbitmq_target, mqtt_target)

if __name__ == "__main__":
    raise SystemExit(main())
