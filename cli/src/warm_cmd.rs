//! `cv warm` (alias `cv load`): load jobs with a live progress bar;
//! `cv free`, `cv pin`, `cv unpin`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use curvine_client::{FileSystem, JobInfo};
use curvine_common::size::human;
use indicatif::{ProgressBar, ProgressStyle};

use crate::ClientArgs;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WarmArgs {
    #[command(subcommand)]
    sub: Option<WarmSub>,
    /// Path to cache (a file or a directory tree, usually under a mount)
    path: Option<String>,
    /// Start the job and return at once
    #[arg(long)]
    detach: bool,
    /// Block loads in flight (default: 8 per live worker); lower it to spare the UFS
    #[arg(long, default_value_t = 0)]
    parallel: u32,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum WarmSub {
    /// Show one job, or every job
    Status {
        job: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Stop a running job (what it loaded stays cached)
    Cancel { job: u64 },
}

fn json(j: &JobInfo) -> serde_json::Value {
    serde_json::json!({
        "id": j.id, "path": j.path, "state": j.state, "scanning": j.scanning,
        "files_total": j.files_total, "files_done": j.files_done,
        "bytes_total": j.bytes_total, "bytes_done": j.bytes_done, "bytes_loaded": j.bytes_loaded,
        "blocks_failed": j.blocks_failed, "error": j.error, "attempt": j.attempt,
        "created_ms": j.created_ms, "finished_ms": j.finished_ms,
    })
}

fn line(j: &JobInfo) -> String {
    let took = if j.finished_ms > 0 { (j.finished_ms - j.created_ms).max(1) } else { 0 };
    let rate = if took > 0 { format!(", {}/s", human((j.bytes_loaded as f64 * 1000.0 / took as f64) as u64)) } else { String::new() };
    let err = if j.error.is_empty() { String::new() } else { format!(" — {}", j.error) };
    format!(
        "job {} {} {}: {}/{} files, {} of {} cached ({} loaded{rate}), {} blocks failed{err}",
        j.id,
        j.state,
        j.path,
        j.files_done,
        j.files_total,
        human(j.bytes_done),
        human(j.bytes_total),
        human(j.bytes_loaded),
        j.blocks_failed
    )
}

pub async fn run(a: WarmArgs, c: &ClientArgs) -> Result<()> {
    let fs = c.fs()?;
    match a.sub {
        Some(WarmSub::Status { job, json: js }) => {
            let jobs = fs.jobs(job.unwrap_or(0)).await?;
            if js {
                println!("{}", serde_json::Value::Array(jobs.iter().map(json).collect()));
            } else if jobs.is_empty() {
                println!("no jobs");
            }
            if !js {
                for j in &jobs {
                    println!("{}", line(j));
                }
            }
            return Ok(());
        }
        Some(WarmSub::Cancel { job }) => {
            let j = fs.cancel_job(job).await?;
            println!("{}", line(&j));
            return Ok(());
        }
        None => {}
    }
    let Some(path) = a.path else { bail!("usage: cv warm PATH [--detach] (or cv warm status [JOB], cv warm cancel JOB)") };
    let job = fs.warm(&path, a.parallel).await?;
    if a.detach {
        if a.json {
            println!("{}", json(&job));
        } else {
            println!("job {} started for {} (follow with `cv warm status {}`)", job.id, job.path, job.id);
        }
        return Ok(());
    }
    let end = follow(&fs, job.id).await?;
    if a.json {
        println!("{}", json(&end));
    } else {
        println!("{}", line(&end));
    }
    match end.state.as_str() {
        "done" => Ok(()),
        s => bail!("job {} {s}: {}", end.id, if end.error.is_empty() { "see `cv warm status`" } else { &end.error }),
    }
}

/// Polls the job, drawing files, bytes, MiB/s and ETA, until it ends.
async fn follow(fs: &FileSystem, id: u64) -> Result<JobInfo> {
    let tty = std::io::stderr().is_terminal();
    let bar = if tty { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} job {prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar.set_prefix(id.to_string());
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let j = fs.jobs(id).await?.pop().ok_or_else(|| anyhow::anyhow!("job {id} vanished"))?;
        bar.set_length(j.bytes_total);
        bar.set_position(j.bytes_done);
        let phase = if j.scanning { " (counting)" } else { "" };
        bar.set_message(format!("{}/{} files{phase}", j.files_done, j.files_total));
        if !tty && last_print.elapsed() >= Duration::from_secs(5) {
            // Logs (CI, pipes) get a line every few seconds instead of a bar.
            let secs = started.elapsed().as_secs_f64().max(0.001);
            eprintln!("{} ({}/s)", line(&j), human((j.bytes_loaded as f64 / secs) as u64));
            last_print = Instant::now();
        }
        if j.state != "running" {
            bar.finish_and_clear();
            return Ok(j);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn free(path: &str, c: &ClientArgs) -> Result<()> {
    let r = c.fs()?.free(path).await?;
    println!(
        "freed {} in {} blocks of {} files under {path}; kept {} files only in the cache and {} pinned",
        human(r.bytes),
        r.blocks,
        r.files,
        r.skipped_local,
        r.skipped_pinned
    );
    Ok(())
}

pub async fn pin(path: &str, pinned: bool, c: &ClientArgs) -> Result<()> {
    let st = c.fs()?.pin(path, pinned).await?;
    println!("{} {}", if pinned { "pinned" } else { "unpinned" }, st.path);
    Ok(())
}
