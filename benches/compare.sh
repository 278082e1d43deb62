#!/usr/bin/env bash
# Runs the same produce and catch-up consume workloads against Strata and,
# when `nats-server` is installed, against NATS JetStream: same machine, same
# disk, same run, so the comparison in docs/benchmarks.md ("Against another
# broker") can be rerun by anyone. Prints one labelled JSON object per run
# (also written to target/compare-results.jsonl), then Strata / NATS ratios.
#
#   benches/compare.sh                   # full size (~0.3 GB to NATS, ~0.5 GB to Strata)
#   SCALE=0.1 benches/compare.sh         # a quick smoke run
#   NATS_ACK_WINDOW=64 benches/compare.sh
#
# NATS is driven by benches/compare/ (nats-bench), which sends the same
# records as `strata bench` and verifies what it reads with the same code.
# Both brokers keep their data in one temporary directory in this checkout,
# removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh

# Publish acks each NATS producer keeps outstanding. In a sweep on the
# 2-vCPU machine of docs/benchmarks.md, throughput rose from a window of 16
# to 64 and moved only within the run-to-run noise from 64 to 1024, while
# latency grew with the window (it is a queue): this sits inside the plateau.
NATS_ACK_WINDOW=${NATS_ACK_WINDOW:-256}

cargo build --release --quiet
bench_setup target/compare-results.jsonl

HAVE_NATS=1
if ! command -v nats-server > /dev/null; then
  HAVE_NATS=0
  cat >&2 <<'EOF'
# nats-server not found: running Strata only. To compare with NATS JetStream:
#   sudo apt-get install nats-server     (Debian/Ubuntu; or any nats-server on PATH)
# then rerun benches/compare.sh.
EOF
fi

if [ "$HAVE_NATS" = 1 ]; then
  # Its own lock file and target directory: the driver is not part of the
  # Strata workspace and must not change Strata's dependency tree.
  DRIVER_TARGET=${CARGO_TARGET_DIR:-$PWD/target/compare}
  cargo build --release --quiet --manifest-path benches/compare/Cargo.toml \
    --target-dir "$DRIVER_TARGET"
  NATS_BENCH=$DRIVER_TARGET/release/nats-bench
fi

# Writes the NATS config to $1: a random free port (-1), JetStream file
# storage under $WORK, and $2 as sync_interval unless $2 is empty.
nats_config() {
  local conf=$1 sync=$2
  {
    echo "listen: 127.0.0.1:-1"
    echo "jetstream {"
    echo "  store_dir: \"$WORK/nats\""
    if [ -n "$sync" ]; then echo "  sync_interval: $sync"; fi
    echo "}"
  } > "$conf"
}

# Starts nats-server; sets NATS_URL, NATS_VERSION and NATS_SYNC.
#
# Strata acknowledges acks=all only once the record is fsynced. JetStream
# acknowledges once the message is written to its block file (the page
# cache) and fsyncs on a timer (every 2 minutes for a stream in 2.9), unless
# `sync_interval: always` is set, which 2.10 and later accept and 2.9
# rejects as an unknown field. Ask the server itself (-t checks a config)
# rather than guess from the version.
start_nats() {
  local conf=$WORK/nats.conf
  nats_config "$conf" always
  if nats-server -c "$conf" -t > /dev/null 2>&1; then
    NATS_SYNC=always
  else
    NATS_SYNC="default (no sync_interval; fsync on a timer, not before the ack)"
    nats_config "$conf" ""
  fi
  NATS_VERSION=$(nats-server --version | sed 's/^nats-server: //')
  nats-server -c "$conf" > "$WORK/nats.out" 2> "$WORK/nats.log" &
  PIDS+=($!)
  for _ in $(seq 1 600); do
    if grep -q 'Server is ready' "$WORK/nats.log" 2>/dev/null; then
      NATS_URL=nats://$(sed -n 's/.*Listening for client connections on \([^ ]*\).*/\1/p' "$WORK/nats.log")
      return
    fi
    sleep 0.1
  done
  echo "nats-server did not start" >&2; cat "$WORK/nats.log" >&2; exit 1
}

# Runs one nats-bench mode against the server, tagging the line with what a
# reader needs to judge it: server version and fsync setting.
nats_bench() {
  "$NATS_BENCH" "$@" --server "$NATS_URL" --json |
    NATS_VERSION=$NATS_VERSION NATS_SYNC=$NATS_SYNC python3 -c 'import json,os,sys
d = json.loads(sys.stdin.read())
d["nats_version"] = os.environ["NATS_VERSION"]
d["nats_sync"] = os.environ["NATS_SYNC"]
print(json.dumps(d))'
}

# produce_and_consume BROKER NAME SIZE MESSAGES: produce MESSAGES records of
# SIZE bytes with 4 producers, then read them all back with one consumer;
# labelled BROKER_produce_NAME and BROKER_consume_NAME.
produce_and_consume() {
  local broker=$1 name=$2 size=$3 messages=$4
  local topic="c$name"
  if [ "$broker" = strata ]; then
    bench "strata_produce_$name" produce --bootstrap "$BOOT" --topic "$topic" --create \
      --partitions 4 --messages "$messages" --size "$size" --producers 4
    bench "strata_consume_$name" consume --bootstrap "$BOOT" --topic "$topic" \
      --messages "$messages"
  elif [ "$HAVE_NATS" = 1 ]; then
    record "nats_produce_$name" nats_bench produce --stream "$topic" --create \
      --messages "$messages" --size "$size" --producers 4 --window "$NATS_ACK_WINDOW"
    record "nats_consume_$name" nats_bench consume --stream "$topic" --messages "$messages"
  fi
}

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)" >&2
start_broker "$WORK/strata"
echo "# strata: $("$BIN" --version 2>/dev/null || echo "$BIN")" >&2
if [ "$HAVE_NATS" = 1 ]; then
  start_nats
  echo "# nats-server $NATS_VERSION at $NATS_URL, sync: $NATS_SYNC, ack window $NATS_ACK_WINDOW" >&2
fi

# The second workload runs NATS first, so that neither broker always meets
# the disk right after the other (its write-back, its noisy phases).
produce_and_consume strata 1KiB 1024 "$(n 200000)"
produce_and_consume nats 1KiB 1024 "$(n 200000)"
produce_and_consume nats 100B 100 "$(n 1000000)"
produce_and_consume strata 100B 100 "$(n 1000000)"
# A JetStream stream is one log; a Strata topic of four partitions is four,
# fsynced in parallel. The same 1 KiB workload on one partition shows how
# much of the gap that accounts for.
bench strata_produce_1KiB_1_partition produce --bootstrap "$BOOT" --topic c1p --create \
  --partitions 1 --messages "$(n 200000)" --size 1024 --producers 4

python3 - "$OUT" <<'PY' >&2
import json, sys
r = {}
for line in open(sys.argv[1]):
    d = json.loads(line); r[d["label"]] = d
if not any(k.startswith("nats_") for k in r):
    print("# no NATS runs (nats-server not installed): nothing to compare")
    sys.exit(0)
print(f"# Strata / NATS (NATS sync: {r['nats_produce_1KiB']['nats_sync']})")
rows = [("produce 1 KiB x 4 producers", "produce_1KiB"), ("consume 1 KiB catch-up", "consume_1KiB"),
        ("produce 100 B x 4 producers", "produce_100B"), ("consume 100 B catch-up", "consume_100B")]
for title, k in rows:
    s, n = r[f"strata_{k}"], r[f"nats_{k}"]
    line = f"{title:30} {s['mb_per_s']:8.1f} / {n['mb_per_s']:8.1f} MB/s = {s['mb_per_s'] / n['mb_per_s']:5.2f}"
    if k.startswith("produce"):
        line += f"   p99 {s['p99_ms']:.1f} / {n['p99_ms']:.1f} ms"
    print(line)
s, n = r["strata_produce_1KiB_1_partition"], r["nats_produce_1KiB"]
print(f"{'produce 1 KiB, 1 partition':30} {s['mb_per_s']:8.1f} / {n['mb_per_s']:8.1f} MB/s = {s['mb_per_s'] / n['mb_per_s']:5.2f}")
PY
