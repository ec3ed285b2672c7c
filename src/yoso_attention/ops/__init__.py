"""YOSO attention ops: tensors in, tensors out. See each function's docstring for shapes and cost."""

from .cumulation import lsh_cumulation
from .expectation import yoso_expectation
from .hashing import hash_codes
from .lsh import yoso_lsh

__all__ = ["hash_codes", "lsh_cumulation", "yoso_expectation", "yoso_lsh"]
