"""loradex: a hub and registry for LoRA modules, and a composer that builds new ones from them."""

__version__ = "0.1.0"
