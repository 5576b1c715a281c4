"""lafs_core: the base package — the science of LAFS (models, views, losses, the stage loop, evaluation); it imports
no other package of this repository (docs/architecture.md)."""

__version__ = "0.1.0"
