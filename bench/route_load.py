#!/usr/bin/env python3
"""Load for bench/route: a shared-prefix chat workload sent to several apps of colo's edge, the
same requests to each, and what each app's routing made of it.

    route_load.py --edge URL --apps rr,ll,score [--levels 4,8,16] [--requests N] ...

The workload: --prompts system prompts of --prompt-words MIN,MAX words each (fixed by --seed),
picked with Zipf popularity (--zipf s); each request is one of them plus a short question of its
own, streamed, --max-tokens long. At each level, that many users send requests back to back
(closed loop) until --requests are answered. Every app gets the same sequence of requests; the
order of the apps rotates from level to level. Time to first token is the time to the first
server-sent event that carries text.

Prefix-cache hits are read from each app's machines: `--machines FILE` is `colo ps --json`, and
each machine's /metrics gives vLLM's `vllm:prefix_cache_hits`/`_queries` (the stand-in engine
reports them) or llama-server's prompt token counts (`llamacpp:prompt_tokens_total` is what it
had to process, so the hit rate is one minus that over the prompt tokens sent, as llama-server
counts them in `usage.prompt_tokens`).

Prints one JSON object per (level, app) on stdout.
"""

import argparse
import asyncio
import json
import random
import statistics
import sys
import time

import aiohttp

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
         "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def zipf_weights(n, s):
    return [1.0 / (k ** s) for k in range(1, n + 1)]


def workload(args, level):
    rng = random.Random(args.seed)
    lo, hi = args.prompt_words
    systems = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(args.prompts)]
    weights = zipf_weights(args.prompts, args.zipf)
    rng = random.Random(args.seed * 1000 + level)
    requests = []
    for i in range(args.requests):
        p = rng.choices(range(args.prompts), weights)[0]
        question = " ".join(rng.choice(WORDS) for _ in range(args.question_words))
        requests.append((p, f"{systems[p]}\nuser {i}: {question}"))
    return requests


async def metric_totals(session, machines, names):
    """Sum of each named metric over `machines`' /metrics pages."""
    totals = {name: 0.0 for name in names}
    for m in machines:
        try:
            async with session.get(f"http://{m}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
                text = await r.text()
        except Exception:
            continue
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) < 2:
                continue
            name = parts[0].split("{")[0]
            for wanted in names:
                if name in (wanted, wanted + "_total"):
                    try:
                        totals[wanted] += float(parts[-1] if len(parts) == 2 else parts[1])
                    except ValueError:
                        pass
    return totals


async def one(session, edge, app, prompt, max_tokens, results):
    body = {"model": app, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 0}
    started = time.perf_counter()
    ttft = None
    prompt_tokens = 0
    async with session.post(f"{edge}/v1/completions", json=body) as r:
        machine = r.headers.get("colo-machine", "-")
        if r.status != 200:
            results.append({"ok": False, "status": r.status})
            await r.read()
            return
        async for raw in r.content:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            choices = event.get("choices") or []
            if ttft is None and choices and choices[0].get("text"):
                ttft = time.perf_counter() - started
            usage = event.get("usage")
            if usage:
                prompt_tokens = usage.get("prompt_tokens", 0)
    results.append({"ok": True, "ttft": ttft if ttft is not None else time.perf_counter() - started,
                    "total": time.perf_counter() - started, "machine": machine, "prompt_tokens": prompt_tokens})


async def run_app(args, session, app, requests, level, machines):
    names = ["vllm:prefix_cache_hits", "vllm:prefix_cache_queries", "llamacpp:prompt_tokens"]
    before = await metric_totals(session, machines, names)
    queue = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    results = []

    async def user():
        while True:
            try:
                _, prompt = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                await one(session, args.edge, app, prompt, args.max_tokens, results)
            except Exception as e:
                results.append({"ok": False, "status": str(e)})

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(level)))
    elapsed = time.perf_counter() - started
    after = await metric_totals(session, machines, names)
    ok = [r for r in results if r["ok"]]
    ttfts = sorted(r["ttft"] * 1000 for r in ok)
    hits = after["vllm:prefix_cache_hits"] - before["vllm:prefix_cache_hits"]
    queries = after["vllm:prefix_cache_queries"] - before["vllm:prefix_cache_queries"]
    sent = sum(r["prompt_tokens"] for r in ok)
    processed = after["llamacpp:prompt_tokens"] - before["llamacpp:prompt_tokens"]
    if queries > 0:
        hit_rate = hits / queries
    elif sent > 0 and processed > 0:
        hit_rate = max(0.0, 1.0 - processed / sent)
    else:
        hit_rate = None
    per_machine = {}
    for r in ok:
        per_machine[r["machine"]] = per_machine.get(r["machine"], 0) + 1

    def pct(p):
        return ttfts[min(len(ttfts) - 1, int(p * len(ttfts)))] if ttfts else None

    return {"level": level, "app": app, "requests": len(results), "failed": len(results) - len(ok),
            "ttft_p50_ms": pct(0.5), "ttft_p90_ms": pct(0.9), "ttft_mean_ms": statistics.mean(ttfts) if ttfts else None,
            "throughput_rps": len(ok) / elapsed if elapsed > 0 else 0.0, "hit_rate": hit_rate,
            "per_machine": per_machine}


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edge", required=True)
    ap.add_argument("--apps", required=True)
    ap.add_argument("--levels", default="4,8,16")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt-words", default="1000,2000")
    ap.add_argument("--question-words", type=int, default=12)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--machines", help="colo ps --json output, to read the engines' prefix-cache counters")
    ap.add_argument("--warmup", type=int, default=0, help="requests per app before the first level, not counted")
    args = ap.parse_args()
    args.prompt_words = tuple(int(x) for x in args.prompt_words.split(","))
    apps = args.apps.split(",")
    machines_by_app = {app: [] for app in apps}
    if args.machines:
        with open(args.machines) as f:
            for m in json.load(f):
                if m.get("app") in machines_by_app and m.get("state") == "started" and m.get("addr"):
                    machines_by_app[m["app"]].append(m["addr"])
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        if args.warmup:
            warm = workload(args, 0)[: args.warmup]
            for app in apps:
                await run_app(args, session, app, warm, 4, [])
        for round_, level in enumerate(int(x) for x in args.levels.split(",")):
            requests = workload(args, level)
            order = apps[round_ % len(apps):] + apps[: round_ % len(apps)]
            for app in order:
                row = await run_app(args, session, app, requests, level, machines_by_app[app])
                print(json.dumps(row), flush=True)
                print(f"[route] level {level} {app}: ttft p50 {row['ttft_p50_ms']:.0f} ms p90 {row['ttft_p90_ms']:.0f} ms, "
                      f"{row['throughput_rps']:.1f} req/s, hit rate {row['hit_rate']}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
