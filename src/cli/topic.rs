//! `strata topic create|list|describe|delete`.

use clap::{Args, Subcommand};
use serde_json::json;
use strata_client::admin::TopicInfo;
use strata_client::{Admin, NewTopic};

use super::{CliResult, ClientArgs, print_json};

#[derive(Args, Debug)]
pub struct TopicArgs {
    #[command(subcommand)]
    command: TopicCommand,
    #[command(flatten)]
    client: ClientArgs,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long)]
        partitions: u32,
        /// Copies of each partition [default: 3, or the number of nodes if
        /// fewer; 1 on a single node].
        #[arg(long, default_value_t = 0)]
        replication_factor: u32,
        /// Delete old segments while the partition is larger than this.
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Delete segments whose newest record is older than this.
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Roll segments at this size.
        #[arg(long)]
        segment_bytes: Option<u64>,
    },
    /// List topics.
    List,
    /// Show a topic's settings and partitions.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
}

pub fn topic_json(t: &TopicInfo) -> serde_json::Value {
    let c = t.config.unwrap_or_default();
    json!({
        "name": t.name,
        "partitions": c.partitions,
        "replication_factor": c.replication_factor,
        "retention_bytes": (c.retention_bytes > 0).then_some(c.retention_bytes),
        "retention_ms": (c.retention_ms > 0).then_some(c.retention_ms),
        "segment_bytes": c.segment_bytes,
        "partition_info": t.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "leader": p.leader,
            "replicas": p.replicas,
            "log_start_offset": p.log_start_offset,
            "high_watermark": p.high_watermark,
            "log_end_offset": p.log_end_offset,
            "size_bytes": p.size_bytes,
            "segments": p.segments,
        })).collect::<Vec<_>>(),
    })
}

fn print_topic(t: &TopicInfo) {
    let c = t.config.unwrap_or_default();
    let limit = |v: u64| {
        if v == 0 {
            "unlimited".to_owned()
        } else {
            v.to_string()
        }
    };
    println!(
        "{}\tpartitions={} replication={} retention_bytes={} retention_ms={} segment_bytes={}",
        t.name,
        c.partitions,
        c.replication_factor,
        limit(c.retention_bytes),
        limit(c.retention_ms),
        c.segment_bytes
    );
    println!("  partition\tleader\treplicas\tstart\thigh_watermark\tend\tsegments");
    for p in &t.partitions {
        println!(
            "  {}\t{}\t{}\t{}\t{}\t{}\t{}",
            p.partition,
            leader_name(p.leader),
            replica_list(&p.replicas),
            p.log_start_offset,
            p.high_watermark,
            p.log_end_offset,
            p.segments
        );
    }
}

/// A partition's leader for people: its node id, or `-` during an election.
pub fn leader_name(leader: u32) -> String {
    match leader {
        0 => "-".to_owned(),
        id => id.to_string(),
    }
}

/// Node ids of a partition's replicas, comma-separated.
fn replica_list(replicas: &[u32]) -> String {
    let ids: Vec<String> = replicas.iter().map(u32::to_string).collect();
    ids.join(",")
}

pub async fn run(args: TopicArgs) -> CliResult {
    let admin = Admin::connect(args.client.target()?).await?;
    match args.command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            retention_bytes,
            retention_ms,
            segment_bytes,
        } => {
            let mut spec = NewTopic::new(partitions).replication_factor(replication_factor);
            spec.retention_bytes = retention_bytes;
            spec.retention_ms = retention_ms;
            spec.segment_bytes = segment_bytes;
            let t = admin.create_topic(&name, spec).await?;
            if args.json {
                print_json(&topic_json(&t))?;
            } else {
                println!(
                    "created topic {} with {} partitions",
                    t.name,
                    t.partitions.len()
                );
            }
        }
        TopicCommand::List => {
            let topics = admin.list_topics().await?;
            if args.json {
                print_json(&json!(topics.iter().map(topic_json).collect::<Vec<_>>()))?;
            } else {
                for t in topics {
                    println!("{}\t{}", t.name, t.partitions.len());
                }
            }
        }
        TopicCommand::Describe { name } => {
            let t = admin.describe_topic(&name).await?;
            if args.json {
                print_json(&topic_json(&t))?;
            } else {
                print_topic(&t);
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            if !args.json {
                println!("deleted topic {name}");
            }
        }
    }
    Ok(())
}
