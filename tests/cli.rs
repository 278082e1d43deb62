//! The CLI against a real broker process: topics, produce/consume round trips,
//! and what survives a SIGTERM restart and a kill -9.

mod common;

use std::collections::BTreeMap;

use common::{Node, cli, cli_ok};

fn lines(n: usize, tag: &str) -> String {
    (0..n).map(|i| format!("{tag}-{i}\n")).collect()
}

/// `<partition>\t<offset>` lines → pairs.
fn offsets(out: &str) -> Vec<(u32, u64)> {
    out.lines()
        .map(|l| {
            let (p, o) = l.split_once('\t').unwrap();
            (p.parse().unwrap(), o.parse().unwrap())
        })
        .collect()
}

/// `<partition>\t<offset>\t<value>` lines → partition → [(offset, value)].
fn consumed(out: &str) -> BTreeMap<u32, Vec<(u64, String)>> {
    let mut by_partition: BTreeMap<u32, Vec<(u64, String)>> = BTreeMap::new();
    for l in out.lines() {
        let mut parts = l.splitn(3, '\t');
        let p: u32 = parts.next().unwrap().parse().unwrap();
        let o: u64 = parts.next().unwrap().parse().unwrap();
        by_partition
            .entry(p)
            .or_default()
            .push((o, parts.next().unwrap().to_owned()));
    }
    by_partition
}

#[test]
fn produce_and_consume_round_trip_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n1"));
    let b = node.bootstrap();
    cli_ok(
        &b,
        &["topic", "create", "orders", "--partitions", "3"],
        None,
    );
    let list = cli_ok(&b, &["topic", "list"], None);
    assert!(list.contains("orders\t3"), "{list}");

    let produced = cli_ok(
        &b,
        &["produce", "orders", "--print-offsets"],
        Some(&lines(500, "order")),
    );
    let acked = offsets(&produced);
    assert_eq!(acked.len(), 500, "one offset line per input line");

    let out = cli_ok(
        &b,
        &[
            "consume",
            "orders",
            "--from-beginning",
            "--until-end",
            "--print-offsets",
        ],
        None,
    );
    let got = consumed(&out);
    assert_eq!(got.values().map(Vec::len).sum::<usize>(), 500);
    // Each acknowledged line is at the offset it was acknowledged at.
    for (i, (p, o)) in acked.iter().enumerate() {
        let at = got[p]
            .iter()
            .find(|(off, _)| off == o)
            .expect("acked record is consumed");
        assert_eq!(at.1, format!("order-{i}"));
    }
    // Offsets are dense per partition, starting at 0.
    for records in got.values() {
        assert!(records.iter().enumerate().all(|(i, (o, _))| *o == i as u64));
    }

    // Keyed records land on the same partition every time.
    let keyed = cli_ok(
        &b,
        &[
            "produce",
            "orders",
            "--key",
            "customer-7",
            "--print-offsets",
        ],
        Some(&lines(20, "k")),
    );
    let partitions: std::collections::BTreeSet<u32> =
        offsets(&keyed).iter().map(|(p, _)| *p).collect();
    assert_eq!(partitions.len(), 1);

    // --max-messages stops early; plain output is the values.
    let first = cli_ok(
        &b,
        &[
            "consume",
            "orders",
            "--from-beginning",
            "--max-messages",
            "3",
        ],
        None,
    );
    assert_eq!(first.lines().count(), 3);
    assert!(
        first
            .lines()
            .all(|l| l.starts_with("order-") || l.starts_with("k-"))
    );

    let describe = cli_ok(&b, &["topic", "describe", "orders", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(&describe).unwrap();
    let hw: u64 = v["partition_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["high_watermark"].as_u64().unwrap())
        .sum();
    assert_eq!(hw, 520);
}

#[test]
fn client_commands_fail_with_one_line_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n1"));
    let b = node.bootstrap();
    let out = cli(&b, &["produce", "missing"], Some("x\n"));
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("missing") && err.starts_with("error:"),
        "{err}"
    );

    let out = cli(
        &b,
        &["topic", "create", "bad/name", "--partitions", "1"],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'/'"));

    cli_ok(&b, &["topic", "create", "dup", "--partitions", "1"], None);
    let out = cli(&b, &["topic", "create", "dup", "--partitions", "1"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    let out = cli("127.0.0.1:1", &["topic", "list"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
}

#[test]
fn serve_refuses_node_id_zero_which_means_no_leader() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::STRATA)
        .args(["serve", "--node-id", "0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--node-id must be at least 1"), "{stderr}");
}

#[test]
fn topics_and_data_survive_a_sigterm_restart_without_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&dir.path().join("n1"));
    let b = node.bootstrap();
    cli_ok(
        &b,
        &[
            "topic",
            "create",
            "t",
            "--partitions",
            "2",
            "--retention-ms",
            "86400000",
        ],
        None,
    );
    let acked = offsets(&cli_ok(
        &b,
        &["produce", "t", "--print-offsets"],
        Some(&lines(300, "v")),
    ));
    assert_eq!(acked.len(), 300);

    let status = node.sigterm();
    assert!(status.success(), "SIGTERM exit: {status:?}\n{}", node.log());
    for p in 0..2 {
        let marker = node
            .dir
            .join("topics")
            .join("t")
            .join(p.to_string())
            .join("clean-shutdown");
        assert!(marker.exists(), "partition {p} was not closed cleanly");
    }

    node.restart();
    let b = node.bootstrap();
    assert!(
        node.log().contains("clean=true"),
        "restart after SIGTERM should not recover"
    );
    let describe: serde_json::Value =
        serde_json::from_str(&cli_ok(&b, &["topic", "describe", "t", "--json"], None)).unwrap();
    assert_eq!(describe["retention_ms"], 86_400_000);
    let got = consumed(&cli_ok(
        &b,
        &[
            "consume",
            "t",
            "--from-beginning",
            "--until-end",
            "--print-offsets",
        ],
        None,
    ));
    assert_eq!(got.values().map(Vec::len).sum::<usize>(), 300);
    for (i, (p, o)) in acked.iter().enumerate() {
        assert!(got[p].contains(&(*o, format!("v-{i}"))));
    }
    // Still writable where it stopped.
    let more = offsets(&cli_ok(
        &b,
        &["produce", "t", "--partition", "0", "--print-offsets"],
        Some("after\n"),
    ));
    assert_eq!(more[0].1, got.get(&0).map_or(0, Vec::len) as u64);
}

#[test]
fn every_acknowledged_record_survives_kill_9_in_order_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&dir.path().join("n1"));
    let b = node.bootstrap();
    cli_ok(&b, &["topic", "create", "k9", "--partitions", "1"], None);
    let mut acked = Vec::new();
    for round in 0..3 {
        let input = lines(200, &format!("r{round}"));
        let out = offsets(&cli_ok(
            &b,
            &["produce", "k9", "--print-offsets"],
            Some(&input),
        ));
        acked.extend(
            out.into_iter()
                .enumerate()
                .map(|(i, (_, o))| (o, format!("r{round}-{i}"))),
        );
        node.kill9();
        node.restart();
    }
    let got = consumed(&cli_ok(
        &b,
        &[
            "consume",
            "k9",
            "--from-beginning",
            "--until-end",
            "--print-offsets",
        ],
        None,
    ));
    assert_eq!(
        got[&0], acked,
        "exactly the acknowledged records, in offset order"
    );
}
