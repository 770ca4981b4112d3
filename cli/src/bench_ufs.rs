//! `cv bench ufs`: reading objects straight from the UFS (the baseline,
//! through the same opendal client the workers use) against reading them
//! through Curvine cold (each block loaded on first read), hot (cached),
//! and `cv warm` — all in one run, against one server.
//!
//! Every cold pass mounts the URI at a fresh path, so its blocks are new and
//! nothing is cached; the mounts are removed at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use curvine_client::{FileSystem, MountOptions};
use curvine_common::size::human;
use curvine_ufs::Ufs;
use futures::{StreamExt, TryStreamExt};

use crate::ClientArgs;

#[derive(Args, Debug, Clone)]
pub struct UfsBenchArgs {
    /// UFS prefix holding the objects, e.g. s3://bucket/dataset
    uri: String,
    /// UFS option KEY=VALUE (as for `cv mount`); repeatable
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
    options: Vec<String>,
    /// Concurrent object reads
    #[arg(long, short = 't', default_value_t = 8)]
    threads: usize,
    /// At most this many objects (in listing order)
    #[arg(long, default_value_t = 100_000)]
    limit: usize,
    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

struct Pass {
    secs: f64,
    bytes: u64,
    objects: u64,
}

impl Pass {
    fn mibs(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.secs
    }
    fn ops(&self) -> f64 {
        self.objects as f64 / self.secs
    }
}

async fn timed<F, Fut>(names: &[String], threads: usize, read: F) -> Result<Pass>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let t = Instant::now();
    let bytes: Vec<u64> = futures::stream::iter(names.iter().cloned()).map(read).buffer_unordered(threads).try_collect().await?;
    Ok(Pass { secs: t.elapsed().as_secs_f64(), bytes: bytes.iter().sum(), objects: names.len() as u64 })
}

pub async fn run(a: UfsBenchArgs, c: &ClientArgs) -> Result<()> {
    let mut options = BTreeMap::new();
    for o in &a.options {
        let Some((k, v)) = o.split_once('=') else { bail!("--option '{o}': expected KEY=VALUE") };
        options.insert(k.to_string(), v.to_string());
    }
    let ufs = Ufs::new(&a.uri, &options)?;
    // The objects: a flat listing of the prefix (files only), with sizes.
    let mut names = Vec::new();
    let mut lister = ufs.list("").await?;
    loop {
        let page = lister.next_page(1000).await?;
        if page.is_empty() || names.len() >= a.limit {
            break;
        }
        names.extend(page.into_iter().filter(|e| !e.is_dir).map(|e| format!("{}\t{}", e.name, e.len)));
    }
    names.truncate(a.limit);
    if names.is_empty() {
        bail!("{}: no objects to read", a.uri);
    }
    let fs = c.fs()?;
    let stamp = curvine_common::now_ms();
    let (cold_at, warm_at) = (format!("/.bench-ufs-cold-{stamp}"), format!("/.bench-ufs-warm-{stamp}"));
    let mopts = MountOptions { options: options.clone(), sync_interval_ms: Some(-1), ..Default::default() };
    fs.mount(&a.uri, &cold_at, mopts.clone()).await?;
    let res = passes(&a, &ufs, &fs, &names, &cold_at, &warm_at, mopts).await;
    for p in [&cold_at, &warm_at] {
        let _ = fs.umount(p, true).await;
    }
    let (direct, cold, hot, warm) = res?;
    if a.json {
        let j = |p: &Pass| serde_json::json!({"secs": p.secs, "bytes": p.bytes, "objects": p.objects, "mib_s": p.mibs(), "objects_s": p.ops()});
        println!(
            "{}",
            serde_json::json!({
                "uri": a.uri, "threads": a.threads, "direct": j(&direct), "cold": j(&cold), "hot": j(&hot), "warm": j(&warm),
                "cold_vs_direct": direct.secs / cold.secs, "hot_vs_direct": direct.secs / hot.secs, "warm_vs_direct": direct.secs / warm.secs,
            })
        );
        return Ok(());
    }
    println!("{} objects, {} under {} ({} readers)", names.len(), human(direct.bytes), a.uri, a.threads);
    let line = |n: &str, p: &Pass| {
        println!(
            "  {n:<22} {:>9.1} MiB/s {:>10.0} objects/s  ({:.2}x direct)",
            p.mibs(),
            p.ops(),
            direct.secs / p.secs
        )
    };
    line("direct UFS read", &direct);
    line("curvine cold (miss)", &cold);
    line("curvine hot (cached)", &hot);
    line("cv warm (load job)", &warm);
    Ok(())
}

/// "name\tlen" as listed.
fn split(n: &str) -> (&str, u64) {
    let (name, len) = n.rsplit_once('\t').unwrap_or((n, "0"));
    (name, len.parse().unwrap_or(0))
}

async fn passes(
    a: &UfsBenchArgs,
    ufs: &Ufs,
    fs: &FileSystem,
    names: &[String],
    cold_at: &str,
    warm_at: &str,
    mopts: MountOptions,
) -> Result<(Pass, Pass, Pass, Pass)> {
    // Both sides fill a reused buffer per reader, so neither pays for
    // first-touch page faults of fresh allocations.
    let pool = parking_lot::Mutex::new(Vec::<Vec<u8>>::new());
    let pool = &pool;
    let take = move |len: usize| {
        let mut b = pool.lock().pop().unwrap_or_default();
        if b.len() < len {
            b.resize(len, 0);
        }
        b
    };
    let direct = timed(names, a.threads, |n| async move {
        let (name, len) = split(&n);
        let mut buf = take(len as usize);
        let mut r = ufs.read(name, 0, len, None).await?;
        let mut got = 0usize;
        while let Some(b) = r.next().await? {
            buf[got..got + b.len()].copy_from_slice(&b);
            got += b.len();
        }
        pool.lock().push(buf);
        Ok(got as u64)
    })
    .await?;
    // List once so the namespace is loaded; the timed passes are reads.
    fs.list(cold_at).await?;
    let read = |dir: &str| {
        let dir = dir.to_string();
        move |n: String| {
            let p = format!("{dir}/{}", split(&n).0);
            async move {
                let r = fs.open(&p).await?;
                let mut buf = take(r.len() as usize);
                let got = r.read_at(0, &mut buf[..r.len() as usize]).await?;
                pool.lock().push(buf);
                Ok(got as u64)
            }
        }
    };
    let cold = timed(names, a.threads, read(cold_at)).await?;
    let hot = timed(names, a.threads, read(cold_at)).await?;
    fs.mount(&a.uri, warm_at, mopts).await?;
    fs.list(warm_at).await?;
    let t = Instant::now();
    let job = fs.warm(warm_at, 0).await?;
    let end = loop {
        let j = fs.jobs(job.id).await?.pop().ok_or_else(|| anyhow::anyhow!("job vanished"))?;
        if j.state != "running" {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if end.state != "done" {
        bail!("warm job {} {}: {}", end.id, end.state, end.error);
    }
    let warm = Pass { secs: t.elapsed().as_secs_f64(), bytes: end.bytes_loaded, objects: end.files_done };
    Ok((direct, cold, hot, warm))
}
