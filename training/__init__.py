"""Offline tooling (the `train` extra): model export, profiling, labels, BC, PPO, evaluation.

Imported as `adaptive_perception.training`; it may import torch and ultralytics, the runtime never does.
"""
