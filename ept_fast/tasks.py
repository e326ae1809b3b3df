"""Tasks: the 13 GLUE / SuperGLUE tasks EPT and DePT report, the embedded BBC News default,
and user files, all turned into one example format with one set of metrics.

An example is ``{"text": str, "text_pair": str | None, "label": int | float, "source": str,
"target": str}``: ``text``/``text_pair`` feed classifiers, ``source``/``target`` are DePT's T5
text-to-text form (``"premise: … hypothesis: …"`` -> ``"0"``; STS-B rounded to steps of 0.2).
Seq2seq models are scored on generated strings, as DePT does: a string that is not a label
counts as wrong (-1).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

Example = Dict[str, object]


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    fields: Tuple[str, ...]  # input columns, in the order of the text-to-text source
    num_labels: int  # 1 for regression (STS-B)
    metrics: Tuple[str, ...]  # the first selects the best checkpoint unless --metric-for-best-model says otherwise
    hub: Optional[Tuple[str, str]] = None  # (dataset id, config) for datasets.load_dataset
    validation_split: str = "validation"
    test_split: Optional[str] = None  # a second held-out split (MNLI's matched set); else DePT's split rule
    label_names: Optional[Tuple[str, ...]] = None  # label id -> name (files may give either)
    init_text: Optional[str] = None  # the default prompt_init_text for this task
    group_column: Optional[str] = None  # what groups examples for exact match (MultiRC: the question)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


GLUE, SUPER_GLUE = "nyu-mll/glue", "aps/super_glue"
ENTAILMENT = ("entailment", "not_entailment")
BOOLEAN = ("False", "True")
TASKS: Dict[str, Task] = {
    task.name: task
    for task in [
        Task("mnli", ("premise", "hypothesis"), 3, ("accuracy",), (GLUE, "mnli"),
             validation_split="validation_mismatched", test_split="validation_matched",
             label_names=("entailment", "neutral", "contradiction"),
             init_text="Does the premise entail the hypothesis, contradict it, or neither?"),
        Task("qqp", ("question1", "question2"), 2, ("accuracy", "f1"), (GLUE, "qqp"),
             label_names=("not_duplicate", "duplicate"), init_text="Do the two questions ask the same thing?"),
        Task("qnli", ("question", "sentence"), 2, ("accuracy",), (GLUE, "qnli"), label_names=ENTAILMENT,
             init_text="Does the sentence answer the question?"),
        Task("sst2", ("sentence",), 2, ("accuracy",), (GLUE, "sst2"), label_names=("negative", "positive"),
             init_text="Classify the sentiment of this sentence:"),
        Task("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearman"), (GLUE, "stsb"),
             init_text="How similar in meaning are the two sentences?"),
        Task("mrpc", ("sentence1", "sentence2"), 2, ("accuracy", "f1"), (GLUE, "mrpc"),
             label_names=("not_equivalent", "equivalent"), init_text="Do the two sentences say the same thing?"),
        Task("rte", ("sentence1", "sentence2"), 2, ("accuracy",), (GLUE, "rte"), label_names=ENTAILMENT,
             init_text="Does the first sentence entail the second?"),
        Task("cola", ("sentence",), 2, ("matthews_correlation",), (GLUE, "cola"),
             label_names=("unacceptable", "acceptable"), init_text="Is this sentence grammatical?"),
        Task("multirc", ("question", "answer", "paragraph"), 2, ("f1", "exact_match"), (SUPER_GLUE, "multirc"),
             label_names=BOOLEAN, init_text="Is the answer to the question correct, given the paragraph?",
             group_column="idx"),
        Task("boolq", ("question", "passage"), 2, ("accuracy",), (SUPER_GLUE, "boolq"), label_names=BOOLEAN,
             init_text="Answer the yes or no question about the passage:"),
        Task("wic", ("sentence1", "sentence2", "word"), 2, ("accuracy",), (SUPER_GLUE, "wic"), label_names=BOOLEAN,
             init_text="Is the word used with the same meaning in both sentences?"),
        Task("wsc", ("text", "span1_text", "span2_text"), 2, ("accuracy",), (SUPER_GLUE, "wsc.fixed"),
             label_names=BOOLEAN, init_text="Does the pronoun refer to the noun phrase?"),
        Task("cb", ("premise", "hypothesis"), 3, ("accuracy", "f1_macro"), (SUPER_GLUE, "cb"),
             label_names=("entailment", "contradiction", "neutral"),
             init_text="Does the premise entail the hypothesis, contradict it, or neither?"),
        Task("bbc_news", ("text",), 5, ("accuracy", "f1_macro"),
             label_names=("business", "entertainment", "politics", "sports", "tech"),
             init_text="Classify the topic of this news article:"),
    ]
}
DEFAULT_TASK = "bbc_news"


def get_task(name: str) -> Task:
    try:
        return TASKS[name.lower()]
    except KeyError:
        raise ValueError(f"task: unknown task {name!r}; known tasks are {sorted(TASKS)}") from None


CLASSIFICATION_METRICS = ("accuracy", "f1_macro", "matthews_correlation")
REGRESSION_METRICS = ("pearson", "spearman")


def custom_task(rows: List[dict], label_column: str, text_columns: Sequence[str], source: str,
                label_names: Optional[Sequence[str]] = None, metric: Optional[str] = None) -> Task:
    """The task of user files, from the labels of their training ``rows``: class names (when a
    label is not a number, or ``label_names`` gives them: ids follow that order, else sorted
    names), class ids 0 … k-1 (integers), or a regression target (any other number). Scored
    with accuracy and macro-F1, or Pearson and Spearman for regression; ``metric`` (one of
    those, or Matthews correlation for classes) comes first, and so selects the best checkpoint."""
    labels = []
    for number, row in enumerate(rows, start=1):
        if row.get(label_column) is None:
            raise ValueError(f"{source}, row {number}: label column {label_column!r} is absent "
                             f"(the row has {sorted(row)})")
        if isinstance(row[label_column], str) and not row[label_column].strip():
            raise ValueError(f"{source}, row {number}: label column {label_column!r} is empty")
        if isinstance(row[label_column], float) and not math.isfinite(row[label_column]):
            raise ValueError(f"{source}, row {number}: label column {label_column!r} is {row[label_column]}, not a "
                             f"label")
        labels.append(row[label_column])
    if not labels:
        raise ValueError(f"{source}: no rows")
    if label_names:
        names = tuple(str(name).strip() for name in label_names)
        if len(set(names)) != len(names):
            raise ValueError(f"--label_names: expected distinct names, got {list(names)}")
        if len(names) < 2:
            raise ValueError(f"--label_names: a classifier needs at least two class names, got {list(names)}")
        num_labels = len(names)
    elif all(_is_integer(label) for label in labels):
        ids = {int(label) for label in labels}
        if len(ids) == 1:
            raise ValueError(f"{source}: every label is {ids.pop()}; a classifier needs at least two classes "
                             f"(a regression target is a number that is not an integer)")
        if min(ids) != 0:
            raise ValueError(f"{source}: integer labels are class ids 0 … k-1, but the smallest is {min(ids)}; "
                             f"relabel from 0, or pass --label-names {' '.join(map(str, sorted(ids)))} to take them "
                             f"as names")
        names, num_labels = None, max(ids) + 1
    elif all(_is_number(label) for label in labels):
        decimal = next((number for number, label in enumerate(labels, start=1) if not _is_integer(label)), None)
        if all(float(label).is_integer() for label in labels) and metric not in REGRESSION_METRICS:
            raise ValueError(f"{source}: the labels are whole numbers, but row {decimal} writes "
                             f"{labels[decimal - 1]!r}; write class ids as integers (0, 1, …), or pass "
                             f"--metric-for-best-model pearson to train a regression on them")
        names, num_labels = None, 1
    else:
        names = tuple(sorted({str(label).strip() for label in labels}))
        num_labels = len(names)
        if num_labels == 1:
            raise ValueError(f"{source}: every label is {names[0]!r}; a classifier needs at least two classes")
    known = REGRESSION_METRICS if num_labels == 1 else CLASSIFICATION_METRICS
    if metric is not None and metric not in known:
        raise ValueError(f"--metric_for_best_model: the labels of {source} make a "
                         f"{'regression' if num_labels == 1 else 'classification'} task, scored by one of "
                         f"{list(known)}; got {metric!r}")
    metrics = known[:2] if metric is None else (metric, *[name for name in known[:2] if name != metric])
    return Task("custom", tuple(text_columns), num_labels, metrics, label_names=names)


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, str) and value.strip().lstrip(
        "-").isdigit()


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


# ----------------------------------------------------------------- formatting
def round_stsb(value: float) -> float:
    """DePT's STS-B target: rounded to the nearest 0.2."""
    return round(value * 5) / 5


def label_text(task: Task, label) -> str:
    return f"{round_stsb(float(label)):.1f}" if task.is_regression else str(int(label))


def format_input(task: Task, row: dict) -> Example:
    """The input part of the example format (no label): ``text``, ``text_pair``, ``source``."""
    missing = [c for c in task.fields if c not in row]
    if missing:
        raise KeyError(f"columns {missing} are absent (the row has {sorted(row)})")
    empty = [c for c in task.fields if row[c] is None]
    if empty:
        raise ValueError(f"columns {empty} are null, not text")
    blank = [c for c in task.fields if not str(row[c]).strip()]
    if blank:
        raise ValueError(f"columns {blank} are empty, no text to read")
    values = [str(row[c]) for c in task.fields]
    return {
        "text": values[0],
        "text_pair": " ".join(values[1:]) if len(values) > 1 else None,
        "source": " ".join(f"{name}: {value}" for name, value in zip(task.fields, values)),
    }


def format_example(task: Task, row: dict, label_column: str = "label") -> Example:
    """One raw row -> the example format (see the module docstring)."""
    if label_column not in row:
        raise KeyError(f"columns {[label_column]} are absent (the row has {sorted(row)})")
    example = format_input(task, row)
    label = float(row[label_column]) if task.is_regression else label_id(task, row[label_column], label_column)
    example.update(label=label, target=label_text(task, label))
    if task.group_column:
        example["group"] = _group(row, task.group_column)
    return example


def _group(row: dict, column: str) -> str:
    """The group an example belongs to: MultiRC's ``idx`` names its paragraph and question."""
    if column not in row:
        raise KeyError(f"column {column!r} is absent (exact match groups the examples by it; the row has "
                       f"{sorted(row)})")
    value = row[column]
    return f"{value['paragraph']}/{value['question']}" if isinstance(value, dict) else str(value)


def label_id(task: Task, value, label_column: str = "label") -> int:
    """A class label given as its id or as its name (``task.label_names``) -> its id."""
    if task.label_names and str(value).strip() in task.label_names:
        return task.label_names.index(str(value).strip())
    numbered = task.label_names and any(_is_integer(name) for name in task.label_names)  # "1" is a name, not an id
    if _is_integer(value) and 0 <= int(value) < task.num_labels and not numbered:
        return int(value)
    if numbered:
        raise ValueError(f"{label_column}: expected one of the names {list(task.label_names)} (numbers here are "
                         f"names, not ids), got {value!r}")
    names = f" or one of the names {list(task.label_names)}" if task.label_names else ""
    raise ValueError(f"{label_column}: expected a label id in [0, {task.num_labels}){names}, got {value!r}")


def parse_prediction(task: Task, text: str):
    """A generated string -> a label (-1 when it is not one) or a float (STS-B; -1.0 if not a number)."""
    text = text.strip()
    try:
        return float(text) if task.is_regression else int(text)
    except ValueError:
        return -1.0 if task.is_regression else -1


# -------------------------------------------------------------------- metrics
def compute_metrics(task: Task, predictions: Sequence, labels: Sequence,
                    groups: Optional[Sequence] = None) -> Dict[str, float]:
    """The task's metrics (scikit-learn / scipy), scaled to [0, 1] (Matthews and Pearson to [-1, 1]).

    Scored as DePT scores: a prediction that is not a label (a generated string that is none,
    -1) is wrong everywhere. For the F1 scores it is replaced by a label other than the gold
    one, the opposite one for binary tasks, as DePT's ``f1_score_with_invalid`` does (so an
    invalid output on a negative example is a false positive, not a true negative).
    ``exact_match`` (MultiRC) is the fraction of groups (``groups``: the question of each
    example) whose every example is predicted right.
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    y_pred, y_true = np.asarray(predictions), np.asarray(labels)
    functions: Dict[str, Callable[[], float]] = {
        "accuracy": lambda: accuracy_score(y_true, y_pred),
        "f1": lambda: f1_score(y_true, _wrong_if_invalid(task, y_pred, y_true), labels=[1], average="macro",
                               zero_division=0.0),
        "f1_macro": lambda: f1_score(y_true, _wrong_if_invalid(task, y_pred, y_true),
                                     labels=list(range(task.num_labels)), average="macro", zero_division=0.0),
        "matthews_correlation": lambda: matthews_corrcoef(y_true, y_pred),
        "pearson": lambda: pearsonr(y_pred.astype(float), y_true.astype(float))[0],
        "spearman": lambda: spearmanr(y_pred.astype(float), y_true.astype(float))[0],
        "exact_match": lambda: _exact_match(y_pred, y_true, groups),
    }
    return {name: float(np.nan_to_num(functions[name]())) for name in task.metrics}


def _wrong_if_invalid(task: Task, y_pred: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    invalid = (y_pred < 0) | (y_pred >= task.num_labels)
    return np.where(invalid, (y_true + 1) % task.num_labels, y_pred)


def _exact_match(y_pred: np.ndarray, y_true: np.ndarray, groups: Optional[Sequence]) -> float:
    if groups is None:
        raise ValueError("exact_match: needs the group of every example (MultiRC: its question)")
    right: Dict[object, bool] = {}
    for group, correct in zip(groups, y_pred == y_true):
        right[group] = right.get(group, True) and bool(correct)
    return sum(right.values()) / max(len(right), 1)


# --------------------------------------------------------------------- loading
def read_rows(path) -> List[dict]:
    """Rows of a CSV file (header line) or a JSON-lines file (one object per line); a file that
    is not UTF-8 text or not well-formed is an error naming it (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path}: not found")
    try:
        return _read_rows(path)
    except UnicodeDecodeError as error:
        raise ValueError(f"data file {path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as "
                         f"UTF-8") from None
    except csv.Error as error:
        raise ValueError(f"data file {path}: not a well-formed CSV file ({error})") from None


def _read_rows(path: Path) -> List[dict]:
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg}, column "
                                     f"{error.colno})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
        return rows
    if path.suffix.lower() in (".csv", ".tsv"):
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a long article is one field; the default stops at 128 KB
        with path.open(encoding="utf-8-sig", newline="") as handle:  # -sig: spreadsheet exports start with a BOM
            reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            repeated = sorted({name for name in reader.fieldnames or [] if reader.fieldnames.count(name) > 1})
            if repeated:  # DictReader would keep the last column of each name
                raise ValueError(f"{path}: the header names {repeated} more than once; give each column its own name")
            rows = []
            for row in reader:
                if None in row or None in row.values():
                    raise ValueError(f"{path}, line {reader.line_num}: expected {len(reader.fieldnames)} columns "
                                     f"({', '.join(reader.fieldnames)}), got another number")
                rows.append(row)
        return rows
    raise ValueError(f"data file {path}: expected a .csv, .tsv, .jsonl or .json (JSON lines) file")


def format_rows(task: Task, rows: List[dict], source: str, label_column: str = "label") -> List[Example]:
    examples = []
    for number, row in enumerate(rows, start=1):
        try:
            examples.append(format_example(task, row, label_column))
        except (KeyError, ValueError) as error:
            message = error.args[0] if error.args else str(error)
            raise ValueError(f"{source}, row {number}: {message}") from None
    return examples


def split_validation_test(train: List[Example], validation: List[Example], seed: int):
    """DePT's rule: a small task (< 10k training examples) splits its validation set in half into
    validation and test; a large one takes 1000 training examples as validation and tests on the
    original validation set."""
    order = random.Random(seed)
    if len(train) < 10_000:
        shuffled = order.sample(validation, len(validation))
        half = len(shuffled) // 2
        return train, shuffled[:half], shuffled[half:]
    shuffled = order.sample(train, len(train))
    return shuffled[1000:], shuffled[:1000], validation


def stratified_split(examples: List[Example], fractions=(0.8, 0.1, 0.1), seed: int = 42):
    """Per-label seeded shuffles cut by ``fractions`` (train, validation, test)."""
    by_label: Dict[object, List[Example]] = {}
    for example in examples:
        by_label.setdefault(example["label"], []).append(example)
    splits: Tuple[List[Example], ...] = ([], [], [])
    order = random.Random(seed)
    for label in sorted(by_label):
        group = order.sample(by_label[label], len(by_label[label]))
        cut1 = round(len(group) * fractions[0])
        cut2 = cut1 + round(len(group) * fractions[1])
        for split, part in zip(splits, (group[:cut1], group[cut1:cut2], group[cut2:])):
            split.extend(part)
    return tuple(order.sample(split, len(split)) for split in splits)


def load_bbc_news(seed: int = 42):
    """The embedded default: BBC News, stratified 80/10/10 train/validation/test split."""
    from .offline import bbc_news

    texts, labels, _ = bbc_news()
    task = TASKS["bbc_news"]
    rows = [{"text": text, "label": label} for text, label in zip(texts, labels)]
    return stratified_split(format_rows(task, rows, "BBC News"), seed=seed)


def bbc_headlines(seed: int = 42) -> Tuple[List[dict], ...]:
    """A second task built from the packaged BBC News: the topic of an article from its headline
    alone (its first line, about five words), as rows ``{"text": headline, "label": topic
    name}`` for train, validation and test: a stratified, seeded 80/10/10 split of the distinct
    headlines (BBC News repeats some articles), so no headline is in two splits."""
    from .offline import bbc_news

    texts, labels, names = bbc_news()
    first: Dict[str, int] = {}
    for text, label in zip(texts, labels):
        first.setdefault(text.split("\n", 1)[0].strip(), label)
    rows = [{"text": headline, "label": label} for headline, label in first.items()]
    return tuple([{"text": row["text"], "label": names[row["label"]]} for row in part]
                 for part in stratified_split(rows, seed=seed))


def load_from_hub(task: Task, seed: int = 42):
    """train / validation / test of a registry task from the Hugging Face hub (needs the network
    and the ``datasets`` package: ``pip install 'ept_fast[hub]'``)."""
    if task.hub is None:
        raise ValueError(f"task {task.name}: not on the hub; pass --train-file/--validation-file/--test-file")
    try:
        import datasets
    except ImportError:
        raise ImportError(f"task {task.name}: loading it from the hub needs the datasets package "
                          f"(pip install 'ept_fast[hub]'), or pass local files with --train-file/--validation-file/"
                          f"--test-file") from None
    data = datasets.load_dataset(*task.hub)
    train = format_rows(task, list(data["train"]), f"{task.hub[0]}/{task.hub[1]} train")
    validation = format_rows(task, list(data[task.validation_split]), f"{task.name} {task.validation_split}")
    if task.test_split:
        return train, validation, format_rows(task, list(data[task.test_split]), f"{task.name} {task.test_split}")
    return split_validation_test(train, validation, seed)
