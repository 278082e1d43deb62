//! `strata status`: nodes, leaders, health, per-partition high watermarks.

use clap::Args;
use serde_json::json;
use strata_client::Admin;

use super::topic::{leader_name, topic_json};
use super::{CliResult, ClientArgs, print_json};

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: StatusArgs) -> CliResult {
    let admin = Admin::connect(args.client.target()?).await?;
    let s = admin.cluster_status().await?;
    if args.json {
        return print_json(&json!({
            "node_id": s.node_id,
            "version": s.version,
            "ready": s.ready,
            "uptime_ms": s.uptime_ms,
            "nodes": s.nodes.iter().map(|n| json!({
                "node_id": n.node_id, "data_addr": n.data_addr, "control_addr": n.control_addr, "peer_addr": n.peer_addr,
            })).collect::<Vec<_>>(),
            "topics": s.topics.iter().map(topic_json).collect::<Vec<_>>(),
        }));
    }
    println!(
        "node {} (strata {}) {} up {:.1}s",
        s.node_id,
        s.version,
        if s.ready { "ready" } else { "NOT READY" },
        s.uptime_ms as f64 / 1000.0
    );
    println!("nodes:");
    for n in &s.nodes {
        println!(
            "  {}\tdata={}\tcontrol={}\tpeer={}",
            n.node_id, n.data_addr, n.control_addr, n.peer_addr
        );
    }
    println!("topic\tpartition\tleader\tstart\thigh_watermark\tend");
    for t in &s.topics {
        for p in &t.partitions {
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                t.name,
                p.partition,
                leader_name(p.leader),
                p.log_start_offset,
                p.high_watermark,
                p.log_end_offset
            );
        }
    }
    Ok(())
}
