"""Write the BBC-headlines task (``ept_fast.tasks.bbc_headlines``: an article's topic from its
headline alone) as JSON-lines files whose labels are the topic names:

    python benchmarks/make_bbc_headlines.py OUT_DIR     # OUT_DIR/{train,validation,test}.jsonl
"""

import json
import sys
from pathlib import Path

from ept_fast.tasks import bbc_headlines

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/make_bbc_headlines.py OUT_DIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in zip(("train", "validation", "test"), bbc_headlines()):
        (out / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        print(f"{out / f'{split}.jsonl'}: {len(rows)} headlines")
