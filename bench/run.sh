#!/usr/bin/env bash
# The side-by-side benchmark: spark against the SQL floor and django-spark
# 0.3.0, through the shared harness (../shared/bench/compare.sh), repeated,
# summarised as medians, ratios and a chart.
#
# Usage: bench/run.sh [N ...]            (default: 10000 100000 1000000)
#
# Environment:
#   REPS=3           runs of compare.sh per N (medians are reported)
#   PEER_MAX=100000  run django-spark for N up to this (once per N: it takes
#                    ~5 min at 100,000 and would take about an hour at 1,000,000)
#   HARNESS=../shared/bench   where compare.sh lives (relative to the repo)
#
# Writes bench/results.csv (every run), bench/results.md (the table) and
# bench/chart.svg (time against N, log axes). Needs python3; the harness
# builds django-spark's venv itself the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
HARNESS="${HARNESS:-../shared/bench}"
REPS="${REPS:-3}"
PEER_MAX="${PEER_MAX:-100000}"
NS=("$@")
[ ${#NS[@]} -gt 0 ] || NS=(10000 100000 1000000)

[ -x "$HARNESS/compare.sh" ] || { echo "bench/run.sh: no $HARNESS/compare.sh" >&2; exit 2; }
cargo build --release --locked -q
BIN="$REPO/target/release/spark"
CSV="$REPO/bench/results.csv"
echo "n,rep,contender,run1_s,run2_s,run1_events,max_rss_kib" > "$CSV"

for n in "${NS[@]}"; do
    for rep in $(seq 1 "$REPS"); do
        peer=0
        if [ "$rep" = 1 ] && [ "$n" -le "$PEER_MAX" ]; then peer=1; fi
        echo "== N=$n rep $rep/$REPS (django-spark: $([ $peer = 1 ] && echo yes || echo no))" >&2
        out="$(PEER=$peer SPARK_BIN="$BIN" "$HARNESS/compare.sh" "$n" 2>&1)" || {
            echo "$out" >&2
            echo "bench/run.sh: compare.sh $n failed" >&2
            exit 1
        }
        rss="$(sed -n 's/^spark run 1: spark_max_rss_kib=//p' <<<"$out" | tail -n 1)"
        while read -r name r1 r2 ev1 _; do
            case "$name" in floor|peer|spark) ;; *) continue ;; esac
            m=""
            [ "$name" = spark ] && m="$rss"
            echo "$n,$rep,$name,$r1,$r2,$ev1,$m" >> "$CSV"
        done < <(grep -E '^(floor|peer|spark) +[0-9]' <<<"$out")
        grep -E '^(OK|FAIL)' <<<"$out" >&2 || true
    done
done

python3 "$REPO/bench/report.py" "$CSV" "$REPO/bench/results.md" "$REPO/bench/chart.svg"
cat "$REPO/bench/results.md"
