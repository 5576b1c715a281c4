"""lafs_core: the science of LAFS — models, views, losses, training loops and evaluation."""

__version__ = "0.1.0"
