"""Write a mixed request file for ``ept-fast predict``: the held-out BBC News articles (for an
adapter named ``topics``, trained by ``ept-fast train``) interleaved with the held-out BBC
headlines (for an adapter named ``headlines``, trained on ``make_bbc_headlines.py``'s files):

    python benchmarks/make_serving_requests.py OUT.jsonl     # rows {"adapter": ..., "text": ..., "label": ...}
"""

import json
import sys
from itertools import chain, zip_longest
from pathlib import Path

from ept_fast.tasks import bbc_headlines, get_task, load_bbc_news

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/make_serving_requests.py OUT.jsonl")
    names = get_task("bbc_news").label_names
    articles = [{"adapter": "topics", "text": e["text"], "label": names[e["label"]]} for e in load_bbc_news(42)[2]]
    headlines = [{"adapter": "headlines", **row} for row in bbc_headlines()[2]]
    rows = [row for row in chain.from_iterable(zip_longest(articles, headlines)) if row is not None]
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"{out}: {len(rows)} requests ({len(articles)} articles for 'topics', {len(headlines)} headlines)")
