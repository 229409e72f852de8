#!/usr/bin/env bash
# The screenshots in this folder: `mlflow ui` on a study's results, in headless Chromium
# (Debian's `chromium` package), at the links the study prints.
#
#   docs/images/screenshots.sh RESULTS [EXPERIMENT_ID]
#
# RESULTS is a study's --results folder (the README's main job writes results/). Writes
# mlflow_trials.png (the trial view the study links), study_report.png (the study run's
# report.html) and mlflow_trial.png (the best searched trial's run page) here.
set -euo pipefail
results=$(cd "$1" && pwd)
experiment=${2:-1}
here=$(cd "$(dirname "$0")" && pwd)
port=${PORT:-5055}
mlflow ui --backend-store-uri "sqlite:///$results/mlflow.db" --host 127.0.0.1 --port $port \
  >/dev/null 2>&1 &
ui=$!
trap 'kill $ui 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 1; done

shot() {  # URL FILE: a 1900x1000 page after 20 s of page time
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$(mktemp -d)" --hide-scrollbars --window-size=1900,1000 \
    --virtual-time-budget=20000 --screenshot="$2" "$1" 2>/dev/null
}
ui_url="http://127.0.0.1:$port/#/experiments/$experiment"
shot "$ui_url/runs?workflowType=machine_learning&viewStateShareKey=hetero-lr-trials" \
  "$here/mlflow_trials.png"

# The study run's report and the best trial's run, found through the store.
read -r study_run best_run < <(python - "$results" "$experiment" <<'EOF'
import sys
from mlflow import MlflowClient
client = MlflowClient(f"sqlite:///{sys.argv[1]}/mlflow.db")
runs = client.search_runs([sys.argv[2]], "tags.`hetero_lr.role` = 'study'")
trials = client.search_runs(  # the best searched trial: it has a baseline to compare with
    [sys.argv[2]],
    "tags.`hetero_lr.role` = 'trial' and tags.rule = 'replicate'",
    order_by=["metrics.objective DESC"],
)
print(runs[0].info.run_id, trials[0].info.run_id)
EOF
)
report=$(python -c "from mlflow import MlflowClient; import sys; print(MlflowClient('sqlite:///$results/mlflow.db').download_artifacts('$study_run', 'report.html'))")
shot "file://$report" "$here/study_report.png"
shot "$ui_url/runs/$best_run?workflowType=machine_learning" "$here/mlflow_trial.png"
echo "screenshots in $here"
