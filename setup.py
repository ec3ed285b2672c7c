"""The compiled CPU kernels (src/yoso_attention/ops/csrc/cpu_kernels.cpp): built at install where a C++ compiler
with OpenMP is present, else skipped (the package then runs its numba kernels; nothing fails).

On x86-64 the source is built once per feature level (baseline, x86-64-v3 with AVX2, x86-64-v4 with AVX-512) and
the fastest one this CPU runs is loaded (ops/kernels_cpp.py): a wheel built here runs on any x86-64. The flags allow
reassociation (vectorised sums) but keep IEEE NaN and inf (no -ffast-math, which also sets flush-to-zero for the
whole process when linked into a shared library). On Linux the memalign shim (src/yoso_attention/csrc) is built
beside them, also optionally.
"""

import platform

from setuptools import Extension, setup

SOURCE = "src/yoso_attention/ops/csrc/cpu_kernels.cpp"
SHIM_SOURCE = "src/yoso_attention/csrc/memalign_shim.c"
FLAGS = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math",
         "-fno-signed-zeros", "-freciprocal-math", "-fvisibility=hidden"]  # fmt: skip
LEVELS = {"": [], "_x86_64_v3": ["-march=x86-64-v3"], "_x86_64_v4": ["-march=x86-64-v4"]}


def kernel_builds() -> list[Extension]:
    levels = LEVELS if platform.machine().lower() in ("x86_64", "amd64") else {"": []}
    return [
        Extension(f"yoso_attention.ops._cpu_kernels{suffix}", [SOURCE], language="c++", optional=True,
                  extra_compile_args=FLAGS + arch, extra_link_args=["-fopenmp"])  # fmt: skip
        for suffix, arch in levels.items()
    ]


def memalign_shim() -> list[Extension]:
    """The LD_PRELOAD library that `yoso train` runs under on glibc (yoso_attention/heap.py): a plain shared library
    in the extensions' place, never imported."""
    if platform.system() != "Linux":
        return []
    return [Extension("yoso_attention._memalign_shim", [SHIM_SOURCE], language="c", optional=True,
                      extra_compile_args=["-O2"], extra_link_args=["-ldl"])]  # fmt: skip


if __name__ == "__main__":  # setuptools runs this file as __main__; benchmarks/plant_bugs.py reads the flags
    setup(ext_modules=kernel_builds() + memalign_shim())
