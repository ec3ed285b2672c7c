"""Which CPU kernels run: the compiled ones by default, numba's where none were built, a warning where a set that
exists fails to load or a set asked for is missing, a clear error for an unknown name."""

import warnings

import pytest
import torch

from yoso_attention.ops import backend, kernels_cpp


@pytest.fixture
def fresh_backend(monkeypatch):
    """The backend's load state emptied for one test (and restored after it)."""
    for name, value in (("_loaded", {}), ("_load_errors", {}), ("_not_built", set()), ("_warned", set()),
                        ("_from_env", None)):
        monkeypatch.setattr(backend, name, value)
    monkeypatch.delenv("YOSO_CPU_KERNELS", raising=False)
    monkeypatch.delenv("YOSO_DISABLE_NUMBA", raising=False)


def test_the_compiled_kernels_run_by_default(fresh_backend):
    assert backend._cpu_choice()[0] == "compiled"
    assert backend.active_paths()["cpu"].startswith("compiled kernels (_cpu_kernels")


def test_without_a_build_numba_runs_without_a_warning(fresh_backend, monkeypatch):
    monkeypatch.setattr(kernels_cpp, "load", lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend._cpu_choice()[0] == "numba"
    assert "not built" in backend.active_paths()["cpu"]


def test_a_build_that_fails_to_load_warns_and_numba_runs(fresh_backend, monkeypatch):
    def broken():
        raise OSError("_cpu_kernels.so: invalid ELF header")

    monkeypatch.setattr(kernels_cpp, "load", broken)
    with pytest.warns(UserWarning, match="compiled CPU kernels unavailable .*invalid ELF header"):
        assert backend._cpu_choice()[0] == "numba"


def test_asking_for_a_missing_set_warns_and_the_torch_path_runs(fresh_backend, monkeypatch):
    monkeypatch.setattr(kernels_cpp, "load", lambda: None)
    monkeypatch.setenv("YOSO_CPU_KERNELS", "compiled")
    with pytest.warns(UserWarning, match="compiled CPU kernels unavailable .*not built"):
        assert backend.cpu_kernels(torch.zeros(1)) is None


@pytest.mark.parametrize("name, expected", [("numba", "numba"), ("torch", "torch"), (" Compiled ", "compiled")])
def test_the_environment_picks_a_set(fresh_backend, monkeypatch, name, expected):
    monkeypatch.setenv("YOSO_CPU_KERNELS", name)
    assert backend._cpu_choice()[0] == expected


def test_disable_numba_still_means_the_torch_path(fresh_backend, monkeypatch):
    monkeypatch.setenv("YOSO_DISABLE_NUMBA", "1")
    assert backend._cpu_choice() == ("torch", None)


def test_an_unknown_set_is_an_error_naming_the_variable(fresh_backend, monkeypatch):
    monkeypatch.setenv("YOSO_CPU_KERNELS", "cuda")
    with pytest.raises(ValueError, match="YOSO_CPU_KERNELS must be one of auto, compiled, numba, torch; got 'cuda'"):
        backend._cpu_choice()
    with pytest.raises(ValueError, match="use_kernels: name must be one of"):
        with backend.use_kernels("fast"):
            pass


def test_use_kernels_nests_and_restores(fresh_backend):
    with backend.use_kernels("numba"):
        with backend.torch_only():
            assert backend._cpu_choice()[0] == "torch"
        assert backend._cpu_choice()[0] == "numba"
    assert backend._cpu_choice()[0] == "compiled"
