"""Tests of annotation: prompts, parsing, ensembles, the client and the local judge server."""
