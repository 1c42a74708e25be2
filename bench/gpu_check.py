#!/usr/bin/env python3
"""The Python half of scripts/gpu-check: the models it needs, the PyTorch peer, the report.

    gpu_check.py bert    --template D --out D [--seed N]
        A BERT model of the template's shape (all-MiniLM-L6-v2's config and tokenizer, carried
        without its weights) with random weights from transformers, as sentence-transformers
        reads it. Embedding speed does not depend on the weights' values, and colo's answers
        are checked against the peer's on the same weights.
    gpu_check.py torch-generate --model-dir D --device cuda|cpu --out F
                 [--prompt-len 32] [--max-tokens 128] [--batches 1,16] [--prefill-len 512]
        transformers' LlamaForCausalLM in the weights' own format on the device, greedy: the
        prefill time of one --prefill-len prompt, and decode tokens/s at each batch, measured
        as (new tokens after the first) / (time of the whole generate - time of a one-token one).
    gpu_check.py report  --dir D --out F
        Gathers the stage files under D (see scripts/gpu-check) into one JSON report and prints
        it as tables; the last line is `gpu-check ...` with the ratios.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time


def log(*a):
    print("[gpu-check]", *a, file=sys.stderr, flush=True)


def cmd_bert(args):
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    os.makedirs(args.out, exist_ok=True)
    for name in os.listdir(args.template):
        src = os.path.join(args.template, name)
        if name == "model.safetensors":
            continue
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(args.out, name), dirs_exist_ok=True)
        else:
            shutil.copy(src, os.path.join(args.out, name))
    torch.manual_seed(args.seed)
    model = BertModel(BertConfig.from_pretrained(args.template))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    log(f"bert: {sum(v.numel() for v in state.values()) / 1e6:.1f} M random parameters in {args.out}")


def timed(device, fn, reps):
    import torch
    times = []
    for _ in range(reps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cmd_torch_generate(args):
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(args.model_dir)
    dtype = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if args.device == "cpu":
        dtype = torch.float32
    t0 = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(args.model_dir, torch_dtype=dtype).to(args.device).eval()
    load_s = time.perf_counter() - t0
    vocab = config.vocab_size
    gen = torch.Generator().manual_seed(0)

    def prompt(batch, length):
        # Ids past the byte symbols, as bench/generate's prompts.
        return torch.randint(261, vocab, (batch, length), generator=gen).to(args.device)

    out = {"peer": "transformers", "versions": {"torch": torch.__version__,
                                                "transformers": __import__("transformers").__version__},
           "device": args.device, "dtype": str(dtype).replace("torch.", ""), "load_s": load_s,
           "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None}
    with torch.inference_mode():
        long = prompt(1, args.prefill_len)
        model(long)  # warm-up
        out["prefill_ms"] = 1000 * timed(args.device, lambda: model(long), 5)
        out["prefill_len"] = args.prefill_len
        decode = {}
        for batch in [int(b) for b in args.batches.split(",")]:
            ids = prompt(batch, args.prompt_len)
            mask = torch.ones_like(ids)

            def run(n):
                return model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False, pad_token_id=0)
            run(2)  # warm-up
            first = timed(args.device, lambda: run(1), 3)
            whole = timed(args.device, lambda: run(args.max_tokens), 3)
            per_stream = (args.max_tokens - 1) / max(whole - first, 1e-9)
            decode[str(batch)] = {"tokens_per_s": per_stream * batch, "tokens_per_s_per_stream": per_stream,
                                  "first_token_ms": 1000 * first}
            log(f"torch: batch {batch}: {per_stream * batch:.0f} tok/s ({per_stream:.1f} per stream)")
        out["decode"] = decode
        # Greedy tokens after bench/generate's prompt of seed 7, to compare with colo's.
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from generate_bench import prompt_ids
        ids = torch.tensor([prompt_ids(7, args.prompt_len, vocab)], device=args.device)
        greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16,
                                do_sample=False, pad_token_id=0)
        out["greedy"] = greedy[0, ids.shape[1]:].tolist()
    out["prompt_len"], out["max_tokens"] = args.prompt_len, args.max_tokens
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ratio(a, b):
    return a / b if a and b else None


def fmt(x, digits=1):
    return "-" if x is None else f"{x:,.{digits}f}"


def cmd_report(args):
    d = args.dir
    meta = load(os.path.join(d, "meta.json")) or {}
    gen = {k: load(os.path.join(d, f"gen-{k}.json")) for k in ("1", "16", "prefill")}
    plan = {k: load(os.path.join(d, f"plan-{k}.json")) for k in ("1", "16", "embed")}
    peer_gen = load(os.path.join(d, "torch-generate.json")) or {}
    embed = load(os.path.join(d, "embed-colo.json")) or {}
    peer_embed = load(os.path.join(d, "embed-peer.json")) or {}
    cold = load(os.path.join(d, "cold-start.json")) or {}
    colo_greedy = (load(os.path.join(d, "gen-greedy.json")) or {}).get("tokens") or []
    peer_greedy = peer_gen.get("greedy") or []
    agree = 0
    for a, b in zip(colo_greedy, peer_greedy):
        if a != b:
            break
        agree += 1

    def level(doc, streams):
        if not doc:
            return {}
        for lv in doc.get("levels", []):
            if lv.get("streams") == streams:
                return lv
        return {}

    def recommended(doc):
        return (doc or {}).get("recommended") or ((doc or {}).get("options") or [{}])[0]

    one, sixteen, prefill = level(gen["1"], 1), level(gen["16"], 16), level(gen["prefill"], 1)
    p1, p16, pe = recommended(plan["1"]), recommended(plan["16"]), recommended(plan["embed"])
    measured = {
        "decode_tok_s_1": one.get("per_stream_tok_s"),
        "decode_tok_s_16": sixteen.get("agg_tok_s"),
        "ttft_ms_short": one.get("ttft_ms_median"),
        "ttft_ms_prefill": prefill.get("ttft_ms_median"),
        "embed_emb_s_32": (embed.get("levels") or {}).get("32", {}).get("emb_s"),
        "embed_max_abs_diff": embed.get("max_abs_diff"),
    }
    predicted = {
        "decode_tok_s_1": p1.get("decode_tokens_per_s_per_sequence"),
        "decode_tok_s_16": p16.get("decode_tokens_per_s"),
        "prefill_ms": p1.get("prefill_ms"),
        "embed_emb_s": pe.get("embeddings_per_s"),
    }
    peer = {
        "decode_tok_s_1": ((peer_gen.get("decode") or {}).get("1") or {}).get("tokens_per_s"),
        "decode_tok_s_16": ((peer_gen.get("decode") or {}).get("16") or {}).get("tokens_per_s"),
        "prefill_ms": peer_gen.get("prefill_ms"),
        "embed_best_emb_s": peer_embed.get("best_emb_s"),
        "embed_best_batch": peer_embed.get("best_batch"),
    }
    report = {
        "meta": meta,
        "measured": measured,
        "predicted": predicted,
        "peer": peer,
        "measured_over_predicted": {
            "decode_1": ratio(measured["decode_tok_s_1"], predicted["decode_tok_s_1"]),
            "decode_16": ratio(measured["decode_tok_s_16"], predicted["decode_tok_s_16"]),
            "prefill": ratio(measured["ttft_ms_prefill"], predicted["prefill_ms"]),
            "embed": ratio(measured["embed_emb_s_32"], predicted["embed_emb_s"]),
        },
        "colo_over_peer": {
            "decode_1": ratio(measured["decode_tok_s_1"], peer["decode_tok_s_1"]),
            "decode_16": ratio(measured["decode_tok_s_16"], peer["decode_tok_s_16"]),
            "embed": ratio(measured["embed_emb_s_32"], peer["embed_best_emb_s"]),
        },
        "cold_start": cold,
        "greedy": {"colo": colo_greedy, "peer": peer_greedy, "agreeing_prefix": agree},
        "stages": {k: v for k, v in meta.get("stages", {}).items()},
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"GPU: {meta.get('gpu', '?')}  colo chose: {meta.get('gpu_kind', '?')}  "
          f"device: {meta.get('device', '?')}  mode: {meta.get('mode', '?')}")
    print(f"model: {meta.get('llama', '?')}")
    rows = [
        ("decode tok/s, 1 stream", measured["decode_tok_s_1"], predicted["decode_tok_s_1"], peer["decode_tok_s_1"]),
        ("decode tok/s, 16 streams", measured["decode_tok_s_16"], predicted["decode_tok_s_16"], peer["decode_tok_s_16"]),
        (f"TTFT ms, {meta.get('prefill_len', '?')}-token prompt", measured["ttft_ms_prefill"], predicted["prefill_ms"],
         peer["prefill_ms"]),
        ("embeddings/s, 32 clients", measured["embed_emb_s_32"], predicted["embed_emb_s"], peer["embed_best_emb_s"]),
    ]
    print(f"{'measure':<32} {'colo':>10} {'planned':>10} {'peer':>10} {'colo/plan':>10} {'colo/peer':>10}")
    for name, m, p, q in rows:
        print(f"{name:<32} {fmt(m):>10} {fmt(p):>10} {fmt(q):>10} {fmt(ratio(m, p), 2):>10} {fmt(ratio(m, q), 2):>10}")
    print(f"greedy tokens, colo against transformers on the same weights: the first {agree} of "
          f"{len(peer_greedy)} agree")
    if cold:
        print("cold start from the host cache: " + ", ".join(f"{k} {v}" for k, v in cold.items()))
    for stage, status in report["stages"].items():
        if status != "ok":
            print(f"stage {stage}: {status}")
    r = report["colo_over_peer"]
    q = report["measured_over_predicted"]
    print(f"gpu-check decode1_vs_peer={fmt(r['decode_1'], 2)} decode16_vs_peer={fmt(r['decode_16'], 2)} "
          f"embed_vs_peer={fmt(r['embed'], 2)} decode1_vs_plan={fmt(q['decode_1'], 2)} "
          f"decode16_vs_plan={fmt(q['decode_16'], 2)} prefill_vs_plan={fmt(q['prefill'], 2)}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("bert")
    s.add_argument("--template", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("torch-generate")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--device", default="cuda")
    s.add_argument("--prompt-len", type=int, default=32)
    s.add_argument("--max-tokens", type=int, default=128)
    s.add_argument("--batches", default="1,16")
    s.add_argument("--prefill-len", type=int, default=512)
    s.add_argument("--out", required=True)
    s = sub.add_parser("report")
    s.add_argument("--dir", required=True)
    s.add_argument("--out", required=True)
    args = p.parse_args()
    {"bert": cmd_bert, "torch-generate": cmd_torch_generate, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
