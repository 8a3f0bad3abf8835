"""Offline jobs on the model (Ray Data): `sift predict`, `sift scan`."""
