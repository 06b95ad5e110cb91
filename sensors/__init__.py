"""Sensors: the upload sensor that launches a run per completed upload (and sweeps abandoned uploads)."""
