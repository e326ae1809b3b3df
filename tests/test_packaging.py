"""The kernels folder imports as ept_fast.kernels only; a stray top-level import is inert."""

import importlib
import sys
from pathlib import Path

import ept_fast.kernels


def test_top_level_kernels_import_registers_nothing(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(ept_fast.kernels.__file__).resolve().parents[1]))
    monkeypatch.delitem(sys.modules, "kernels", raising=False)
    stray = importlib.import_module("kernels")  # what transformers does when probing for the hub "kernels"
    assert stray is not ept_fast.kernels
    assert not hasattr(stray, "fused_ept_prompt")
    assert "kernels.ept_prompt" not in sys.modules and "kernels.assemble_inputs" not in sys.modules


def test_the_wheel_holds_every_module(tmp_path):
    """A non-editable install gets every module of ept_fast, its subpackages and the kernels."""
    import shutil
    import subprocess
    import zipfile

    root = Path(ept_fast.kernels.__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy: a build/ folder left in the checkout would be packed as it is
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(root / name, source / name)
    for name in ("ept_fast", "kernels"):
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("ept_fast-*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    sources = {f"ept_fast/{p.relative_to(root / 'ept_fast').as_posix()}" for p in (root / "ept_fast").rglob("*.py")}
    sources |= {f"ept_fast/kernels/{p.name}" for p in (root / "kernels").glob("*.py")}
    assert sources - packed == set()
