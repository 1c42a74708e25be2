#!/usr/bin/env python3
"""PyTorch's side of bench/ops: the operators of an all-MiniLM-L6-v2 embedding pass and of a
decode step of bench/generate's Llama, at the shapes `colo bench ops` times colo's engine at,
under the same case names, done the way a PyTorch model does them (F.linear's layout for the
products, F.gelu, F.layer_norm, softmax, grouped-query attention by matmul, embedding gathers).

    ops_bench.py [--secs S] [--threads N] [--filter TEXT]   (prints one JSON list)

Each case: one warm-up call, then five timed runs of about S/5 seconds; the median microseconds
per call. Zero weights (the kernels' speed does not depend on the values).
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

MINILM = (384, 12, 1536, 30522)  # hidden, heads, ffn, vocab
SENTENCE, BATCH = 30, 32
LLAMA = (1024, 16, 4, 2816, 32000)  # hidden, heads, kv heads, ffn, vocab
CONTEXT = 160


def timed(secs, f):
    f()
    runs = []
    for _ in range(5):
        start, calls = time.perf_counter(), 0
        while calls == 0 or time.perf_counter() - start < secs / 5:
            f()
            calls += 1
        runs.append((time.perf_counter() - start) * 1e6 / calls)
    return sorted(runs)[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    ap.add_argument("--filter", default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    out = []

    def case(name, shape, f):
        if args.filter in name:
            out.append({"name": name, "shape": shape, "us": timed(args.secs, f)})

    z = lambda *shape: torch.zeros(*shape, dtype=torch.float32)
    hidden, heads, ffn, vocab = MINILM
    head_dim = hidden // heads
    word, position, token_type = z(vocab, hidden), z(512, hidden), z(hidden)
    for tokens in (SENTENCE, SENTENCE * BATCH):
        x, wide = z(tokens, hidden), z(tokens, ffn)
        seqs = tokens // SENTENCE
        # nn.Linear keeps (out, in) and computes x @ W^T.
        for op, k, n in (("qkv", hidden, 3 * hidden), ("out", hidden, hidden), ("up", hidden, ffn)):
            w = z(n, k)
            case(f"minilm.{op}", f"{tokens}x{k} . {k}x{n}", lambda x=x, w=w: F.linear(x, w))
        w = z(hidden, ffn)
        case("minilm.down", f"{tokens}x{ffn} . {ffn}x{hidden}", lambda: F.linear(wide, w))
        wide_bias, gamma, beta = z(ffn), torch.ones(hidden), z(hidden)
        # What a BERT layer does between its products: bias then GELU; bias, residual, norm.
        case("minilm.bias_gelu", f"{tokens}x{ffn}", lambda: F.gelu(wide + wide_bias))
        case("minilm.add_norm", f"{tokens}x{hidden}", lambda: F.layer_norm(x + beta + x, (hidden,), gamma, beta, 1e-12))
        scores = z(seqs * heads, SENTENCE, SENTENCE)
        case("minilm.softmax", f"{seqs * heads}x{SENTENCE}x{SENTENCE}", lambda: torch.softmax(scores, -1))
        qkv = z(tokens, 3 * hidden)

        def attention():
            # Per sequence, as the packed batch is cut (HF BERT pads instead; this is the same work).
            parts = []
            for s in range(seqs):
                p = qkv[s * SENTENCE:(s + 1) * SENTENCE].view(SENTENCE, 3, heads, head_dim).permute(1, 2, 0, 3)
                q, k, v = p[0], p[1], p[2]
                probs = torch.softmax(q @ k.transpose(-1, -2) * head_dim ** -0.5, -1)
                parts.append((probs @ v).transpose(0, 1).reshape(SENTENCE, hidden))
            return torch.cat(parts)

        case("minilm.attention", f"{seqs} seqs x {SENTENCE} tokens, {heads} heads", attention)
        ids = torch.tensor([[i * 37 % vocab for i in range(SENTENCE)] for _ in range(seqs)]).flatten()
        positions = torch.arange(SENTENCE).repeat(seqs)
        case("minilm.pack", f"{seqs} seqs x {SENTENCE} tokens",
             lambda: F.layer_norm(word[ids] + position[positions] + token_type, (hidden,), gamma, beta, 1e-12))
        layer = {n: z(*s) for n, s in {"qkv": (3 * hidden, hidden), "out": (hidden, hidden), "up": (ffn, hidden),
                                       "down": (hidden, ffn)}.items()}

        def forward():
            h = F.layer_norm(word[ids] + position[positions] + token_type, (hidden,), gamma, beta, 1e-12)
            nonlocal qkv
            qkv = F.linear(h, layer["qkv"])
            a = F.layer_norm(F.linear(attention(), layer["out"]) + h, (hidden,), gamma, beta, 1e-12)
            return F.layer_norm(F.linear(F.gelu(F.linear(a, layer["up"])), layer["down"]) + a, (hidden,), gamma, beta, 1e-12)

        case("minilm.forward", f"{seqs} seqs x {SENTENCE} tokens", forward)

    hidden, heads, kv_heads, ffn, vocab = LLAMA
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    weights = {"qkv": z(hidden + 2 * kv, hidden), "o": z(hidden, hidden), "gate_up": z(2 * ffn, hidden),
               "down": z(hidden, ffn), "lm_head": z(vocab, hidden)}
    norm = torch.ones(hidden)
    for rows in (1, 16):
        x, wide = z(rows, hidden), z(rows, ffn)
        case("llama.qkv", f"{rows}x{hidden} . {hidden}x{hidden + 2 * kv}", lambda x=x: F.linear(x, weights["qkv"]))
        case("llama.o", f"{rows}x{hidden} . {hidden}x{hidden}", lambda x=x: F.linear(x, weights["o"]))
        case("llama.gate_up", f"{rows}x{hidden} . {hidden}x{2 * ffn}", lambda x=x: F.linear(x, weights["gate_up"]))
        case("llama.down", f"{rows}x{ffn} . {ffn}x{hidden}", lambda wide=wide: F.linear(wide, weights["down"]))
        case("llama.lm_head", f"{rows}x{hidden} . {hidden}x{vocab}", lambda x=x: F.linear(x, weights["lm_head"]))

        def rms(x=x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm

        case("llama.rms_norm", f"{rows}x{hidden}", rms)
        gate_up = z(rows, 2 * ffn)
        case("llama.silu_mul", f"{rows}x{2 * ffn} -> {rows}x{ffn}", lambda g=gate_up: F.silu(g[:, :ffn]) * g[:, ffn:])
        q, k = z(kv_heads, heads // kv_heads, head_dim), z(kv_heads, CONTEXT, head_dim)

        def attend(rows=rows):
            for _ in range(rows):
                probs = torch.softmax(q @ k.transpose(-1, -2) * head_dim ** -0.5, -1)
                (probs @ k).reshape(1, hidden)

        case("llama.attention", f"{rows} seqs x 1 query over {CONTEXT}, {heads}/{kv_heads} heads", attend)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "cases": out}))


if __name__ == "__main__":
    main()
