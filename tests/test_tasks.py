"""The task registry: DePT's text-to-text formats, metrics from scikit-learn/scipy, file reading."""

import json

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from ept_fast.tasks import (
    TASKS,
    bbc_headlines,
    compute_metrics,
    custom_task,
    format_rows,
    get_task,
    label_text,
    parse_prediction,
    read_rows,
    split_validation_test,
    stratified_split,
)

from helpers import needs_offline_data

# One row shaped like each task, and the T5 source DePT builds from it.
ROWS = {
    "mnli": ({"premise": "A man sleeps.", "hypothesis": "He is awake.", "label": 2},
             "premise: A man sleeps. hypothesis: He is awake."),
    "qqp": ({"question1": "How old?", "question2": "What age?", "label": 1},
            "question1: How old? question2: What age?"),
    "qnli": ({"question": "Who?", "sentence": "Bob did.", "label": 0}, "question: Who? sentence: Bob did."),
    "sst2": ({"sentence": "great film", "label": 1}, "sentence: great film"),
    "stsb": ({"sentence1": "a cat", "sentence2": "a dog", "label": 3.14}, "sentence1: a cat sentence2: a dog"),
    "mrpc": ({"sentence1": "x", "sentence2": "y", "label": 0}, "sentence1: x sentence2: y"),
    "rte": ({"sentence1": "p", "sentence2": "h", "label": 1}, "sentence1: p sentence2: h"),
    "cola": ({"sentence": "Him went.", "label": 0}, "sentence: Him went."),
    "multirc": ({"paragraph": "text", "question": "q?", "answer": "a", "label": 1,
                 "idx": {"paragraph": 0, "question": 3, "answer": 1}}, "question: q? answer: a paragraph: text"),
    "boolq": ({"question": "is it?", "passage": "it is", "label": 1}, "question: is it? passage: it is"),
    "wic": ({"word": "bank", "sentence1": "river bank", "sentence2": "bank loan", "label": 0},
            "sentence1: river bank sentence2: bank loan word: bank"),
    "wsc": ({"text": "Tom said he left.", "span1_text": "Tom", "span2_text": "he", "label": 1},
            "text: Tom said he left. span1_text: Tom span2_text: he"),
    "cb": ({"premise": "p", "hypothesis": "h", "label": 2}, "premise: p hypothesis: h"),
}


def test_the_registry_holds_the_13_tasks_of_ept_and_dept():
    assert set(ROWS) <= set(TASKS) and len(ROWS) == 13


@pytest.mark.parametrize("name", sorted(ROWS))
def test_text_to_text_format_from_a_local_file(name, tmp_path):
    row, source = ROWS[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (example,) = format_rows(get_task(name), read_rows(path), str(path))
    assert example["source"] == source
    assert example["target"] == ("3.2" if name == "stsb" else str(row["label"]))
    assert example["label"] == row["label"]


@pytest.mark.parametrize("name", sorted(ROWS))
def test_metrics_are_the_library_ones(name):
    """On valid predictions every metric is scikit-learn's or scipy's."""
    task = get_task(name)
    rng = np.random.default_rng(0)
    groups = [i // 4 for i in range(40)]
    if task.is_regression:
        labels, predictions = rng.uniform(0, 5, 40), rng.uniform(0, 5, 40)
        expected = {"pearson": pearsonr(predictions, labels)[0], "spearman": spearmanr(predictions, labels)[0]}
    else:
        labels, predictions = rng.integers(0, task.num_labels, 40), rng.integers(0, task.num_labels, 40)
        right = labels == predictions
        expected = {
            "accuracy": accuracy_score(labels, predictions),
            "f1": f1_score(labels, predictions, labels=[1], average="macro"),
            "f1_macro": f1_score(labels, predictions, labels=list(range(task.num_labels)), average="macro"),
            "matthews_correlation": matthews_corrcoef(labels, predictions),
            "exact_match": np.mean([right[g * 4:(g + 1) * 4].all() for g in range(10)]),
        }
    metrics = compute_metrics(task, predictions, labels, groups)
    assert list(metrics) == list(task.metrics)
    for key, value in metrics.items():
        assert value == pytest.approx(expected[key])


def test_an_invalid_output_is_wrong_in_every_metric_as_dept_scores_it():
    """Hand-computed. F1: an invalid output on a negative example is a false positive (DePT's
    f1_score_with_invalid sets it to the opposite label), on a positive one a false negative."""
    mrpc = get_task("mrpc")  # accuracy, f1
    metrics = compute_metrics(mrpc, [1, -1, -1, 0, 1], [1, 0, 1, 0, 1])
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["f1"] == pytest.approx(2 / 3)  # TP 2, FP 1, FN 1 (it was 0.8 when -1 counted as negative)
    cb = get_task("cb")  # three classes: the invalid output takes a label other than the gold one
    assert compute_metrics(cb, [0, -1, 2, 1], [0, 1, 2, 2])["f1_macro"] == pytest.approx((1 + 0 + 0.5) / 3)
    multirc = get_task("multirc")  # f1 over all answers, and exact match per question
    metrics = compute_metrics(multirc, [1, 0, 1, 0, -1], [1, 0, 1, 1, 0], groups=["q1", "q1", "q2", "q2", "q3"])
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # TP 2, FP 1 (the invalid), FN 1
    with pytest.raises(ValueError, match=r"exact_match: needs the group of every example"):
        compute_metrics(multirc, [1], [1])


def test_multirc_rows_are_grouped_by_their_question(tmp_path):
    rows = [{"paragraph": "p", "question": "q", "answer": "a", "label": 1, "idx": {"paragraph": 2, "question": 5}},
            {"paragraph": "p", "question": "q", "answer": "b", "label": 0, "group": "x"}]
    assert format_rows(get_task("multirc"), rows[:1], "f")[0]["group"] == "2/5"
    with pytest.raises(ValueError, match=r"f, row 1: column 'idx' is absent \(exact match groups the examples"):
        format_rows(get_task("multirc"), rows[1:], "f")


def test_generated_strings_that_are_not_labels_count_as_wrong():
    task = get_task("rte")
    predictions = [parse_prediction(task, s) for s in ["1", " 0 ", "yes", ""]]
    assert predictions == [1, 0, -1, -1]
    assert compute_metrics(task, predictions, [1, 0, 1, 0])["accuracy"] == 0.5
    assert parse_prediction(get_task("stsb"), "2.4") == 2.4 and parse_prediction(get_task("stsb"), "x") == -1.0
    assert label_text(get_task("stsb"), 4.93) == "5.0"


def test_dept_validation_test_split():
    small = [{"label": i} for i in range(100)]
    train, validation, test = split_validation_test(small, [{"label": i} for i in range(10)], seed=42)
    assert train == small and len(validation) == 5 and len(test) == 5
    large = [{"label": i} for i in range(12_000)]
    train, validation, test = split_validation_test(large, [{"label": -1}] * 7, seed=42)
    assert len(train) == 11_000 and len(validation) == 1000 and test == [{"label": -1}] * 7


def test_stratified_split_keeps_label_proportions_and_is_seeded():
    examples = [{"label": i % 5, "id": i} for i in range(1000)]
    train, validation, test = stratified_split(examples, seed=3)
    assert (len(train), len(validation), len(test)) == (800, 100, 100)
    assert sorted(e["label"] for e in validation) == sorted([k for k in range(5) for _ in range(20)])
    assert stratified_split(examples, seed=3) == (train, validation, test)


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data file .*missing.jsonl: not found"):
        read_rows(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence": "ok", "label": 1}\n{"sentence": "broken", \n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: not valid JSON"):
        read_rows(bad)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("sentence,label\nfine,1\ntoo,many,cells\n")
    with pytest.raises(ValueError, match=r"ragged.csv, line 3: expected 2 columns \(sentence, label\)"):
        read_rows(ragged)
    rows = [{"sentence": "no label here"}]
    with pytest.raises(ValueError,
                       match=r"train.csv, row 1: columns \['label'\] are absent \(the row has \['sentence'\]\)"):
        format_rows(get_task("sst2"), rows, "train.csv")
    with pytest.raises(ValueError, match=r"task: unknown task 'glue'; known tasks are"):
        get_task("glue")


@needs_offline_data
def test_bbc_headlines_split_the_distinct_headlines_by_topic_name():
    train, validation, test = bbc_headlines(seed=3)
    assert 2000 < len(train) + len(validation) + len(test) < 2225  # BBC News repeats some articles
    heads = [{row["text"] for row in part} for part in (train, validation, test)]
    assert not heads[0] & heads[1] and not heads[0] & heads[2] and not heads[1] & heads[2]
    assert {row["label"] for row in test} == {"business", "entertainment", "politics", "sports", "tech"}
    assert bbc_headlines(seed=3)[1] == validation and all(len(row["text"].split()) < 15 for row in train)


def test_labels_of_users_files_that_would_be_misread_are_errors():
    """Integer labels are class ids from 0: ids from 1 would leave a class 0 that never appears (and
    count it in macro-F1), so they are refused with the way out; an empty label cell is refused."""
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 2}]
    with pytest.raises(ValueError, match=r"train.jsonl: integer labels are class ids 0 … k-1, but the smallest is 1; "
                                         r"relabel from 0, or pass --label-names 1 2 to take them as names"):
        custom_task(rows, "label", ["text"], "train.jsonl")
    task = custom_task(rows, "label", ["text"], "train.jsonl", label_names=["1", "2"])
    assert [e["label"] for e in format_rows(task, rows, "train.jsonl")] == [0, 1]
    with pytest.raises(ValueError, match=r"train.csv, row 2: label column 'label' is empty"):
        custom_task([{"text": "a", "label": "0"}, {"text": "b", "label": " "}], "label", ["text"], "train.csv")
