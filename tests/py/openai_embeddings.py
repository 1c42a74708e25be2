"""Calls colo's edge with the official openai client and prints what came back as JSON.

Usage: python3 openai_embeddings.py BASE_URL MODEL INPUT...
"""
import json
import sys

import openai

base_url, model, inputs = sys.argv[1], sys.argv[2], sys.argv[3:]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
response = client.embeddings.create(model=model, input=inputs)
models = [m.id for m in client.models.list().data]
try:
    client.embeddings.create(model="no-such-app", input="x")
    missing = None
except openai.NotFoundError as err:
    missing = {"status": err.status_code, "message": str(err)}
print(json.dumps({
    "openai_version": openai.__version__,
    "embeddings": [d.embedding for d in response.data],
    "prompt_tokens": response.usage.prompt_tokens,
    "models": models,
    "missing": missing,
}))
