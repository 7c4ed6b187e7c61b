#!/bin/bash
# Every way of removing depth on one model, into one database, then the report (README, "Every way to
# remove depth"). Usage: bench/depth_methods.sh MODEL DB LIMIT NEW_TOKENS L KEEP DROP REMOVE DRAFT
#   e.g. bench/depth_methods.sh smollm2-135m-instruct /tmp/smol.duckdb 12 32 30 23 20-26 7 15
#        bench/depth_methods.sh depthscope-demo /tmp/demo.duckdb 24 32 8 6 3-4 2 4
set -eu
MODEL=$1 DB=$2 LIMIT=$3 TOKENS=$4 L=$5 KEEP=$6 DROP=$7 REMOVE=$8 DRAFT=$9
PY=${PYTHON:-.venv/bin/python}
COMMON=(--model "$MODEL" --prompts demo --limit "$LIMIT" --max-new-tokens "$TOKENS" --db "$DB" --judges keyword)
$PY -m engine sweep "${COMMON[@]}" --layers "$L,$KEEP"                       # truncation: full, and KEEP
$PY -m engine sweep "${COMMON[@]}" --drop-layers "$DROP"                     # a block removed by hand
$PY -m engine sweep "${COMMON[@]}" --prune angular --remove "$REMOVE" --calibration-limit 16
$PY -m engine sweep "${COMMON[@]}" --prune block-influence --remove "$REMOVE" --calibration-limit 16
$PY -m engine sweep "${COMMON[@]}" --exit-policy speculative --draft-layers "$DRAFT" --draft-tokens 4
$PY -m engine report --db "$DB" --json > "$DB.report.json"
$PY -m engine report --db "$DB"
