"""Helpers shared by the test folders (fixtures built on them live in ``tests/conftest.py``).

- ``adapters``: real PEFT LoRA and Hydra folders written with numpy (no torch).
- ``hub``: a real ``loradex serve`` with tokens, the CLI in a subprocess, tiny adapters.
- ``pg``: a fresh PostgreSQL schema per test or server, named in the URL.
- ``tiny_models``: tiny real models, LoRA modules and task files for composer tests (torch).
- ``cli``: the CLI run in-process.
"""
