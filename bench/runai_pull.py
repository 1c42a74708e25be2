#!/usr/bin/env python3
"""Reads every safetensors file under an S3 prefix with Run:ai Model Streamer (the loader vLLM
uses for S3), tensors into CPU memory and dropped: bench/hydrate-link's third puller.
Usage: runai_pull.py s3://bucket/prefix (AWS_ENDPOINT_URL and keys from the environment).
Prints the bytes of tensors read, the seconds from listing the files to the last tensor
(Python's and torch's start-up are left out), and the seconds from handing the files to the
streamer to the last tensor (its reads alone, without the listing)."""

import os
import sys
import time

import boto3
from runai_model_streamer import SafetensorsStreamer


def main():
    url = sys.argv[1]
    started = time.monotonic()
    bucket, _, prefix = url[len("s3://"):].partition("/")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    keys = sorted(
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
        if o["Key"].endswith(".safetensors")
    )
    total = 0
    with SafetensorsStreamer() as streamer:
        streaming = time.monotonic()
        streamer.stream_files([f"s3://{bucket}/{k}" for k in keys])
        for _name, tensor in streamer.get_tensors():
            total += tensor.numel() * tensor.element_size()
    end = time.monotonic()
    print(total, end - started, end - streaming)


if __name__ == "__main__":
    main()
