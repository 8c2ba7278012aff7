"""Benchmarks of synpref (not part of the installed package). See benchmarks/README.md."""
