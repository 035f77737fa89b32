"""natgw benchmarks run from the source tree (`python -m bench.<name>`)."""
