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
