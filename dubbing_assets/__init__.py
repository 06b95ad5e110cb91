"""Dagster definitions of the dubbing pipeline: partitions, one module per stage asset, jobs, checks."""
