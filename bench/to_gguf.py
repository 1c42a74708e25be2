#!/usr/bin/env python3
"""Convert a Hugging Face-layout Llama model directory (config.json, model.safetensors,
tokenizer.json, as `colo model synth` writes it) to one GGUF file for llama.cpp.

    to_gguf.py MODEL_DIR OUT.gguf [--outtype f32|f16]

Uses only numpy and the `gguf` package. The safetensors file is read directly (header and
raw bytes), so f32, f16 and bf16 weights all work without torch. Like llama.cpp's own
convert_hf_to_gguf.py for Llama, the q and k projections are permuted from Hugging Face's
rotate-half RoPE layout to llama.cpp's interleaved-pair layout; 1-D tensors (the norms) stay
f32 whatever --outtype says.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import gguf


def read_safetensors(path):
    """{name: numpy array} for one .safetensors file, memory-mapped; bf16 comes back as f32."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    base = 8 + n
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        buf = raw[base + start: base + end]
        dt = info["dtype"]
        shape = tuple(info["shape"])
        if dt == "F32":
            arr = buf.view(np.float32)
        elif dt == "F16":
            arr = buf.view(np.float16)
        elif dt == "BF16":
            arr = (buf.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit(f"{name}: unsupported dtype {dt}")
        out[name] = arr.reshape(shape)
    return out


def load_weights(model_dir):
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return read_safetensors(single)
    index = os.path.join(model_dir, "model.safetensors.index.json")
    with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for name in files:
        out.update(read_safetensors(os.path.join(model_dir, name)))
    return out


def permute(w, n_head, n_head_kv):
    """Hugging Face q/k rows -> llama.cpp's RoPE row order (as convert_hf_to_gguf.py does)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def tokenizer_lists(model_dir, n_vocab):
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    model = tok["model"]
    if model.get("type") != "BPE":
        raise SystemExit(f"tokenizer.json: model type {model.get('type')}, only byte-level BPE is handled")
    by_id = {}
    for text, i in model["vocab"].items():
        by_id[int(i)] = (text, gguf.TokenType.NORMAL)
    for added in tok.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
    if by_id and max(by_id) >= n_vocab:
        raise SystemExit(f"tokenizer has id {max(by_id)} but the model's vocab is {n_vocab}")
    tokens, types = [], []
    for i in range(n_vocab):
        text, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--outtype", choices=["f32", "f16"], default="f32")
    args = ap.parse_args()

    with open(os.path.join(args.model_dir, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("model_type", "llama") != "llama":
        raise SystemExit(f"model_type {cfg.get('model_type')}: only llama is converted")
    hidden = cfg["hidden_size"]
    n_layer = cfg["num_hidden_layers"]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    head_dim = cfg.get("head_dim") or hidden // n_head
    rope = cfg.get("rope_parameters") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if (rope.get("rope_type") or "default") != "default" or cfg.get("rope_scaling"):
        print("to_gguf: warning: RoPE scaling in config.json is not carried into the GGUF", file=sys.stderr)
    eos = cfg.get("eos_token_id")
    eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])

    weights = load_weights(args.model_dir)
    n_vocab = weights["model.embed_tokens.weight"].shape[0]
    tokens, types, merges = tokenizer_lists(args.model_dir, n_vocab)

    ftype = gguf.LlamaFileType.ALL_F32 if args.outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16
    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name(os.path.basename(os.path.normpath(args.model_dir)))
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_vocab_size(n_vocab)
    w.add_file_type(ftype)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if cfg.get("bos_token_id") is not None:
        w.add_bos_token_id(int(cfg["bos_token_id"]))
    if eos_ids:
        # llama.cpp takes one eos id; the last listed (<|eot_id|> for Llama-3-style) also as eot.
        w.add_eos_token_id(int(eos_ids[0]))
        if len(eos_ids) > 1:
            w.add_eot_token_id(int(eos_ids[-1]))
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)

    def put(name, arr):
        arr = np.ascontiguousarray(arr)
        if arr.ndim >= 2 and args.outtype == "f16":
            arr = arr.astype(np.float16, copy=False)
        else:
            arr = arr.astype(np.float32, copy=False)
        w.add_tensor(name, arr)

    used = set()

    def take(name):
        used.add(name)
        return weights[name]

    put("token_embd.weight", take("model.embed_tokens.weight"))
    for i in range(n_layer):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        put(b + "attn_norm.weight", take(p + "input_layernorm.weight"))
        put(b + "attn_q.weight", permute(take(p + "self_attn.q_proj.weight"), n_head, n_head))
        put(b + "attn_k.weight", permute(take(p + "self_attn.k_proj.weight"), n_head, n_kv))
        put(b + "attn_v.weight", take(p + "self_attn.v_proj.weight"))
        put(b + "attn_output.weight", take(p + "self_attn.o_proj.weight"))
        put(b + "ffn_norm.weight", take(p + "post_attention_layernorm.weight"))
        put(b + "ffn_gate.weight", take(p + "mlp.gate_proj.weight"))
        put(b + "ffn_up.weight", take(p + "mlp.up_proj.weight"))
        put(b + "ffn_down.weight", take(p + "mlp.down_proj.weight"))
    put("output_norm.weight", take("model.norm.weight"))
    if "lm_head.weight" in weights:
        put("output.weight", take("lm_head.weight"))
    # (tied embeddings: no output.weight; llama.cpp then uses token_embd.weight)
    extra = sorted(set(weights) - used)
    if extra:
        raise SystemExit(f"tensors not converted (bias or another architecture?): {extra[:5]}")

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    n_params = sum(int(np.prod(a.shape)) for a in weights.values())
    print(f"to_gguf: wrote {args.out} ({args.outtype}, {n_params / 1e6:.1f}M parameters, "
          f"{os.path.getsize(args.out) / 1e6:.1f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
