"""Distillation tests: AFD, kd=okd, kd=kdmtl, OTW."""
