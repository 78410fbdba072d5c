"""Hold many client connections open through a gateway and report its memory.

Used by bench/scale.sh. Two phases against GATEWAY (host:port):
  idle N    -- open N keep-alive connections, send one small request on each,
               keep them open idle; report the gateway's RSS and open
               descriptors, then close them all and report again.
  streams N -- open N connections, start one SSE stream on each (a slow
               simulated node keeps it going), wait until every stream has sent
               its first event; report RSS and descriptors while all are open,
               then close them and report again.
Only the standard library: asyncio sockets.
"""

import asyncio
import os
import sys
import time

GATEWAY, MODE, N, PID = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
HOST, PORT = GATEWAY.split(":")
PORT = int(PORT)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def request(stream):
    if stream:
        body = b'{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"Tell a long story."}],"max_tokens":4000,"stream":true}'
    else:
        body = b'{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"hi"}],"max_tokens":1}'
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


async def open_one(stream, held):
    for attempt in range(20):
        try:
            reader, writer = await asyncio.open_connection(HOST, PORT)
            break
        except OSError:
            await asyncio.sleep(0.05 * (attempt + 1))
    else:
        return False
    writer.write(request(stream))
    await writer.drain()
    if stream:
        # Wait for the head and the first event.
        data = b""
        while b"data:" not in data:
            chunk = await reader.read(4096)
            if not chunk:
                return False
            data += chunk
    else:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await reader.read(4096)
            if not chunk:
                return False
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(rest) < length:
            chunk = await reader.read(4096)
            if not chunk:
                return False
            rest += chunk
    held.append(writer)
    return True


async def settle():
    """Wait until the gateway's RSS stops falling: at least 6 s, at most 12."""
    since, last = time.time(), rss_mb(PID)
    while time.time() < since + 12:
        await asyncio.sleep(1)
        now = rss_mb(PID)
        if now > last - 1 and time.time() > since + 6:
            break
        last = min(last, now)


async def main():
    stream = MODE == "streams"
    base_rss, base_fds = rss_mb(PID), fds(PID)
    held = []
    started = time.time()
    sem = asyncio.Semaphore(500)

    async def guarded():
        async with sem:
            return await open_one(stream, held)

    results = await asyncio.gather(*(guarded() for _ in range(N)))
    ok = sum(results)
    await asyncio.sleep(2)
    if not stream:
        # Idle connections park after 1 s and the gateway gives the freed
        # heap back within seconds (it looks every 5 s): report the
        # settled figure, waiting up to 12 s more.
        await settle()
    rss, open_fds = rss_mb(PID), fds(PID)
    print(f"{MODE}: {ok}/{N} open after {time.time() - started:.1f}s: gateway RSS {rss:.0f} MB "
          f"(+{rss - base_rss:.0f} MB, {(rss - base_rss) * 1024 / max(ok, 1):.1f} KB each), "
          f"descriptors {open_fds} (+{open_fds - base_fds})")
    for writer in held:
        writer.close()
    deadline = time.time() + 30
    while time.time() < deadline and fds(PID) > base_fds + 64:
        await asyncio.sleep(0.5)
    # The gateway gives freed heap back within seconds of a wave of
    # closes (it looks every 5 s): wait for RSS to settle, up to 12 s.
    closed_at = time.time()
    await settle()
    print(f"{MODE}: after closing: RSS {rss_mb(PID):.0f} MB after {time.time() - closed_at:.0f}s, "
          f"descriptors {fds(PID)} (was {base_fds})")


asyncio.run(main())
