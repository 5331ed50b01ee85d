#!/usr/bin/env bash
# The quickstart job (its first 48 rows, 12 steps, as `rft quickstart` trains) with the local
# engine, then through two `rft serve --adapter-root` workers on loopback ports 8101 and 8102;
# prints each run's wall time, rewards and step split, and the fleet's publish times.
#
#   cargo build --release && scripts/fleet_compare.sh [WORK_DIR]     # from the repository root
set -euo pipefail
RFT=${RFT:-target/release/rft}
RFT=$(realpath "$RFT")
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK" && cd "$WORK"
head -48 "$OLDPWD/examples/quickstart/train.jsonl" > train.jsonl
cp "$OLDPWD/examples/quickstart/valid.jsonl" "$OLDPWD/examples/quickstart/job.json" .
rm -rf local fleet adapters w1 w2
/usr/bin/time -f "local wall %e s, peak %M KB" $RFT train --config job.json --output local > local.out 2> local.err
mkdir -p adapters
RFT_API_KEYS= $RFT serve --port 8101 --data w1 --adapter-root adapters > w1.log 2>&1 &
P1=$!
RFT_API_KEYS= $RFT serve --port 8102 --data w2 --adapter-root adapters > w2.log 2>&1 &
P2=$!
sleep 3
/usr/bin/time -f "fleet wall %e s, peak %M KB (trainer)" $RFT train --config job.json --output fleet \
  --rollout-url http://127.0.0.1:8101/v1 --rollout-url http://127.0.0.1:8102/v1 --adapter-dir adapters > fleet.out 2> fleet.err
kill $P1 $P2; wait $P1 $P2 2>/dev/null || true
for run in local fleet; do
  echo "== $run"
  tail -3 $run.err
  python3 - "$run" <<'PY'
import json, sys
run = sys.argv[1]
steps = []
for line in open(f"{run}/events.jsonl"):
    e = json.loads(line)
    if e.get("type") != "metrics":
        continue
    d = e["data"]
    t = d.get("timing", {}).get("step", {})
    steps.append((d["step"], d["scores"].get("train_reward_mean"), d["scores"].get("valid_reward_mean"),
                  t.get("sampling"), t.get("training"), t.get("full_iteration"), d.get("rollout_logprob_diff")))
for s in steps:
    print(s)
train = [s[1] for s in steps if s[1] is not None]
samp = [s[3] for s in steps if s[3] is not None]
tr = [s[4] for s in steps if s[4] is not None]
full = [s[5] for s in steps if s[5] is not None]
print(f"{run}: mean train reward {sum(train)/len(train):.4f}; per step: sampling+grading {sum(samp)/len(samp):.2f} s, training {sum(tr)/len(tr):.2f} s, full {sum(full)/len(full):.2f} s")
PY
done
