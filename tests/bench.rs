//! `strata bench` against a real broker: each mode on a tiny workload, the
//! JSON contract, and verification that fails on data a broker must never
//! produce.

mod common;

use common::{Node, cli, cli_ok};

const FIELDS: [&str; 10] = [
    "messages",
    "bytes",
    "seconds",
    "mb_per_s",
    "msgs_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    // What the run cost the bench process (its clients), for CPU per MB.
    "process_cpu_ms",
];

fn bench_json(bootstrap: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = cli_ok(bootstrap, &all, None);
    assert_eq!(
        out.trim().lines().count(),
        1,
        "exactly one JSON line: {out}"
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for field in FIELDS {
        assert!(v[field].is_number(), "{field} missing in {v}");
    }
    v
}

#[test]
fn every_bench_mode_runs_and_reports_the_json_contract() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n1"));
    let b = node.bootstrap();
    let produced = bench_json(
        &b,
        &[
            "produce",
            "--topic",
            "bt",
            "--create",
            "--partitions",
            "3",
            "--messages",
            "3000",
            "--size",
            "200",
            "--producers",
            "3",
        ],
    );
    assert_eq!(produced["messages"], 3000);
    assert_eq!(produced["bytes"], 600_000);
    assert!(produced["p50_ms"].as_f64().unwrap() > 0.0);
    // The producers' own account of how they batched.
    let per_batch = produced["batch_records_mean"].as_f64().unwrap();
    assert!((1.0..=3000.0).contains(&per_batch), "{produced}");
    assert!(produced["request_ms_mean"].as_f64().unwrap() > 0.0);
    assert!(produced["batch_queue_ms_mean"].as_f64().unwrap() >= 0.0);
    assert_eq!(produced["retries"], 0);

    let consumed = bench_json(&b, &["consume", "--topic", "bt", "--messages", "3000"]);
    assert_eq!(consumed["messages"], 3000);
    assert_eq!(consumed["verified"], true);
    let grouped = bench_json(
        &b,
        &[
            "consume",
            "--topic",
            "bt",
            "--messages",
            "3000",
            "--consumers",
            "3",
        ],
    );
    assert_eq!(grouped["messages"], 3000);

    let e2e = bench_json(
        &b,
        &[
            "e2e",
            "--topic",
            "be",
            "--create",
            "--partitions",
            "2",
            "--messages",
            "1000",
            "--size",
            "64",
            "--rate",
            "2000",
        ],
    );
    assert_eq!(e2e["messages"], 1000);
    assert!(e2e["p99_ms"].as_f64().unwrap() >= e2e["p50_ms"].as_f64().unwrap());

    let disk = bench_json(
        &b,
        &[
            "disk",
            "--messages",
            "1000",
            "--size",
            "1024",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
    );
    assert_eq!(disk["bytes"], 1_024_000);
    let tcp = bench_json(&b, &["tcp", "--messages", "1000", "--size", "1024"]);
    assert_eq!(tcp["bytes"], 1_024_000);

    // Whole batches of ~90 records: at least what was asked, every one stored
    // (the bench checks the high watermarks), the bytes those records hold.
    let append = bench_json(
        &b,
        &[
            "append",
            "--messages",
            "4000",
            "--size",
            "100",
            "--batch-size",
            "10000",
            "--producers",
            "2",
            "--partitions",
            "2",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
    );
    let appended = append["messages"].as_u64().unwrap();
    assert!((4000..4400).contains(&appended), "{append}");
    assert_eq!(append["bytes"].as_u64().unwrap(), appended * 100);
    assert_eq!(append["batch_size"], 10_000);
}

#[test]
fn the_consume_bench_fails_on_a_duplicate_or_a_foreign_record() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n1"));
    let b = node.bootstrap();
    bench_json(
        &b,
        &[
            "produce",
            "--topic",
            "dup",
            "--create",
            "--messages",
            "100",
            "--size",
            "64",
        ],
    );
    // Write one of the bench's records a second time, byte for byte, as a
    // retry storm without deduplication would.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use futures::StreamExt;
        let consumer = strata_client::Consumer::builder(b.as_str())
            .topics(["dup"])
            .start_from(strata_client::StartFrom::Earliest)
            .build()
            .await
            .unwrap();
        let first = consumer.stream().next().await.unwrap().unwrap();
        let producer = strata_client::Producer::builder(b.as_str())
            .build()
            .await
            .unwrap();
        let again = strata_client::ProducerRecord::new("dup", first.value.unwrap())
            .partition(first.partition);
        producer.send(again).await.unwrap();
    });
    let out = cli(
        &b,
        &["bench", "consume", "--topic", "dup", "--messages", "101"],
        None,
    );
    assert!(!out.status.success(), "a duplicate went unnoticed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("verification failed") && err.contains("duplicate"),
        "{err}"
    );
    // Asking for more than exists is an error, not a hang or a fast number.
    let out = cli(
        &b,
        &["bench", "consume", "--topic", "dup", "--messages", "5000"],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds 101 records"));
}
