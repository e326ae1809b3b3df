import json, glob, os, sys
root = sys.argv[1]
probe_root = "/work/main/benchmarks/results/suite-embedding"
for task in ["cr", "trec", "subj", "cola", "bbc_headlines", "bbc_news"]:
    for path in sorted(glob.glob(f"{root}/{task}/*-seed*/metrics.json")):
        d = json.load(open(path)); m = d["metric_for_best_model"]; r = d.get("refit")
        name = os.path.basename(os.path.dirname(path))
        seed = name.split("seed")[1]
        pp = f"{probe_root}/{task}/probe-seed{seed}/metrics.json"
        probe = json.load(open(pp))["test"][m] if os.path.exists(pp) else None
        if r:
            print(f"{task:14s} {name:12s} trained val {r['trained_head']['validation'][m]:.4f} test {r['trained_head']['test'][m]:.4f} | "
                  f"refit val {r['refit_head']['validation'][m]:.4f} test {r['refit_head']['test'][m]:.4f} C {r['C']} ({r['refit_s']:.0f}s) | probe {probe}")
