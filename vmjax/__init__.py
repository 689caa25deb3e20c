"""vmjax: multimodal video classification at YouTube-8M scale in JAX/Flax."""

__version__ = "0.1.0"
