#!/usr/bin/env bash
# The six-task suite of docs/results.md: `ept-fast compare` of the methods against the head
# alone and the linear probe on CR, TREC, SUBJ, CoLA (../shared/data), BBC headlines and the
# embedded BBC News, each at the command line's defaults, training capped at 4,000 examples.
#
#   bash benchmarks/probe_suite.sh OUT_DIR [SEEDS] [extra ept-fast compare options...]
#
# One folder per task under OUT_DIR; rerunning with more SEEDS resumes (finished runs are read
# back). Needs the public tasks beside the checkout (DATA, default ../shared/data).
set -euo pipefail
out=${1:?usage: probe_suite.sh OUT_DIR [SEEDS] [options...]}
seeds=${2:-3}
shift $(( $# >= 2 ? 2 : 1 ))
data=${DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
python=${PYTHON:-python}
methods=${METHODS:-ept dept pt head probe}
mkdir -p "$out"
[ -f "$out/bbc_headlines/train.jsonl" ] || "$python" "$(dirname "$0")/make_bbc_headlines.py" "$out/bbc_headlines" >/dev/null
run() {  # task folder, then its data options
  local name=$1; shift
  local resume=()
  [ -d "$out/$name" ] && resume=(--resume)
  "$python" -m ept_fast.cli compare --methods $methods --seeds "$seeds" --output-dir "$out/$name" "${resume[@]}" \
    --max-train-samples 4000 "$@" "${EXTRA[@]}" > "$out/$name.log" 2>&1
  echo "$(date -u +%H:%M:%S) $name done"
}
EXTRA=("$@")
files() { echo --train-file "$1/train.$2" --validation-file "$1/validation.$2" --test-file "$1/test.$2"; }
for task in ${TASKS:-cr trec bbc_headlines bbc_news subj cola}; do
  case $task in
    bbc_news) run bbc_news ;;
    bbc_headlines) run bbc_headlines $(files "$out/bbc_headlines" jsonl) ;;
    cola) run cola $(files "$data/cola" csv) --metric-for-best-model matthews_correlation ;;
    *) run "$task" $(files "$data/$task" csv) ;;
  esac
done
