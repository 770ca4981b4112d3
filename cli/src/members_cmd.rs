//! `cv meta members list|add|remove|transfer` and `cv meta status`: the
//! meta group's membership, and one member's own view.

use anyhow::Result;
use clap::{Args, Subcommand};
use curvine_common::proto::meta_service_client::MetaServiceClient;
use curvine_common::proto::{MembersRequest, MembersResponse, NodeStatusRequest};

#[derive(Subcommand, Debug)]
pub enum MetaCmd {
    /// The meta group's members; add, remove, or move the leadership
    Members {
        #[command(subcommand)]
        op: MembersOp,
        #[command(flatten)]
        at: MetaAt,
    },
    /// One member's own state: role, leader, term, applied index, state digest
    Status {
        #[command(flatten)]
        at: MetaAt,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct MetaAt {
    /// Meta member address(es), comma-separated (changes go to the leader)
    #[arg(long, env = "CURVINE_META", default_value = curvine_common::config::DEFAULT_META_ADDR, value_delimiter = ',', global = true)]
    meta: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum MembersOp {
    /// List members, which one leads, and how far each has the log
    List,
    /// Add a member started with `cv meta --id ID --join`
    Add { id: u64, addr: String },
    /// Remove a member
    Remove { id: u64 },
    /// Make member ID the leader
    Transfer { id: u64 },
}

fn print_members(r: &MembersResponse) {
    println!("term {}, last log index {}", r.term, r.last_log_index);
    for m in &r.members {
        let role = if m.leader {
            "leader"
        } else if m.voter {
            "voter"
        } else {
            "learner"
        };
        let matched = m.matched_index.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
        println!("{:>4}  {:<24} {:<8} log {}", m.id, m.addr, role, matched);
    }
}

pub async fn run(cmd: MetaCmd) -> Result<()> {
    match cmd {
        MetaCmd::Members { op, at } => {
            let (op, id, addr) = match op {
                MembersOp::List => (0, 0, String::new()),
                MembersOp::Add { id, addr } => (1, id, addr),
                MembersOp::Remove { id } => (2, id, String::new()),
                MembersOp::Transfer { id } => (3, id, String::new()),
            };
            let conf = curvine_common::config::ClientConf { meta: at.meta, ..Default::default() };
            let mc = curvine_client::MetaClient::with_options(conf.meta, conf.retries, conf.timeout, conf.failover, false)?;
            let req = MembersRequest { op, id, addr };
            let r = mc.call(|mut c| {
                let req = req.clone();
                async move { c.members(req).await }
            });
            print_members(&r.await?);
        }
        MetaCmd::Status { at, json } => {
            // This member itself, not the leader: no failover.
            let addr = at.meta.first().cloned().unwrap_or_default();
            // Bounded: a hung member accepts the connection and never answers.
            let ask = async {
                let mut c = MetaServiceClient::connect(format!("http://{addr}"))
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot reach meta member {addr}: {e}"))?;
                Ok::<_, anyhow::Error>(c.node_status(NodeStatusRequest {}).await.map_err(curvine_common::Error::from)?.into_inner())
            };
            let s = tokio::time::timeout(std::time::Duration::from_secs(5), ask)
                .await
                .map_err(|_| anyhow::anyhow!("meta member {addr} did not answer within 5s"))??;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": s.id, "state": s.state, "leader_id": s.leader_id, "leader_addr": s.leader_addr,
                        "term": s.term, "last_applied": s.last_applied, "digest": format!("{:016x}", s.digest),
                        "files": s.files, "dirs": s.dirs, "snapshot_index": s.snapshot_index, "log_first_index": s.log_first_index,
                        "contact_ms": s.contact_ms})
                );
            } else {
                println!("member {} ({}): {}, leader {} {}", s.id, addr, s.state, s.leader_id, s.leader_addr);
                println!("term {}, applied {}, digest {:016x}, {} files, {} dirs", s.term, s.last_applied, s.digest, s.files, s.dirs);
                println!("snapshot at {}, log kept from {}", s.snapshot_index, s.log_first_index);
                let whom = if s.state == "Leader" { "a majority of the group" } else { "a leader" };
                match s.contact_ms {
                    ms if ms < 0 => println!("has not heard from {whom}"),
                    ms => println!("heard from {whom} {ms} ms ago{}", if ms as u128 > curvine_meta::contact::CUT_OFF.as_millis() { " (cut off from the other members?)" } else { "" }),
                }
            }
        }
    }
    Ok(())
}
