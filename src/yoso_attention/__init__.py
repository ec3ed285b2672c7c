"""yoso-attention: linear-cost YOSO self-attention and the YOSO model family."""

from .ops import hash_codes, lsh_cumulation, yoso_expectation, yoso_lsh

__version__ = "0.1.0"

__all__ = ["hash_codes", "lsh_cumulation", "yoso_expectation", "yoso_lsh", "__version__"]
