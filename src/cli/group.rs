//! `strata group list | describe G`: members, assignment, committed offsets,
//! and lag in messages and seconds.

use clap::{Args, Subcommand};
use serde_json::json;
use strata_client::Admin;
use strata_client::admin::GroupInfo;

use super::{CliResult, ClientArgs, print_json};

#[derive(Args, Debug)]
pub struct GroupArgs {
    #[command(subcommand)]
    command: GroupCommand,
    #[command(flatten)]
    client: ClientArgs,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// Every group with its total lag and status.
    List,
    /// One group's members, partitions, committed offsets and lag.
    Describe { group: String },
}

fn group_json(g: &GroupInfo) -> serde_json::Value {
    json!({
        "group": g.group,
        "generation": g.generation,
        "assignor": g.assignor,
        "status": g.status,
        "members": g.members.iter().map(|m| json!({
            "member_id": m.member_id,
            "client_id": m.client_id,
            "assigned": m.assigned.iter().map(|tp| format!("{}/{}", tp.topic, tp.partition)).collect::<Vec<_>>(),
            "last_heartbeat_ms_ago": m.last_heartbeat_ms_ago,
        })).collect::<Vec<_>>(),
        "partitions": g.partitions.iter().map(|p| json!({
            "topic": p.topic,
            "partition": p.partition,
            "committed_offset": p.committed_offset,
            "high_watermark": p.high_watermark,
            "lag_messages": p.lag_messages,
            "lag_seconds": p.lag_seconds,
            "status": p.status,
            "owner": p.owner,
        })).collect::<Vec<_>>(),
    })
}

pub async fn run(args: GroupArgs) -> CliResult {
    let admin = Admin::connect(args.client.target()?).await?;
    match args.command {
        GroupCommand::List => {
            let groups = admin.list_groups().await?;
            if args.json {
                let v: Vec<_> = groups
                    .iter()
                    .map(|g| json!({"group": g.group, "members": g.members, "total_lag": g.total_lag, "status": g.status}))
                    .collect();
                print_json(&json!(v))?;
            } else {
                println!("group\tmembers\ttotal_lag\tstatus");
                for g in groups {
                    println!("{}\t{}\t{}\t{}", g.group, g.members, g.total_lag, g.status);
                }
            }
        }
        GroupCommand::Describe { group } => {
            let g = admin.describe_group(&group).await?;
            if args.json {
                return print_json(&group_json(&g));
            }
            println!(
                "group {} generation {} assignor {} status {}",
                g.group, g.generation, g.assignor, g.status
            );
            println!("members:");
            for m in &g.members {
                let assigned: Vec<String> = m
                    .assigned
                    .iter()
                    .map(|tp| format!("{}/{}", tp.topic, tp.partition))
                    .collect();
                println!(
                    "  {} ({})\t{}\t{} ms ago",
                    m.member_id,
                    m.client_id,
                    assigned.join(","),
                    m.last_heartbeat_ms_ago
                );
            }
            println!(
                "topic\tpartition\tcommitted\thigh_watermark\tlag\tlag_seconds\tstatus\towner"
            );
            for p in &g.partitions {
                let committed = p.committed_offset.map_or("-".to_owned(), |o| o.to_string());
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{:.3}\t{}\t{}",
                    p.topic,
                    p.partition,
                    committed,
                    p.high_watermark,
                    p.lag_messages,
                    p.lag_seconds,
                    p.status,
                    p.owner
                );
            }
        }
    }
    Ok(())
}
