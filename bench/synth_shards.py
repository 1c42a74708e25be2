#!/usr/bin/env python3
"""Writes a model of random bytes for the transfer benchmarks (bench/storm, bench/s3-endpoint):
config.json and SHARDS safetensors files of one F16 tensor each, GB gigabytes (10^9) in all.
Usage: synth_shards.py OUT GB SHARDS"""

import json
import os
import struct
import sys


def main():
    out, gb, shards = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write('{"model_type":"llama"}')
    per = int(gb * 1e9 / shards) // 2 * 2
    for i in range(1, shards + 1):
        n = per // 2
        header = json.dumps({f"w{i}": {"dtype": "F16", "shape": [n], "data_offsets": [0, n * 2]}}).encode()
        with open(os.path.join(out, f"model-{i:05}-of-{shards:05}.safetensors"), "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            left = n * 2
            while left:
                block = min(left, 64 << 20)
                f.write(os.urandom(block))
                left -= block


if __name__ == "__main__":
    main()
