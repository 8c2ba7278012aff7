"""Preference-aware LLM annotation (DESIGN §2 step 3): prompts, the OpenAI-compatible client,
aggregation and the local judge server (a stand-in for real LLM judges)."""
