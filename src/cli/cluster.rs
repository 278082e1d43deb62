//! `strata cluster`: change which nodes form the cluster.

use clap::{Args, Subcommand};
use strata_client::Admin;

use super::{CliResult, ClientArgs};

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Add a node started with `strata serve --join`; returns once it votes.
    AddNode {
        /// The new node's id (its `--node-id`).
        #[arg(long)]
        id: u32,
        /// Where the other nodes reach it on the peer port.
        #[arg(long)]
        peer_addr: String,
        /// Then move replicas onto it until the nodes hold about as many each.
        #[arg(long)]
        rebalance: bool,
    },
    /// Move every replica off a node, then remove it; stop it afterwards.
    RemoveNode {
        #[arg(long)]
        id: u32,
    },
}

pub async fn run(args: ClusterArgs) -> CliResult {
    let admin = Admin::connect(args.client.target()?).await?;
    let members = match args.command {
        ClusterCommand::AddNode {
            id,
            peer_addr,
            rebalance,
        } => admin.add_node(id, &peer_addr, rebalance).await?,
        ClusterCommand::RemoveNode { id } => admin.remove_node(id).await?,
    };
    let members: Vec<String> = members.iter().map(u32::to_string).collect();
    println!("members: {}", members.join(","));
    Ok(())
}
