"""Scripts the benchmarks run in the peers' own environments (never imported by neurobatch)."""
