"""The release: `python -m build` makes an sdist and a wheel of one version; the wheel (a platform wheel: it holds
the compiled CPU kernels, one build per x86-64 feature level) installs into a fresh venv (torch first, as the
README's set-up does) and its `yoso` command reports the version, runs `yoso info` (the compiled kernels active,
numba never imported by training) and a tiny training run. Slow (a venv and two installs from pip's cache), still run in CI."""

import json
import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
import torch

import yoso_attention

ROOT = Path(__file__).resolve().parents[2]


def run(cmd, **kw):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_trains(tmp_path):
    version = yoso_attention.__version__
    run([sys.executable, "-m", "build", "--outdir", tmp_path / "dist", ROOT])
    wheels = sorted((tmp_path / "dist").glob("*.whl"))
    assert len(wheels) == 1 and wheels[0].name.startswith(f"yoso_attention-{version}-cp"), wheels
    libraries = [n for n in zipfile.ZipFile(wheels[0]).namelist() if n.endswith(".so")]
    assert any(Path(n).name.startswith("_cpu_kernels.") for n in libraries), libraries  # the baseline build
    assert any(Path(n).name.startswith("_memalign_shim.") for n in libraries), libraries
    sdist = tmp_path / "dist" / f"yoso_attention-{version}.tar.gz"
    sources = tarfile.open(sdist).getnames()
    assert {f"yoso_attention-{version}/src/yoso_attention/{path}" for path in ("ops/csrc/cpu_kernels.cpp",
            "csrc/memalign_shim.c")} <= set(sources)  # fmt: skip

    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    torch_pin = "torch==" + torch.__version__.split("+")[0]  # the CPU build this suite runs on, from pip's cache
    run([bin_dir / "pip", "install", "-q", torch_pin])
    run([bin_dir / "pip", "install", "-q", wheels[0]])

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "YOSO_MEMALIGN_SHIM")}
    env["HOME"] = str(tmp_path / "home")  # the data cache and numba's go to the temp dir
    assert run([bin_dir / "yoso", "--version"], env=env).strip() == f"yoso-attention {version}"
    assert "compiled kernels (_cpu_kernels" in run([bin_dir / "yoso", "info"], env=env)
    out = tmp_path / "run"
    run([bin_dir / "yoso", "train", "--task", "mqar", "--max-length", "32", "--mqar-pairs", "4", "--mqar-vocab-size",
         "64", "--train-examples", "64", "--eval-examples", "16", "--test-examples", "16", "--hidden-size", "16",
         "--num-layers", "1", "--num-heads", "2", "--batch-size", "8", "--max-steps", "3", "--eval-every", "3",
         "--output-dir", out], env=env, cwd=tmp_path)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["memalign_shim"] is True  # the installed command reran itself under the wheel's shim
