"""The registry of LoRA modules: SQL models, migrations glue, search. Never imports torch.

Import what you need from the submodules (``registry.store``, ``registry.entities``,
``registry.adapter_files``); this package imports nothing at load time so that the command
line stays fast to start.
"""
