"""Annotation: prompts, the OpenAI-compatible client, aggregation and the local judge server."""
