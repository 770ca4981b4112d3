//! `cv bench meta`: metadata operations per second through the client —
//! create (an empty file: one call, closed with nothing written), stat,
//! list (of the task's whole directory), rename, delete —
//! with N concurrent client tasks, each in its own directory. Printed beside
//! two same-run baselines: fsyncs per second of one thread on the local disk
//! (what bounds one writer on a synced Raft log) and `stat /` round trips
//! (the RPC path with no namespace work).

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use curvine_client::{CreateOptions, FileSystem};
use futures::future::try_join_all;

use crate::ClientArgs;

#[derive(Args, Debug, Clone)]
pub struct MetaBenchArgs {
    /// Concurrent client tasks
    #[arg(long, short = 't', default_value_t = 16)]
    threads: usize,
    /// Files in all (split over the tasks)
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Directory for the benchmark tree (removed at the end)
    #[arg(long, default_value = "/.bench-meta")]
    dir: String,
    /// Phases to run, in order
    #[arg(long, value_delimiter = ',', default_value = "create,stat,list,rename,delete")]
    ops: Vec<String>,
    /// Keep the files (skip the final removal); `delete` is then skipped too
    #[arg(long)]
    keep: bool,
    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

/// fsyncs per second of one thread writing 4 KiB and fdatasync-ing, in the
/// system temp directory, for about half a second.
fn fsync_baseline() -> Result<f64> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let dir = std::env::temp_dir();
    let path = dir.join(format!("cv-bench-fsync-{}", std::process::id()));
    let mut f = std::fs::File::create(&path)?;
    f.write_all(&[0u8; 4096])?;
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < 0.5 {
        f.write_all_at(&[n as u8; 4096], 0)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}

fn names(a: &MetaBenchArgs, t: usize, suffix: &str) -> Vec<String> {
    let per = a.files.div_ceil(a.threads.max(1));
    let (from, to) = (t * per, ((t + 1) * per).min(a.files));
    (from..to).map(|i| format!("{}/t{t}/f{i}{suffix}", a.dir)).collect()
}

/// Runs one phase; `renamed` says whether the files carry their renamed names.
async fn phase(fs: &FileSystem, a: &MetaBenchArgs, op: &str, renamed: bool) -> Result<(usize, f64)> {
    let start = Instant::now();
    let tasks = (0..a.threads).map(|t| {
        let fs = fs.clone();
        let (files, renamed) = if renamed { (names(a, t, ".r"), vec![]) } else { (names(a, t, ""), names(a, t, ".r")) };
        let (op, dir) = (op.to_string(), format!("{}/t{t}", a.dir));
        async move {
            let mut n = 0usize;
            match op.as_str() {
                "create" => {
                    for p in &files {
                        fs.create(p, CreateOptions { overwrite: false, ..Default::default() }).await?.close().await?;
                        n += 1;
                    }
                }
                "stat" => {
                    for p in &files {
                        fs.stat(p).await?;
                        n += 1;
                    }
                }
                "list" => {
                    // As many listings as the task has files, of its directory.
                    for _ in 0..files.len().div_ceil(100).max(1) {
                        n += usize::from(!fs.list(&dir).await?.is_empty());
                    }
                }
                "rename" if renamed.is_empty() => anyhow::bail!("rename: the files were renamed already"),
                "rename" => {
                    for (s, d) in files.iter().zip(&renamed) {
                        fs.rename(s, d).await?;
                        n += 1;
                    }
                }
                "delete" => {
                    for p in &files {
                        fs.delete(p, false).await?;
                        n += 1;
                    }
                }
                other => anyhow::bail!("unknown phase {other} (create, stat, list, rename, delete)"),
            }
            Ok::<usize, anyhow::Error>(n)
        }
    });
    let n: usize = try_join_all(tasks).await?.into_iter().sum();
    Ok((n, start.elapsed().as_secs_f64()))
}

pub async fn run(a: MetaBenchArgs, c: &ClientArgs) -> Result<()> {
    let fs = c.fs()?;
    let _ = fs.delete(&a.dir, true).await;
    for t in 0..a.threads {
        fs.mkdir(&format!("{}/t{t}", a.dir), true).await?;
    }
    let fsync = fsync_baseline()?;
    let t = Instant::now();
    let mut rtt = 0usize;
    while t.elapsed().as_secs_f64() < 0.5 {
        fs.stat("/").await?;
        rtt += 1;
    }
    let rtt_rate = rtt as f64 / t.elapsed().as_secs_f64();
    let mut results = Vec::new();
    let mut renamed = false;
    for op in &a.ops {
        if op == "delete" && a.keep {
            continue;
        }
        let (n, secs) = phase(&fs, &a, op, renamed).await?;
        renamed |= op == "rename";
        results.push((op.clone(), n, secs, n as f64 / secs.max(1e-9)));
    }
    if !a.keep {
        fs.delete(&a.dir, true).await?;
    }
    if a.json {
        let phases: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|(op, n, secs, rate)| (op.clone(), serde_json::json!({"ops": n, "secs": secs, "ops_per_s": rate})))
            .collect();
        let out = serde_json::json!({
            "threads": a.threads, "files": a.files, "phases": phases,
            "baseline": {"fsync_per_s": fsync, "stat_root_per_s_one_task": rtt_rate},
        });
        println!("{out}");
    } else {
        println!("cv bench meta: {} files, {} tasks", a.files, a.threads);
        for (op, n, secs, rate) in &results {
            println!("  {op:<7} {n:>9} ops in {secs:>7.2} s = {rate:>10.0} ops/s");
        }
        println!("baselines (same run): one-thread fsync {fsync:.0}/s; stat / from one task {rtt_rate:.0}/s");
    }
    Ok(())
}
