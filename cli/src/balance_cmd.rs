//! `cairn admin balance`: start the namenode's balancer and follow it until every datanode's
//! used share is within the threshold of the cluster's average, like `hdfs balancer`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use cairn_client::Client;
use cairn_common::proto::{Balance, BalanceAction, BalanceStatus, BalancerState};

use crate::admin_cmd::size;

/// How often progress is asked for, and printed.
const POLL: Duration = Duration::from_secs(1);
const PRINT_EVERY: Duration = Duration::from_secs(5);

/// What the operator asked of the balancer.
pub enum Request {
    /// Start, and follow it to the end unless `wait` is false.
    Start {
        threshold_pct: f64,
        wait: bool,
    },
    Stop,
    Status,
}

pub async fn run(client: &Client, request: Request, json: bool) -> anyhow::Result<ExitCode> {
    let (action, wait) = match request {
        Request::Start {
            threshold_pct,
            wait,
        } => (BalanceAction::Start { threshold_pct }, wait),
        Request::Stop => (BalanceAction::Stop, false),
        Request::Status => (BalanceAction::Get, false),
    };
    let mut status = ask(client, action).await?;
    if !wait {
        show(&status, json)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        println!(
            "Balancing to within {}% of the average ({:.1}% used); {} to move. \
             Interrupting this leaves the balancer running: `cairn admin balance --stop` ends it.",
            status.threshold_pct,
            status.average_pct,
            size(status.bytes_to_move)
        );
    }
    let mut printed = Instant::now();
    loop {
        match status.state {
            BalancerState::Running => {}
            BalancerState::Balanced => {
                show(&status, json)?;
                return Ok(ExitCode::SUCCESS);
            }
            BalancerState::Stopped => {
                show(&status, json)?;
                eprintln!("cairn: the balancer was stopped before the cluster was balanced");
                return Ok(ExitCode::FAILURE);
            }
            BalancerState::Idle => {
                return Err(anyhow!(
                    "the balancer is not running any more (did the namenode restart?)"
                ))
            }
        }
        if !json && printed.elapsed() >= PRINT_EVERY {
            println!("{}", progress_line(&status));
            printed = Instant::now();
        }
        tokio::time::sleep(POLL).await;
        status = ask(client, BalanceAction::Get).await?;
    }
}

async fn ask(client: &Client, action: BalanceAction) -> anyhow::Result<BalanceStatus> {
    client
        .namenode(Balance { action })
        .await
        .map_err(|e| anyhow!("balancer: {e}"))
}

fn progress_line(s: &BalanceStatus) -> String {
    let (low, high) = spread(s);
    format!(
        "{:>6.0} s  moved {} ({} replicas), {} under way, {} to go; datanodes {:.1}%..{:.1}% used, average {:.1}%",
        s.elapsed_secs,
        size(s.bytes_moved),
        s.moves_done,
        s.moves_in_flight,
        size(s.bytes_to_move),
        low,
        high,
        s.average_pct
    )
}

/// The least and most used shares.
fn spread(s: &BalanceStatus) -> (f64, f64) {
    s.nodes.iter().fold((f64::NAN, f64::NAN), |(lo, hi), n| {
        (lo.min(n.used_pct), hi.max(n.used_pct))
    })
}

fn show(s: &BalanceStatus, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    let state = match s.state {
        BalancerState::Idle => "idle (not started since the namenode started)",
        BalancerState::Running => "running",
        BalancerState::Balanced => "balanced",
        BalancerState::Stopped => "stopped",
    };
    println!(
        "Balancer: {state}; threshold {}%, cluster average {:.1}% used",
        s.threshold_pct, s.average_pct
    );
    println!(
        "Moved {} ({} replicas) in {:.0} s; {} under way; {} still to move",
        size(s.bytes_moved),
        s.moves_done,
        s.elapsed_secs,
        s.moves_in_flight,
        size(s.bytes_to_move)
    );
    println!(
        "{:<16} {:>12} {:>12} {:>7} {:>8}",
        "DATANODE", "USED", "CAPACITY", "USED%", "VS AVG"
    );
    for n in &s.nodes {
        println!(
            "{:<16} {:>12} {:>12} {:>6.1}% {:>+7.1}",
            n.name,
            size(n.used),
            size(n.capacity),
            n.used_pct,
            n.used_pct - s.average_pct
        );
    }
    Ok(())
}
