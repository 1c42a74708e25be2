#!/usr/bin/env python3
"""Helpers for bench/generate: readiness waits, greedy token checks, the streaming load
client and the report.

    generate_bench.py wait   --url URL [--timeout S]
    generate_bench.py greedy --kind colo|llama-server|llama-py --base-url URL --model NAME
                             --vocab V [--n 32] [--prompt-len 32] [--seed S] [--gguf F] --out F
    generate_bench.py load   --kind ... --base-url URL --model NAME --vocab V --label TEXT
                             [--streams 1,4,16,64] [--max-tokens 128] [--prompt-len 32]
                             [--reps 3] [--level-timeout S] [--tokenizer F] --out F
                             [--seed S (prompts; rounds use different ones)]
    generate_bench.py merge  --run F [--run F ...] --out F   (rounds of one server: medians)
    generate_bench.py report --result F [--result F ...] [--greedy F] [--json] [--meta F]

What is measured, per level of N concurrent streams: N requests start together, each a
streamed /v1/completions of --max-tokens tokens (ignore_eos) after a --prompt-len prompt of
random token ids (a different prompt per request, so no engine can reuse a cached prefix).
At 1 stream, --reps requests run one after another. For each level:
  aggregate tok/s  = completion tokens of all requests / wall time from the first send to the
                     last token
  per-stream tok/s = median over requests of (tokens - 1) / (last token - first token): the
                     decode speed one user sees once output has started
  TTFT             = median time from send to the first streamed chunk
"""
import argparse
import asyncio
import json
import random
import statistics
import sys
import time

KINDS = ("colo", "llama-server", "llama-py")
# ids 0-4 are special, 5-260 the byte symbols; prompts use merged (letters and space) tokens so
# they also survive a round trip through text for llama-cpp-python's server.
FIRST_MERGE_ID = 261


def log(*a):
    print("[generate]", *a, file=sys.stderr, flush=True)


def build_running():
    """Whether a cargo or rustc process is running (it shares the CPUs with the engines)."""
    import subprocess
    for name in ("rustc", "cargo"):
        try:
            if subprocess.run(["pgrep", "-x", name], stdout=subprocess.DEVNULL).returncode == 0:
                return True
        except OSError:
            return False
    return False


def prompt_ids(seed, length, vocab):
    rng = random.Random(seed)
    return [rng.randrange(FIRST_MERGE_ID, vocab) for _ in range(length)]


class Detok:
    """Token ids -> text through tokenizer.json (byte-level BPE), for llama-cpp-python's server,
    whose completions API takes text only."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            tok = json.load(f)
        self.id_to_text = {int(i): t for t, i in tok["model"]["vocab"].items()}
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        self.byte_of = {chr(c): b for b, c in zip(bs, cs)}

    def __call__(self, ids):
        out = bytearray()
        for i in ids:
            for ch in self.id_to_text.get(i, ""):
                out.append(self.byte_of.get(ch, ord("?")))
        return out.decode("utf-8", errors="replace")


def body_for(kind, model, ids, max_tokens, detok, stream=True):
    if kind == "llama-py":
        # No token-id prompts and no ignore_eos there: text prompt, eos ids biased away.
        body = {"prompt": detok(ids), "max_tokens": max_tokens, "temperature": 0.0,
                "logit_bias": {"1": -100.0, "4": -100.0}, "logit_bias_type": "input_ids"}
    else:
        body = {"prompt": ids, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}
    body["model"] = model
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


# --- wait --------------------------------------------------------------------------------

async def cmd_wait(args):
    import aiohttp
    deadline = time.monotonic() + args.timeout
    last = None
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(args.url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status == 200:
                        return 0
                    last = f"HTTP {r.status}"
            except Exception as e:  # noqa: BLE001 - anything means "not yet"
                last = repr(e)
            await asyncio.sleep(0.5)
    log(f"{args.url} not ready after {args.timeout}s: {last}")
    return 1


# --- one streamed request ------------------------------------------------------------------

async def stream_one(session, url, body, rec):
    """Streams one completion; fills rec with send/first/last times and the token count."""
    import aiohttp
    rec.update(t_send=time.perf_counter(), t_first=None, t_last=None, chunks=0, usage=None, error=None)
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=None, sock_read=300)) as r:
            if r.status != 200:
                rec["error"] = f"HTTP {r.status}: {(await r.text())[:300]}"
                return
            buf = b""
            async for data in r.content.iter_any():
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        continue
                    try:
                        ev = json.loads(payload)
                    except ValueError:
                        continue
                    if "error" in ev:
                        rec["error"] = str(ev["error"])[:300]
                        continue
                    if ev.get("usage"):
                        rec["usage"] = ev["usage"]
                    choices = ev.get("choices") or []
                    if not choices:
                        continue
                    c = choices[0]
                    text = c.get("text")
                    if text is None:
                        text = (c.get("delta") or {}).get("content")
                    has_token = bool(text) or bool(c.get("token_ids")) or c.get("finish_reason") is None
                    if not has_token:
                        continue
                    now = time.perf_counter()
                    if rec["t_first"] is None:
                        rec["t_first"] = now
                    rec["t_last"] = now
                    rec["chunks"] += 1
    except asyncio.CancelledError:
        rec["error"] = rec["error"] or "cancelled (level time limit)"
        raise
    except Exception as e:  # noqa: BLE001
        rec["error"] = repr(e)[:300]
    finally:
        rec["t_end"] = time.perf_counter()


def tokens_of(rec):
    u = rec.get("usage") or {}
    if isinstance(u.get("completion_tokens"), int) and u["completion_tokens"] > 0:
        return u["completion_tokens"]
    return rec.get("chunks", 0)


def summarize(recs, t0, streams):
    toks = [tokens_of(r) for r in recs]
    ends = [r["t_last"] for r in recs if r.get("t_last")]
    wall = (max(ends) - t0) if ends else float("nan")
    per = [(tokens_of(r) - 1) / (r["t_last"] - r["t_first"]) for r in recs
           if r.get("t_first") and r.get("t_last") and r["t_last"] > r["t_first"] and tokens_of(r) > 1]
    ttft = [(r["t_first"] - r["t_send"]) * 1000 for r in recs if r.get("t_first")]
    errors = [r["error"] for r in recs if r.get("error")]
    return {
        "streams": streams,
        "requests": len(recs),
        "completion_tokens": sum(toks),
        "tokens_per_request": sorted(set(toks)),
        "wall_s": round(wall, 3),
        "agg_tok_s": round(sum(toks) / wall, 3) if ends and wall > 0 else None,
        "per_stream_tok_s": round(statistics.median(per), 3) if per else None,
        "ttft_ms_median": round(statistics.median(ttft), 1) if ttft else None,
        "ttft_ms_max": round(max(ttft), 1) if ttft else None,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "partial": any(r.get("error", "") and "cancelled" in r["error"] for r in recs),
    }


async def cmd_load(args):
    import aiohttp
    url = args.base_url.rstrip("/") + "/v1/completions"
    detok = Detok(args.tokenizer) if args.kind == "llama-py" else None
    levels = [int(x) for x in args.streams.split(",") if x.strip()]
    out = {"label": args.label, "kind": args.kind, "max_tokens": args.max_tokens,
           "prompt_len": args.prompt_len, "levels": []}
    # a fresh connection per request: no client reuses a keep-alive connection the server
    # may already have closed, for either engine
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s:
        # warm-up: one short request (first-touch of weights, thread pools)
        rec = {}
        await stream_one(s, url, body_for(args.kind, args.model, prompt_ids(999_999, args.prompt_len, args.vocab),
                                          8, detok), rec)
        if rec.get("error"):
            log(f"{args.label}: warm-up failed: {rec['error']}")
            return 1
        seq = 0
        for n in levels:
            reps = args.reps if n == 1 else 1
            recs = []
            busy = build_running()
            t0 = time.perf_counter()
            deadline = t0 + args.level_timeout

            async def wave(count):
                nonlocal seq
                batch = []
                for _ in range(count):
                    seq += 1
                    batch.append({})
                tasks = [asyncio.create_task(stream_one(
                    s, url, body_for(args.kind, args.model,
                                     prompt_ids(args.seed * 100_000 + seq - len(batch) + k, args.prompt_len, args.vocab),
                                     args.max_tokens, detok), batch[k])) for k in range(count)]
                recs.extend(batch)
                left = max(deadline - time.perf_counter(), 0.001)
                done, pending = await asyncio.wait(tasks, timeout=left)
                for t in pending:
                    t.cancel()
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
                return not pending

            finished = True
            for _ in range(reps):
                if not await wave(n):
                    finished = False
                    break
            res = summarize(recs, t0, n)
            res["timed_out"] = not finished
            res["build_running"] = busy or build_running()
            out["levels"].append(res)
            log(f"{args.label}: {n:>3} streams: {res['agg_tok_s']} tok/s aggregate, "
                f"{res['per_stream_tok_s']} tok/s per stream, TTFT {res['ttft_ms_median']} ms"
                + (f", {res['errors']} errors ({res['first_error']})" if res["errors"] else "")
                + (" [level time limit hit]" if not finished else "")
                + (" [a cargo/rustc build was running]" if res["build_running"] else ""))
            if not finished:
                log(f"{args.label}: skipping higher levels after a time limit")
                break
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


def load_results(paths):
    """The results in `paths` that can be read (a missing or broken one is said, and skipped)."""
    results = []
    for path in paths:
        try:
            with open(path) as f:
                results.append(json.load(f))
        except (OSError, ValueError) as e:
            log(f"no result in {path}: {e}")
    return results


def cmd_merge(args):
    """One result from several rounds' results of the same server: each level's numbers are the
    medians over the rounds where it finished; each round's levels are kept under "rounds"."""
    runs = load_results(args.run)
    if not runs:
        return 1
    merged = {k: v for k, v in runs[0].items() if k != "levels"}
    merged["rounds"] = [r["levels"] for r in runs]
    merged["levels"] = []
    for streams in [lv["streams"] for lv in runs[0]["levels"]]:
        all_levels = [lv for r in runs for lv in r["levels"] if lv["streams"] == streams]
        done = [lv for lv in all_levels if not lv.get("timed_out")]

        def median(key):
            values = [lv[key] for lv in done if lv.get(key) is not None]
            return round(statistics.median(values), 3) if values else None
        merged["levels"].append({
            "streams": streams,
            "rounds": len(done),
            "requests": sum(lv["requests"] for lv in all_levels),
            "completion_tokens": sum(lv["completion_tokens"] for lv in all_levels),
            "agg_tok_s": median("agg_tok_s"),
            "per_stream_tok_s": median("per_stream_tok_s"),
            "ttft_ms_median": median("ttft_ms_median"),
            "ttft_ms_max": max((lv["ttft_ms_max"] for lv in done if lv.get("ttft_ms_max") is not None), default=None),
            "errors": sum(lv["errors"] for lv in all_levels),
            "first_error": next((lv["first_error"] for lv in all_levels if lv.get("first_error")), None),
            "timed_out": not done,
            "build_running": any(lv.get("build_running") for lv in all_levels),
        })
    with open(args.out, "w") as f:
        json.dump(merged, f, indent=1)
    return 0


def round_ratio(colo, peer, streams):
    """The median over rounds of colo's aggregate tok/s over the peer's at `streams`, from merged
    results (round i of one against round i of the other); None without numbers for both."""
    ratios = []
    for a, b in zip(colo.get("rounds") or [], peer.get("rounds") or []):
        x = next((lv for lv in a if lv["streams"] == streams and not lv.get("timed_out")), None)
        y = next((lv for lv in b if lv["streams"] == streams and not lv.get("timed_out")), None)
        if x and y and x.get("agg_tok_s") and y.get("agg_tok_s"):
            ratios.append(x["agg_tok_s"] / y["agg_tok_s"])
    return statistics.median(ratios) if ratios else None


# --- greedy check --------------------------------------------------------------------------

async def cmd_greedy(args):
    ids = prompt_ids(args.seed, args.prompt_len, args.vocab)
    res = {"kind": args.kind, "label": args.label or args.kind, "prompt": ids, "tokens": None, "error": None}
    try:
        if args.kind == "llama-py":
            res["tokens"] = greedy_pyapi(args.gguf, ids, args.n)
        else:
            import aiohttp
            async with aiohttp.ClientSession() as s:
                if args.kind == "colo":
                    url = args.base_url.rstrip("/") + "/v1/completions"
                    body = {"model": args.model, "prompt": ids, "max_tokens": args.n, "temperature": 0.0,
                            "ignore_eos": True, "return_token_ids": True}
                else:  # llama-server's own endpoint returns the ids
                    url = args.base_url.rstrip("/") + "/completion"
                    body = {"prompt": ids, "n_predict": args.n, "temperature": 0.0, "top_k": 1,
                            "ignore_eos": True, "return_tokens": True, "cache_prompt": False}
                async with s.post(url, json=body, timeout=aiohttp.ClientTimeout(total=600)) as r:
                    j = await r.json(content_type=None)
                    if r.status != 200:
                        raise RuntimeError(f"HTTP {r.status}: {str(j)[:300]}")
                if args.kind == "colo":
                    res["tokens"] = j["choices"][0]["token_ids"]
                    res["prompt_tokens"] = (j.get("usage") or {}).get("prompt_tokens")
                else:
                    res["tokens"] = j["tokens"]
                    res["prompt_tokens"] = j.get("tokens_evaluated")
    except Exception as e:  # noqa: BLE001
        res["error"] = repr(e)[:500]
        log(f"greedy {args.kind}: {res['error']}")
    with open(args.out, "w") as f:
        json.dump(res, f)
    return 0


def greedy_pyapi(gguf_path, ids, n):
    from llama_cpp import Llama
    llm = Llama(model_path=gguf_path, n_ctx=max(256, len(ids) + n + 8), n_threads=2, verbose=False)
    out = []
    for tok in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        out.append(int(tok))
        if len(out) >= n:
            break
    return out


# --- report --------------------------------------------------------------------------------

def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def agreeing_prefix(a, b):
    n = 0
    for x, y in zip(a or [], b or []):
        if x != y:
            break
        n += 1
    return n


# --- paired ------------------------------------------------------------------------------

async def cmd_paired(args):
    """One stream, colo and the peer request by request, the order swapped each pair, the same
    prompt within a pair and a new one each pair. On a machine whose speed drifts within minutes
    each pair compares like with like, where whole rounds minutes apart need not."""
    import aiohttp
    urls = {"colo": args.colo_url.rstrip("/") + "/v1/completions",
            "peer": args.peer_url.rstrip("/") + "/v1/completions"}
    kinds = {"colo": "colo", "peer": args.peer_kind}
    speeds = {"colo": [], "peer": []}
    ratios = []
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s:
        for i in range(args.pairs + 1):  # pair 0 warms both up and is not counted
            ids = prompt_ids(args.seed * 100_003 + i, args.prompt_len, args.vocab)
            got = {}
            for who in (("colo", "peer") if i % 2 else ("peer", "colo")):
                rec = {}
                await stream_one(s, urls[who], body_for(kinds[who], args.model, ids, args.max_tokens, None), rec)
                if rec.get("error") or not rec.get("t_last"):
                    log(f"paired: {who} failed: {rec.get('error') or 'no tokens'}")
                    return 1
                got[who] = tokens_of(rec) / (rec["t_last"] - rec["t_send"])
            if i == 0:
                continue
            for who in got:
                speeds[who].append(got[who])
            ratios.append(got["colo"] / got["peer"])
            log(f"paired {i}/{args.pairs}: colo {got['colo']:.1f} tok/s, peer {got['peer']:.1f}")
    out = {"pairs": len(ratios), "max_tokens": args.max_tokens, "prompt_len": args.prompt_len,
           "colo_tok_s_median": round(statistics.median(speeds["colo"]), 3),
           "peer_tok_s_median": round(statistics.median(speeds["peer"]), 3),
           "ratio_median": round(statistics.median(ratios), 4),
           "colo_faster": sum(r > 1 for r in ratios), "ratios": [round(r, 4) for r in ratios]}
    with open(args.out, "w") as f:
        json.dump(out, f)
    return 0


def cmd_report(args):
    results = load_results(args.result)
    meta = {}
    if args.meta:
        with open(args.meta) as f:
            meta = json.load(f)
    greedy = {}
    for path in args.greedy or []:
        try:
            with open(path) as f:
                g = json.load(f)
            greedy[path] = g
        except (OSError, ValueError):
            pass

    rows = []
    for r in results:
        for lv in r["levels"]:
            rows.append((r["label"], lv["streams"], fmt(lv["agg_tok_s"]), fmt(lv["per_stream_tok_s"]),
                         fmt(lv["ttft_ms_median"], 0),
                         " ".join(x for x in ("time limit" if lv.get("timed_out") else "",
                                              f"{lv['errors']} err" if lv["errors"] else "",
                                              "build running" if lv.get("build_running") else "") if x)))
    head = ("engine", "streams", "agg tok/s", "per-stream tok/s", "TTFT ms (median)", "note")
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))
    print(line.rstrip())
    print("-" * len(line.rstrip()))
    for row in rows:
        print("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths))).rstrip())

    # greedy agreement: the colo file against each llama.cpp file
    g_colo = next((g for g in greedy.values() if g.get("kind") == "colo"), None)
    agree = {}
    for path, g in greedy.items():
        if g is g_colo:
            continue
        label = g.get("label") or path
        agree[label] = {"agreeing_prefix": agreeing_prefix(g_colo and g_colo.get("tokens"), g.get("tokens")),
                        "compared": min(len((g_colo or {}).get("tokens") or []), len(g.get("tokens") or [])),
                        "error": g.get("error")}
    if g_colo is not None:
        print()
        print(f"greedy check (temperature 0, {len(g_colo.get('prompt') or [])} prompt ids): "
              f"colo {g_colo.get('tokens')[:12] if g_colo.get('tokens') else g_colo.get('error')}...")
        for label, a in agree.items():
            print(f"  vs {label}: first {a['agreeing_prefix']} of {a['compared']} tokens agree"
                  + (f" ({a['error']})" if a["error"] else ""))

    def level(label_prefix, streams):
        for r in results:
            if r["label"] == label_prefix:
                for lv in r["levels"]:
                    if lv["streams"] == streams and not lv.get("timed_out"):
                        return lv
        return None

    def ratio_at(streams):
        colo = next((r for r in results if r["label"] == args.colo_label), None)
        peer = next((r for r in results if r["label"] == args.peer_label), None)
        if colo and peer and colo.get("rounds") and peer.get("rounds"):
            return round_ratio(colo, peer, streams)
        c, p = level(args.colo_label, streams), level(args.peer_label, streams)
        return (c["agg_tok_s"] / p["agg_tok_s"]) if c and p and c["agg_tok_s"] and p["agg_tok_s"] else None

    c1, c16 = level(args.colo_label, 1), level(args.colo_label, 16)
    ratio, ratio16 = ratio_at(1), ratio_at(16)
    scaling = (c16["agg_tok_s"] / c1["agg_tok_s"]) if c1 and c16 and c1["agg_tok_s"] and c16["agg_tok_s"] else None
    ttft = c1["ttft_ms_median"] if c1 else None
    rounds = max((len(r.get("rounds") or []) for r in results), default=0)
    if rounds:
        print()
        print(f"{rounds} rounds: numbers above are medians over rounds; each ratio below is the median of the rounds' ratios")

    paired = None
    if args.paired:
        with open(args.paired) as f:
            paired = json.load(f)
        print(f"one stream, request by request ({paired['pairs']} pairs of {paired['max_tokens']} tokens): "
              f"colo {fmt(paired['colo_tok_s_median'])} tok/s, {args.peer_label} {fmt(paired['peer_tok_s_median'])}; "
              f"median ratio {fmt(paired['ratio_median'], 3)}, colo faster in {paired['colo_faster']} of {paired['pairs']}")

    if args.json:
        print()
        print(json.dumps({"meta": meta, "results": results, "greedy": list(greedy.values()),
                          "greedy_agreement": agree, "paired": paired,
                          "summary": {"ratio_1_vs_llamacpp": ratio, "ratio_16_vs_llamacpp": ratio16,
                                      "scaling_16": scaling, "ttft_ms": ttft, "rounds": rounds,
                                      "ratio_1_paired": paired and paired["ratio_median"]}},
                         indent=1))
    print(f"generate ratio_1_vs_llamacpp={fmt(ratio, 3) if ratio is not None else 'nan'} "
          f"ratio_16_vs_llamacpp={fmt(ratio16, 3) if ratio16 is not None else 'nan'} "
          f"scaling_16={fmt(scaling, 3) if scaling is not None else 'nan'} "
          f"ttft_ms={fmt(ttft, 1) if ttft is not None else 'nan'}"
          + (f" ratio_1_paired={fmt(paired['ratio_median'], 3)}" if paired else ""))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait")
    w.add_argument("--url", required=True)
    w.add_argument("--timeout", type=float, default=120)
    for name in ("greedy", "load"):
        p = sub.add_parser(name)
        p.add_argument("--kind", choices=KINDS, required=True)
        p.add_argument("--base-url", default="")
        p.add_argument("--model", default="m")
        p.add_argument("--vocab", type=int, required=True)
        p.add_argument("--prompt-len", type=int, default=32)
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--out", required=True)
    g = sub.choices["greedy"]
    g.add_argument("--n", type=int, default=32)
    g.add_argument("--gguf", default="")
    g.add_argument("--label", default="")
    ld = sub.choices["load"]
    ld.add_argument("--label", required=True)
    ld.add_argument("--streams", default="1,4,16,64")
    ld.add_argument("--max-tokens", type=int, default=128)
    ld.add_argument("--reps", type=int, default=3)
    ld.add_argument("--level-timeout", type=float, default=300)
    ld.add_argument("--tokenizer", default="")
    pr = sub.add_parser("paired")
    pr.add_argument("--colo-url", required=True)
    pr.add_argument("--peer-url", required=True)
    pr.add_argument("--peer-kind", choices=("colo", "llama-server"), default="llama-server")
    pr.add_argument("--model", default="m")
    pr.add_argument("--vocab", type=int, required=True)
    pr.add_argument("--prompt-len", type=int, default=32)
    pr.add_argument("--max-tokens", type=int, default=128)
    pr.add_argument("--pairs", type=int, default=20)
    pr.add_argument("--seed", type=int, default=7)
    pr.add_argument("--out", required=True)
    m = sub.add_parser("merge")
    m.add_argument("--run", action="append", default=[])
    m.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("--result", action="append", default=[])
    r.add_argument("--greedy", action="append", default=[])
    r.add_argument("--meta", default="")
    r.add_argument("--paired", default="")
    r.add_argument("--json", action="store_true")
    r.add_argument("--colo-label", default="colo (edge) f32")
    r.add_argument("--peer-label", default="llama.cpp f32")
    args = ap.parse_args()
    if args.cmd == "wait":
        return asyncio.run(cmd_wait(args))
    if args.cmd == "greedy":
        return asyncio.run(cmd_greedy(args))
    if args.cmd == "load":
        return asyncio.run(cmd_load(args))
    if args.cmd == "paired":
        return asyncio.run(cmd_paired(args))
    if args.cmd == "merge":
        return cmd_merge(args)
    return cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
