"""Experiments: the commands that run the study, the benchmarks and the figures."""
