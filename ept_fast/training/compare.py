"""``ept-fast compare``: several methods at one parameter budget over several seeds, each run a
full ``ept-fast train``, then one table: mean ± std of the test metrics, the value of every
seed, how often each method beats each other one on the same seed, trainable parameters and
training time; ``compare.json`` and ``compare.png`` beside the runs."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Dict, List, Optional

from ..config import Method, Readout
from .engine import train
from .options import CLI_READOUT, Repeatable, TrainArguments, option
from .output import (
    BEFORE_THE_OPTION,
    HEAD_ONLY_CLIPPING_BEFORE,
    check_same_options,
    check_same_spread_floor,
    checkpoints,
    made_before_head_only_clipping,
)
from .probe import linear_probe
from .report import write_json

# What a method fixes itself: an option given for EPT is not passed on to the baselines. The
# head alone and the linear probe (which runs on "head"'s options) train no adapter parameters.
FIXED_BY = {"ept": (), "dept": ("num_spaces", "space_rank", "fusion"),
            "pt": ("r", "lora_alpha", "num_spaces", "space_rank", "fusion"),
            "head": ("num_virtual_tokens", "r", "lora_alpha", "num_spaces", "space_rank", "fusion", "head_only_steps")}
WITHOUT_ADAPTER = ("head", "probe")


@dataclasses.dataclass
class CompareArguments(TrainArguments):
    """The comparison.

    Every option of ``ept-fast train`` applies to every run, plus these."""

    methods: List[str] = option(("ept", "dept", "pt"), "the methods to compare: ept, dept, pt, head (the head "
                                                       "alone) and probe (logistic regression on the frozen "
                                                       "backbone's mean-pooled output), spaces or commas",
                                action=Repeatable)
    seeds: int = option(3, "runs per method, with seeds --seed, --seed + 1, …")
    method: Optional[str] = option(help="not for compare, which runs each of --methods: give those")
    output_dir: Optional[str] = option(help="where each run's folder and the comparison's reports go (default: "
                                            "runs/compare-<task or data>)")
    resume_from_checkpoint: Optional[str] = option(
        help="finish an interrupted comparison in --output_dir: finished runs are read back, the others continue "
             "from their last checkpoint (no value)", aliases=("resume",), nargs="?", const=True)

    def __post_init__(self):
        if self.method is not None:
            raise ValueError(f"--method: compare runs each of --methods; got --method {self.method!r}, give "
                             f"--methods {self.method} instead")
        self.resume_from_checkpoint = {"true": True, "false": None}.get(str(self.resume_from_checkpoint).lower(),
                                                                       self.resume_from_checkpoint)
        if self.resume_from_checkpoint not in (None, True):
            raise ValueError(f"--resume: compare resumes every run from its own folder in --output_dir; give "
                             f"--resume without a value, got {self.resume_from_checkpoint!r}")
        self.method = Method.EPT.value  # what the options given are checked against; each run sets its own
        if self.output_dir is None:
            self.output_dir = str(Path("runs") / f"compare-{self.data_name()}")
        super().__post_init__()
        self.methods = [m for item in self.methods for m in str(item).split(",") if m]  # "ept,dept" or ept dept
        for method in self.methods:
            if method not in FIXED_BY and method != "probe":
                raise ValueError(f"--methods: expected ept, dept, pt, head or probe, got {method!r}")
        if self.seeds < 1:
            raise ValueError(f"--seeds: expected an integer >= 1, got {self.seeds}")


def run_arguments(args: CompareArguments, method: str, seed: int, out: Path, budget: Optional[int]) -> TrainArguments:
    """The ``ept-fast train`` options of one run: the method, the seed, its own output folder,
    the shared budget, and only the adapter options the method takes."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainArguments) if field.init}
    values.update(method="head" if method == "probe" else method, seed=seed,
                  output_dir=str(out / f"{method}-seed{seed}"), overwrite=True, resume_from_checkpoint=None,
                  param_budget=None if method in WITHOUT_ADAPTER else budget)
    for name in FIXED_BY["head" if method == "probe" else method]:
        values[name] = None
    if method in WITHOUT_ADAPTER:
        values["spread_floor"] = 0.0  # the head alone reads the frozen features: nothing to floor
    if budget is not None and method not in WITHOUT_ADAPTER:
        values["num_virtual_tokens" if method == "pt" else "r"] = None  # the budget picks it
    return TrainArguments(**values)


def compare(args: CompareArguments) -> dict:
    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()) and not (args.overwrite or args.resume_from_checkpoint):
        raise FileExistsError(f"--output_dir: {out} already holds a comparison; pass --resume to finish it (runs "
                              f"that finished are read back, an interrupted one continues from its checkpoint) "
                              f"or --overwrite to redo it")
    runs: Dict[str, List[dict]] = {method: [] for method in args.methods}
    budget = args.param_budget
    for seed in range(args.seed, args.seed + args.seeds):
        for method in args.methods:
            summary = _run(args, run_arguments(args, method, seed, out, budget), probe=method == "probe")
            if budget is None and method not in WITHOUT_ADAPTER:  # the first adapter method's budget
                budget = summary["adapter_parameters"]
            runs[method].append(summary)
    result = summarise(runs, budget)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", result)
    plot(result, out / "compare.png")
    print(table(result))
    print(f"ept-fast compare: wrote compare.json and compare.png to {out}, and each run to its own folder there")
    return result


def _run(args: CompareArguments, run: TrainArguments, probe: bool = False) -> dict:
    """One run of the comparison (``probe``: the linear probe on ``run``'s data); with --resume,
    a finished run is read back and an interrupted one continues from its checkpoint."""
    folder = Path(run.output_dir)
    if args.resume_from_checkpoint and (folder / "metrics.json").is_file():
        finished = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        if "learning_rate" not in finished["config"]:
            raise ValueError(f"--resume: the finished run in {folder} was made before ept-fast train ran on "
                             f"Trainer (its options had other names); redo the comparison with --overwrite")
        check_same_options(finished["config"], run.options(), f"the finished run in {folder}")
        if not probe:
            earlier = _earlier_default(finished, run)
            if earlier:
                raise ValueError(f"--resume: the finished run in {folder} was made before today's default of "
                                 f"{earlier}; redo the comparison with --overwrite")
            # recorded as the run resolved it; a run made before the option trained without a floor
            check_same_spread_floor(finished["config"].get("spread_floor", 0.0),
                                    run.spread_floor_for(finished["task_type"], finished["adapter"]["readout"]),
                                    f"the finished run in {folder}", "--resume")
        print(f"{folder}: finished before, read back")
        return finished
    if args.resume_from_checkpoint and checkpoints(folder):
        run = dataclasses.replace(run, resume_from_checkpoint=True, overwrite=False)
    return linear_probe(run) if probe else train(run)


def _earlier_default(finished: dict, run: TrainArguments) -> Optional[str]:
    """Which option a finished run, whose options match ``run``'s as given, took a default for that
    the command line has since changed (an encoder classifier's readout, body dropout or head-only
    steps), or how its head-only steps clipped before HEAD_ONLY_CLIPPING: read back, it would not be
    the run this comparison makes. None when there is none."""
    readout = finished["adapter"].get("readout")
    if readout is None:
        return "--readout (it read position 0)"
    if run.readout is None and readout not in (CLI_READOUT, Readout.BACKBONE.value):
        return f"--readout (it read {readout!r})"
    if run.backbone_dropout is None and readout != Readout.BACKBONE.value and "backbone_dropout" not in finished:
        return f"--backbone_dropout ({BEFORE_THE_OPTION['backbone_dropout']})"
    if run.head_only_steps is None and run.method != "head" and readout != Readout.BACKBONE.value \
            and "head_only_steps" not in finished:
        return f"--head_only_steps ({BEFORE_THE_OPTION['head_only_steps']})"
    if finished.get("head_only_steps") and made_before_head_only_clipping(finished["config"]):
        return f"the head-only steps' clipping ({HEAD_ONLY_CLIPPING_BEFORE})"
    return None


def summarise(runs: Dict[str, List[dict]], budget: int) -> dict:
    """Per method: the test metrics of each seed, their mean and standard deviation, the
    parameters and the training time; per pair of methods, the seeds each one wins on the
    model-selection metric."""
    first = next(iter(runs.values()))[0]
    metric = first["metric_for_best_model"]
    methods = {}
    for method, summaries in runs.items():
        names = list(summaries[0]["test"])
        per_seed = {name: [s["test"][name] for s in summaries] for name in names}
        methods[method] = {
            "seeds": [s["config"]["seed"] for s in summaries],
            "test": per_seed,
            "mean": {name: statistics.mean(values) for name, values in per_seed.items()},
            "std": {name: statistics.stdev(values) if len(values) > 1 else 0.0 for name, values in per_seed.items()},
            "adapter_parameters": summaries[0]["adapter_parameters"],
            "trainable_parameters": summaries[0]["trainable_parameters"],
            "sizes": summaries[0]["adapter"],
            "train_time_s": statistics.mean(s["train_time_s"] for s in summaries),
        }
    wins = {a: {b: sum(x > y for x, y in zip(methods[a]["test"][metric], methods[b]["test"][metric]))
                for b in methods if b != a} for a in methods}
    return {"task": first["task"], "metric": metric, "budget": budget, "methods": methods, "wins": wins,
            "note": "parameters: the adapter's, the classification head (the same for every method) excluded"}


def table(result: dict) -> str:
    methods = result["methods"]
    names = list(next(iter(methods.values()))["test"])
    lines = [f"{result['task']}: test metrics over seeds {next(iter(methods.values()))['seeds']}, adapter budget "
             f"{result['budget'] or 0:,} parameters (the head excluded)",
             "| method | adapter params | " + " | ".join(f"{n} mean ± std" for n in names) + " | per seed ("
             + result["metric"] + ") | train s |", "|---" * (len(names) + 4) + "|"]
    for method, m in methods.items():
        cells = " | ".join(f"{m['mean'][n]:.4f} ± {m['std'][n]:.4f}" for n in names)
        seeds = ", ".join(f"{v:.4f}" for v in m["test"][result["metric"]])
        lines.append(f"| {method} | {m['adapter_parameters']:,} | {cells} | {seeds} | {m['train_time_s']:.0f} |")
    lines.append("")
    lines.append(f"wins on {result['metric']}, paired by seed (row beats column):")
    for a, row in result["wins"].items():
        lines.append(f"  {a}: " + ", ".join(f"{b} {n}/{len(methods[a]['seeds'])}" for b, n in row.items()))
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..serialization import atomic_write

    metric, methods = result["metric"], result["methods"]
    figure, axis = plt.subplots(figsize=(6, 4))
    for x, (method, m) in enumerate(methods.items()):
        axis.bar(x, m["mean"][metric], yerr=m["std"][metric], capsize=6, alpha=0.6)
        axis.scatter([x] * len(m["test"][metric]), m["test"][metric], color="black", zorder=3, s=12)
    axis.set_xticks(range(len(methods)), [f"{k}\n{m['adapter_parameters']:,} params" for k, m in methods.items()])
    low = min(min(m["test"][metric]) for m in methods.values())
    axis.set_ylim(max(0.0, low - 0.05), None)
    seeds = len(next(iter(methods.values()))["seeds"])
    axis.set(ylabel=f"test {metric}", title=f"{result['task']}: equal budget, {seeds} seeds")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)

