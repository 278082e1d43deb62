#!/usr/bin/env bash
# Reruns the system benchmarks published in docs/benchmarks.md, on this
# machine, in one go: baselines (disk write+fsync, loopback TCP), then a fresh
# single-node broker and a three-node cluster measured with `strata bench`. Prints one JSON object per
# line (also written to target/bench-results.jsonl).
#
#   benches/run.sh            # full size (~1.5 GB written, a few minutes)
#   SCALE=0.1 benches/run.sh  # a quick smoke run
#
# Everything runs on the disk holding this checkout (the broker's data goes
# to a temporary directory here, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=benches/lib.sh
source benches/lib.sh

cargo build --release --quiet
# `benches/run.sh SECTION` runs one section (`metrics` or `cluster`), into
# its own results file.
SECTION=${1:-}
bench_setup "target/bench-results${SECTION:+-$SECTION}.jsonl"

# Starts a three-node cluster (peer ports picked free now, outside the range
# the kernel hands out for port 0); sets BOOT3 to a bootstrap list.
start_cluster() {
  local ports
  # Peer ports come from below the kernel's ephemeral range: a port bound to 0
  # and released would be free again for the next ephemeral bind, and the
  # first nodes' own data and control listeners (port 0) took one once.
  read -ra ports < <(python3 -c 'import random, socket
low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
# Below the range if there is room, else above it.
span = (max(1024, low - 12000), low) if low > 2048 else (high + 1, min(65536, high + 12001))
found = []
while len(found) < 3:
    port = random.randrange(*span)
    with socket.socket() as s:
        try: s.bind(("127.0.0.1", port))
        except OSError: continue
    if port not in found: found.append(port)
print(" ".join(map(str, found)))')
  local peers="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
  local dirs=() boots=()
  for i in 1 2 3; do
    local dir="$WORK/c$i"
    "$BIN" serve --data-dir "$dir" --data-addr 127.0.0.1:0 --control-addr 127.0.0.1:0 \
      --peer-addr "127.0.0.1:${ports[$((i - 1))]}" --node-id "$i" --peers "$peers" \
      > "$dir.out" 2> "$dir.log" &
    PIDS+=($!)
    dirs+=("$dir")
  done
  for dir in "${dirs[@]}"; do
    wait_serving "$dir"
    boots+=("$BOOT")
  done
  BOOT3=$(IFS=,; echo "${boots[*]}")
}

# Metrics cost: two fresh brokers, with and without request metrics, the same
# workload alternated seven times, the order flipped every round (whichever
# runs second in a pair meets the other's leftovers). Their data lives in
# memory (/dev/shm), so fsync costs nothing and the disk's noise (±30% here)
# is gone: the brokers run CPU-bound, where a per-request cost shows most.
# Each run also records the broker's CPU time. `benches/run.sh metrics` runs
# only this.
METRICS_ROUNDS=(1 2 3 4 5 6 7)
metrics_cost() {
  MEM=$(mktemp -d /dev/shm/strata-bench.XXXXXX)
  trap 'bench_cleanup; rm -rf "$MEM"' EXIT
  start_broker "$MEM/n_off" --no-metrics
  local b_off=$BOOT pid_off=${PIDS[-1]}
  start_broker "$MEM/n_on"
  local b_on=$BOOT pid_on=${PIDS[-1]}
  local round
  for round in "${METRICS_ROUNDS[@]}"; do
    local order=(off on)
    (( round % 2 == 0 )) && order=(on off)
    for side in "${order[@]}"; do
      local boot=$b_on pid=$pid_on
      [[ $side == off ]] && boot=$b_off pid=$pid_off
      CPU_PID=$pid bench "produce_1KiB_metrics_${side}_$round" produce --bootstrap "$boot" \
        --topic "tm$round" --create --partitions 4 --messages "$(n 400000)" --size 1024 --producers 4
      drop_topics "$boot" "tm$round"
    done
  done
  stop_and_remove "$pid_off" "$pid_on" -- "$MEM"
}

# drop_topics BOOTSTRAP TOPIC...: deletes topics whose rows are done. On the
# VM these numbers come from, touching memory beyond the ~4 GiB touched last
# is 6x slower (the host backs it lazily: 0.7 s per GiB, then 4-5 s), so a
# run that kept every row's data collapsed part-way through, whatever was
# measured at that point. Each row writes fresh data all the same.
drop_topics() {
  local boot=$1; shift
  local topic
  for topic in "$@"; do
    "$BIN" topic delete --bootstrap "$boot" "$topic" > /dev/null
  done
}

# stop_and_remove PID... -- DIR...: stops brokers and deletes their data, so
# the sections after them do not run beside gigabytes of memory or page cache
# held by brokers that are done (on this VM the three-node rows ran at a
# third of their speed behind the single-node and metrics sections' data).
stop_and_remove() {
  while [[ $1 != -- ]]; do
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    # Reaped: its pid may be reused, so the exit cleanup must not kill it.
    local kept=() pid
    for pid in "${PIDS[@]}"; do [[ $pid == "$1" ]] || kept+=("$pid"); done
    PIDS=("${kept[@]}")
    shift
  done
  shift
  rm -rf "$@"
}

# End to end: the peak with producers and consumers running together (closed
# loop), then latency at half that rate (open loop: no coordinated omission).
# Labels start with $1; runs against bootstrap $2 with $3 messages each.
e2e_peak_and_half() {
  local prefix=$1 boot=$2 messages=$3
  bench "${prefix}e2e_1KiB_peak" e2e --bootstrap "$boot" --topic "${prefix}tep" --create \
    --partitions 4 --messages "$messages" --size 1024 --producers 4
  local peak half
  peak=$(field "${prefix}e2e_1KiB_peak" msgs_per_s)
  half=$(python3 -c "print(int($peak / 2))")
  bench "${prefix}e2e_1KiB_half_peak" e2e --bootstrap "$boot" --topic "${prefix}te" --create \
    --partitions 4 --messages "$messages" --size 1024 --producers 4 --rate "$half"
  # The same rate with a producer that lingers its 5 ms even when nothing of
  # a partition's is in flight (Kafka's linger.ms; by default such a batch
  # goes at once): what waiting for linger alone costs.
  bench "${prefix}e2e_1KiB_half_peak_linger_when_idle" e2e --bootstrap "$boot" --topic "${prefix}tl" \
    --create --partitions 4 --messages "$messages" --size 1024 --producers 4 --rate "$half" \
    --linger-when-idle
  drop_topics "$boot" "${prefix}tep" "${prefix}te" "${prefix}tl"
}

# Three nodes on this machine, every partition replicated three times: each
# acknowledged batch is fsynced by all three processes on the same disk and
# cores, so this measures the replication path's overhead, not a real cluster's
# capacity (which has a disk and cores per node).
cluster3() {
  start_cluster
  bench cluster3_produce_1KiB_acks_all produce --bootstrap "$BOOT3" --topic r1k --create --partitions 4 \
    --messages "$(n 200000)" --size 1024 --producers 4
  bench cluster3_consume_1KiB_catch_up consume --bootstrap "$BOOT3" --topic r1k --messages "$(n 200000)"
  drop_topics "$BOOT3" r1k
  bench cluster3_produce_100B_acks_all produce --bootstrap "$BOOT3" --topic r100 --create --partitions 4 \
    --messages "$(n 1000000)" --size 100 --producers 4
  drop_topics "$BOOT3" r100
  e2e_peak_and_half cluster3_ "$BOOT3" "$(n 100000)"
}

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)" >&2
# A full run writes about 10 GB; once the page cache has taken the free
# memory, new pages come from reclaim on the benchmark's own cores and the
# later rows fall by half or more (docs/benchmarks.md, "Rerunning").
free_gib=$(free -g | awk '/Mem:/ {print $4}')
if (( free_gib < 12 )); then
  echo "# warning: only ${free_gib} GiB free (the rest is mostly page cache);" \
    "see docs/benchmarks.md, Rerunning, before trusting the later rows" >&2
fi

if [[ $SECTION == metrics ]]; then
  metrics_cost
elif [[ $SECTION == cluster ]]; then
  cluster3
else
# Baselines: what the disk and the loopback network can do.
bench disk_1MiB_fsync disk --messages "$(n 262144)" --size 1024 --batch-size 1048576 --dir "$WORK"
bench disk_64KiB_fsync disk --messages "$(n 65536)" --size 1024 --batch-size 65536 --dir "$WORK"
bench tcp_loopback tcp --messages "$(n 1048576)" --size 1024 --producers 4

start_broker "$WORK/n1"
B1=$BOOT
# The broker's CPU time is recorded with these runs (broker_cpu_ms), beside
# the bench process's own (process_cpu_ms): where the CPU per MB goes.
B1_PID=${PIDS[-1]}
# 1 GiB of backlog, then read back in one go (from the page cache).
CPU_PID=$B1_PID bench produce_1KiB_acks_all produce --bootstrap "$B1" --topic t1k --create \
  --partitions 4 --messages "$(n 1048576)" --size 1024 --producers 4
CPU_PID=$B1_PID bench consume_1KiB_catch_up consume --bootstrap "$B1" --topic t1k \
  --messages "$(n 1048576)"
drop_topics "$B1" t1k
bench produce_100B_acks_all produce --bootstrap "$B1" --topic t100 --create --partitions 4 \
  --messages "$(n 2000000)" --size 100 --producers 4
bench produce_1KiB_1_producer produce --bootstrap "$B1" --topic t1p --create --partitions 1 \
  --messages "$(n 200000)" --size 1024 --producers 1
drop_topics "$B1" t100 t1p

e2e_peak_and_half "" "$B1" "$(n 200000)"

# The broker's own durable appends (in-process: no gRPC, no client; up to 5
# batches in flight per writer, as the client keeps per partition) against the
# same workload produced over gRPC, alternated three times (disk noise
# dominates single runs): 4 writers on 4 partitions, and 1 on 1.
for round in 1 2 3; do
  bench "engine_append_1KiB_4w_$round" append --messages "$(n 200000)" --size 1024 \
    --producers 4 --partitions 4 --dir "$WORK"
  bench "produce_1KiB_4p_$round" produce --bootstrap "$B1" --topic "tr4_$round" --create \
    --partitions 4 --messages "$(n 200000)" --size 1024 --producers 4
  bench "engine_append_1KiB_1w_$round" append --messages "$(n 100000)" --size 1024 \
    --producers 1 --partitions 1 --dir "$WORK"
  bench "produce_1KiB_1p_$round" produce --bootstrap "$B1" --topic "tr1_$round" --create \
    --partitions 1 --messages "$(n 100000)" --size 1024 --producers 1
  drop_topics "$B1" "tr4_$round" "tr1_$round"
done

# In-process versus loopback gRPC, same broker, same run.
bench embedded_1KiB embedded --messages "$(n 200000)" --size 1024 --producers 4 --dir "$WORK"
stop_and_remove "$B1_PID" -- "$WORK/n1"

metrics_cost

cluster3
fi

# The ratios of whatever ran (all of it, or one section).
python3 - "$OUT" <<'PY' >&2
import json, sys
r = {}
for line in open(sys.argv[1]):
    d = json.loads(line); r[d["label"]] = d
def mb(k): return r[k]["mb_per_s"]
def median(xs): return sorted(xs)[len(xs) // 2]
def rounds(prefix): return sorted({int(k.rsplit("_", 1)[1]) for k in r if k.startswith(prefix)})
def ratio(a, b): return median([mb(f"{a}_{i}") for i in rounds(a)]) / median([mb(f"{b}_{i}") for i in rounds(b)])
def cpu(k): return median([r[f"{k}_{i}"]["broker_cpu_ms"] for i in rounds(k)])
def cpu_per_mb(k):
    mbs = r[k]["bytes"] / 1e6
    return f"{r[k]['process_cpu_ms'] / mbs:.2f} + {r[k]['broker_cpu_ms'] / mbs:.2f}"
def e2e(p): return f"{r[p + 'e2e_1KiB_half_peak']['p99_ms']:.1f} ms (lingering when idle: {r[p + 'e2e_1KiB_half_peak_linger_when_idle']['p99_ms']:.1f} ms)"
metrics_runs = len(rounds("produce_1KiB_metrics_on"))
lines = [
    ("produce 1KiB (4 producers) / disk write+fsync 1MiB", lambda: f"{mb('produce_1KiB_acks_all') / mb('disk_1MiB_fsync'):.2f}"),
    ("consume catch-up / produce", lambda: f"{mb('consume_1KiB_catch_up') / mb('produce_1KiB_acks_all'):.2f}"),
    ("in-process / loopback gRPC", lambda: f"{r['embedded_1KiB']['in_process_over_loopback']:.2f}"),
    ("produce / engine append, 4 x 4 (medians of 3)", lambda: f"{ratio('produce_1KiB_4p', 'engine_append_1KiB_4w'):.2f}"),
    ("produce / engine append, 1 x 1 (medians of 3)", lambda: f"{ratio('produce_1KiB_1p', 'engine_append_1KiB_1w'):.2f}"),
    (f"metrics on / off, in memory (medians of {metrics_runs})", lambda: f"{ratio('produce_1KiB_metrics_on', 'produce_1KiB_metrics_off'):.3f}"),
    (f"broker CPU, metrics off / on (medians of {metrics_runs})", lambda: f"{cpu('produce_1KiB_metrics_off') / cpu('produce_1KiB_metrics_on'):.3f}"),
    ("3-node produce 1KiB / single node", lambda: f"{mb('cluster3_produce_1KiB_acks_all') / mb('produce_1KiB_acks_all'):.2f}"),
    ("3-node produce 1KiB / disk write+fsync 1MiB", lambda: f"{mb('cluster3_produce_1KiB_acks_all') / mb('disk_1MiB_fsync'):.2f}"),
    ("3-node produce 100B / single node", lambda: f"{mb('cluster3_produce_100B_acks_all') / mb('produce_100B_acks_all'):.2f}"),
    ("CPU ms per MB produced, client + broker", lambda: cpu_per_mb("produce_1KiB_acks_all")),
    ("CPU ms per MB consumed, client + broker", lambda: cpu_per_mb("consume_1KiB_catch_up")),
    ("single-node e2e p99 at half peak", lambda: e2e("")),
    ("3-node e2e p99 at half peak", lambda: e2e("cluster3_")),
]
print("# ratios")
for title, value in lines:
    try:
        print(f"{title + ':':52}{value()}")
    except (KeyError, IndexError):
        pass  # that section did not run
PY
