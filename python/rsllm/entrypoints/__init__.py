"""The ways in: the offline `LLM` class and the OpenAI-compatible server."""
