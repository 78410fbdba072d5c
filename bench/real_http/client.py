"""The openai SDK through the gateway to uvicorn nodes (bench/real-http.sh)."""
import asyncio, random, sys, time
from openai import AsyncOpenAI, OpenAI

base = sys.argv[1]
keep_alive = float(sys.argv[2])
c = OpenAI(base_url=base, api_key="x", max_retries=0)
fails = 0
def check(cond, what):
    global fails
    if not cond:
        fails += 1
        print("FAIL", what)

models = c.models.list()
check([m.id for m in models.data] == ["tiny"], "models")
r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=300)
check(r.choices[0].message.content.split()[-1] == "t299", "non-stream content")
s = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=500, stream=True)
parts = [ch.choices[0].delta.content for ch in s if ch.choices and ch.choices[0].delta.content]
check(len(parts) == 500 and parts[-1] == "t499 ", f"stream 500 parts (got {len(parts)})")
e = c.embeddings.create(model="tiny", input=["a", "b", "c"])
check(len(e.data) == 3 and len(e.data[2].embedding) == 4096, "embeddings 3 x 4096")

async def many(n, conc):
    ac = AsyncOpenAI(base_url=base, api_key="x", max_retries=0)
    sem = asyncio.Semaphore(conc)
    bad = 0
    async def one(i):
        nonlocal bad
        async with sem:
            try:
                if i % 3 == 0:
                    st = await ac.chat.completions.create(model="tiny", messages=[{"role": "user", "content": str(i)}], max_tokens=50, stream=True)
                    k = 0
                    async for ch in st:
                        if ch.choices and ch.choices[0].delta.content:
                            k += 1
                    if k != 50: bad += 1
                elif i % 3 == 1:
                    r = await ac.chat.completions.create(model="tiny", messages=[{"role": "user", "content": str(i)}], max_tokens=20)
                    if r.usage.completion_tokens != 20: bad += 1
                else:
                    r = await ac.embeddings.create(model="tiny", input="x")
                    if len(r.data[0].embedding) != 4096: bad += 1
            except Exception as ex:
                bad += 1
                print("error", type(ex).__name__, ex)
    t = time.time()
    await asyncio.gather(*(one(i) for i in range(n)))
    await ac.close()
    return bad, time.time() - t

for round_ in range(3):
    bad, took = asyncio.run(many(300, 32))
    print(f"round {round_}: 300 mixed requests, {bad} bad, {took:.1f}s")
    check(bad == 0, f"round {round_}")
    # Longer than the nodes' keep-alive: the gateway's kept connections
    # are closed by the node while idle; the next round must not notice.
    time.sleep(keep_alive + 1)

# Come back just as the nodes close their idle connections: the race every
# proxy with kept connections has (a request written onto a connection the
# node is closing). Counted, not hidden: the gateway may retry it.
bad = 0
for i in range(20):
    time.sleep(keep_alive + random.uniform(-0.05, 0.05))
    try:
        r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": str(i)}], max_tokens=5)
        if r.usage.completion_tokens != 5:
            bad += 1
    except Exception as ex:
        bad += 1
        print("race error", type(ex).__name__, ex)
print(f"keep-alive race: 20 requests at the nodes' idle timeout, {bad} bad")
check(bad == 0, "keep-alive race")
print("FAILS", fails)
sys.exit(1 if fails else 0)
