"""The OpenAI-compatible server: `python -m rsllm.entrypoints.openai.api_server`."""
