"""Model weights, families, layers, attention backends and the sampler.

Kept empty on purpose: importing `rsllm.model` must not pull in torch. Import the
submodule you need (`from rsllm.model.loader import load_model`).
"""
