# shellcheck shell=bash
# Variables assigned here (BIN, BOOT, OUT, WORK) are read by the sourcing script.
# shellcheck disable=SC2034
# Shared by benches/run.sh and benches/compare.sh (sourced, not run): a
# scratch directory on the checkout's disk, brokers on ephemeral ports, and
# labelled JSON result lines. Expects the working directory to be the
# checkout's root and `set -euo pipefail` in the caller.

SCALE=${SCALE:-1}
# The binary `cargo build --release` just produced, wherever cargo puts it.
BIN=${CARGO_TARGET_DIR:-target}/release/strata

# n COUNT: COUNT scaled by $SCALE, at least 1000 (so SCALE=0.01 still runs).
n() { python3 -c "print(max(1000, int($1 * $SCALE)))"; }

# bench_setup OUT: creates $WORK (on this disk, so brokers write where the
# disk baselines did), empties OUT and arranges for every process started
# into PIDS and $WORK itself to go away on exit, however the script ends.
bench_setup() {
  OUT=$1
  mkdir -p "$(dirname "$OUT")"
  WORK=$(mktemp -d ./strata-bench.XXXXXX)
  PIDS=()
  trap bench_cleanup EXIT
  : > "$OUT"
}

bench_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

# Waits until the broker whose stdout is $1.out serves; sets BOOT to its
# control address.
wait_serving() {
  local dir=$1
  for _ in $(seq 1 600); do
    if grep -q '^strata serving' "$dir.out" 2>/dev/null; then
      BOOT=$(sed -n 's/^strata serving .* control=\([^ ]*\) .*/\1/p' "$dir.out")
      return
    fi
    sleep 0.1
  done
  echo "broker in $dir did not start" >&2; cat "$dir.log" >&2; exit 1
}

# Starts a broker on ephemeral ports; sets BOOT to its control address.
start_broker() {
  local dir=$1; shift
  "$BIN" serve --data-dir "$dir" --data-addr 127.0.0.1:0 --control-addr 127.0.0.1:0 \
    --peer-addr 127.0.0.1:0 "$@" > "$dir.out" 2> "$dir.log" &
  PIDS+=($!)
  wait_serving "$dir"
}

# record LABEL COMMAND...: runs a command that prints one JSON object, adds
# "label": LABEL, prints it and appends it to $OUT.
record() {
  local label=$1; shift
  local line
  line=$("$@")
  line=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["label"]=sys.argv[2]; print(json.dumps(d))' "$line" "$label")
  echo "$line" | tee -a "$OUT"
}

# CPU time in ms process $1 has used so far.
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{print int(($14 + $15) * 1000 / hz)}' "/proc/$1/stat"; }

# Runs one `strata bench`, labelled. With CPU_PID set, also records the CPU
# time that process (a broker) spent meanwhile as "broker_cpu_ms".
bench() {
  local label=$1; shift
  local line before=0 after=0
  [[ -n ${CPU_PID:-} ]] && before=$(cpu_ms "$CPU_PID")
  line=$("$BIN" bench "$@" --json)
  [[ -n ${CPU_PID:-} ]] && after=$(cpu_ms "$CPU_PID")
  line=$(python3 -c 'import json,sys
d = json.loads(sys.argv[1]); d["label"] = sys.argv[2]
if sys.argv[3] != "": d["broker_cpu_ms"] = int(sys.argv[3])
print(json.dumps(d))' "$line" "$label" "${CPU_PID:+$((after - before))}")
  echo "$line" | tee -a "$OUT"
}

# field LABEL KEY: one value from the line labelled LABEL in $OUT.
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$(grep "\"label\": \"$1\"" "$OUT")" "$2"; }
