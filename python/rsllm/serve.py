"""`python -m rsllm.serve`: the OpenAI-compatible server (same flags as vLLM's
`python -m vllm.entrypoints.openai.api_server`)."""

from __future__ import annotations

from rsllm.entrypoints.openai.api_server import main

if __name__ == "__main__":
    main()
