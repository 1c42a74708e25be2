"""Streams and requests a chat completion through colo's edge with the openai client.

Usage: python3 openai_chat.py BASE_URL MODEL
With COLO_TEST_CA set to a PEM file, an https:// BASE_URL is trusted by that CA alone.
"""
import json
import os
import ssl
import sys

import openai

options = {}
if os.environ.get("COLO_TEST_CA"):
    trust = ssl.create_default_context(cafile=os.environ["COLO_TEST_CA"])
    options["http_client"] = openai.DefaultHttpx2Client(verify=trust)
client = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=60, **options)
messages = [{"role": "user", "content": "Say something about locality."}]
extra = {"ignore_eos": True}
stream = client.chat.completions.create(model=sys.argv[2], messages=messages, max_tokens=10, seed=11,
                                        temperature=0.8, stream=True, stream_options={"include_usage": True},
                                        extra_body=extra)
text, finish, usage, chunks = "", None, None, 0
for chunk in stream:
    chunks += 1
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
    for choice in chunk.choices:
        text += choice.delta.content or ""
        finish = choice.finish_reason or finish
whole = client.chat.completions.create(model=sys.argv[2], messages=messages, max_tokens=10, seed=11,
                                       temperature=0.8, extra_body=extra)
# Parameters colo's engine cannot honour are refused, naming them, never ignored.
refused = {}
tries = {
    "tools": {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
    "response_format": {"response_format": {"type": "json_object"}},
    "logprobs": {"logprobs": True, "top_logprobs": 2},
}
for name, params in tries.items():
    try:
        client.chat.completions.create(model=sys.argv[2], messages=messages, max_tokens=2, **params)
        refused[name] = None
    except openai.BadRequestError as e:
        refused[name] = {"param": e.body.get("param"), "code": e.body.get("code"), "message": e.body.get("message")}
print(json.dumps({"stream_text": text, "stream_finish": finish, "stream_usage": usage, "chunks": chunks,
                  "whole_text": whole.choices[0].message.content, "refused": refused}))
