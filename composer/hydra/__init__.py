"""Hydra modules: one shared LoRA down-projection A, N up-projection heads B_j, a router.

y = W x + s * sum_j g_j(x) * B_j A x, with g(x) = softmax((W_g x + b) / T) per token.
The torch-free format (config, header checks, registry entries) lives in :mod:`registry.hydra`.
Sub-modules: ``format`` (load/save), ``runtime`` (wrap a
transformers model), ``training`` (train from JSONL, auto head count), ``compose`` (build a
Hydra module from a LoraHub composition). Import them directly; this package imports nothing.
"""
