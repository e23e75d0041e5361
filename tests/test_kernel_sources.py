"""Every torch-free CUDA kernel source compiles with plain nvcc (no GPU, no CUDA torch needed)."""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_every_kernel_source_compiles_with_nvcc():
    result = subprocess.run(["bash", str(ROOT / "scripts" / "nvcc_check.sh")], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    compiled = {line.split()[-1] for line in result.stdout.splitlines() if line.startswith("nvcc_check: ok")}
    expected = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "kernels").glob("*.cu")}
    assert compiled == expected
