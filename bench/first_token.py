#!/usr/bin/env python3
"""One streamed completion, timed to its first token: bench/coldstart's client.
Usage: first_token.py BASE_URL MODEL [API_KEY]
Prints one JSON line: ttft_s (from sending the request to the first streamed token), total_s,
tokens, status, and the colo-cold-start header when the request woke a machine."""

import http.client
import json
import sys
import time
import urllib.parse


def main():
    base, model = sys.argv[1], sys.argv[2]
    url = urllib.parse.urlparse(base)
    body = json.dumps({"model": model, "prompt": "The weights landed and", "max_tokens": 8,
                       "temperature": 0, "stream": True})
    headers = {"content-type": "application/json"}
    if len(sys.argv) > 3:
        headers["authorization"] = f"Bearer {sys.argv[3]}"
    started = time.monotonic()
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    conn.request("POST", "/v1/completions", body=body, headers=headers)
    response = conn.getresponse()
    first, tokens = None, 0
    if response.status == 200:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                tokens += 1
                if first is None:
                    first = time.monotonic() - started
    else:
        sys.stderr.write(response.read().decode(errors="replace")[:500] + "\n")
    print(json.dumps({
        "status": response.status,
        "ttft_s": first,
        "total_s": time.monotonic() - started,
        "tokens": tokens,
        "cold_start": response.getheader("colo-cold-start"),
    }))


if __name__ == "__main__":
    main()
