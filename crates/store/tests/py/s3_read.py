"""Reads a model through a host's S3 endpoint with boto3, the way an S3 weight loader does:
list the model's keys, head each, then read every file in ranged GETs of random sizes, and
write each file's bytes under an output directory for the Rust test to compare.

usage: s3_read.py ENDPOINT BUCKET PREFIX OUT_DIR
then lists the buckets and tries one PutObject, which the read-only endpoint must refuse.
prints one JSON line: {"keys": [...], "sizes": {...}, "ranged_gets": n, "buckets": [...], "put": {...}}
"""

import json
import os
import random
import sys

import boto3
import botocore.exceptions
from botocore.config import Config


def main():
    endpoint, bucket, prefix, out_dir = sys.argv[1:5]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="colo",
        aws_secret_access_key="colo-secret",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    keys = [o["Key"] for o in listing.get("Contents", [])]
    sizes = {}
    rng = random.Random(5)
    gets = 0
    for key in keys:
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        sizes[key] = size
        parts = []
        at = 0
        while at < size:
            n = rng.randint(1, 3 * 1024 * 1024)
            end = min(at + n, size) - 1
            body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={at}-{end}")["Body"].read()
            if len(body) != end - at + 1:
                raise SystemExit(f"{key}: range {at}-{end} came back with {len(body)} bytes")
            parts.append(body)
            gets += 1
            at = end + 1
        path = os.path.join(out_dir, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"".join(parts))
    buckets = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    try:
        s3.put_object(Bucket=bucket, Key=prefix + "new", Body=b"x")
        refused = None
    except botocore.exceptions.ClientError as e:
        refused = {"status": e.response["ResponseMetadata"]["HTTPStatusCode"], "code": e.response["Error"]["Code"],
                   "message": e.response["Error"]["Message"]}
    print(json.dumps({"keys": keys, "sizes": sizes, "ranged_gets": gets, "buckets": buckets, "put": refused}))


if __name__ == "__main__":
    main()
