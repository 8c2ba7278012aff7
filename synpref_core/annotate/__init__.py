"""Preference-aware LLM annotation (DESIGN §2 step 3): prompts, the judge client, aggregation."""
