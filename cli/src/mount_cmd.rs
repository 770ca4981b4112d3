//! `cv mount`, `cv mount resync`, `cv umount`: the UFS mount table.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use curvine_client::{MountInfo, MountOptions};
use curvine_common::size::human;

use crate::ClientArgs;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MountArgs {
    #[command(subcommand)]
    sub: Option<MountSub>,
    /// UFS to mount: s3://bucket/prefix, gs://, azblob://, oss://, webhdfs://, file:///dir
    uri: Option<String>,
    /// Curvine path to mount it at (created; must be absent or empty)
    path: Option<String>,
    /// UFS option KEY=VALUE (e.g. endpoint=http://127.0.0.1:9000, region=us-east-1); repeatable.
    /// S3 credentials default to AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of this shell
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
    options: Vec<String>,
    /// cache-only (default; never writes the UFS), write-through or write-back
    #[arg(long)]
    write_mode: Option<String>,
    /// Drop cached copies this long after they were cached (e.g. 7d; pinned and
    /// cache-only files stay; the UFS keeps the data); default: never
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// How long UFS metadata is trusted before it is checked again (e.g. 30s, 0 = always,
    /// never = only on `cv mount resync`); default 60s
    #[arg(long)]
    sync_interval: Option<String>,
    /// write-back: how long a closed file waits before its upload (e.g. 10m); `cv sync` uploads at once
    #[arg(long, value_parser = humantime::parse_duration)]
    upload_delay: Option<Duration>,
    /// Print JSON (listing)
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum MountSub {
    /// Re-read PATH (and directories listed below it) from the UFS now
    Resync { path: String },
}

fn parse_interval(s: &str) -> Result<i64> {
    match s {
        "never" | "-1" => Ok(-1),
        "0" => Ok(0),
        _ => match humantime::parse_duration(s) {
            Ok(d) => Ok(d.as_millis() as i64),
            Err(e) => bail!("--sync-interval '{s}': {e} (use e.g. 30s, 5m, 0 or never)"),
        },
    }
}

fn parse_options(kv: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for o in kv {
        let Some((k, v)) = o.split_once('=') else { bail!("--option '{o}': expected KEY=VALUE") };
        if k.trim().is_empty() {
            bail!("--option '{o}': empty key");
        }
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

pub async fn run(a: MountArgs, c: &ClientArgs) -> Result<()> {
    let fs = c.fs()?;
    if let Some(MountSub::Resync { path }) = a.sub {
        let r = fs.resync(&path).await?;
        println!("resynced {path}: {} entries seen, {} changed blocks dropped, {} entries removed", r.entries, r.changed, r.removed);
        return Ok(());
    }
    let (uri, path) = match (a.uri, a.path) {
        (None, None) => return list(&fs.mounts().await?, a.json),
        (Some(u), Some(p)) => (u, p),
        _ => bail!("usage: cv mount UFS_URI CV_PATH [--option KEY=VALUE ...] (or `cv mount` to list)"),
    };
    let mut options = parse_options(&a.options)?;
    // The servers run elsewhere, with other environments: credentials in
    // this shell's environment travel with the mount (stored, never shown).
    let scheme = curvine_ufs::UfsUri::parse(&uri)?.scheme;
    options.extend(curvine_ufs::env_options(&scheme, &options));
    let opts = MountOptions {
        options,
        write_mode: a.write_mode,
        ttl_ms: a.ttl.map(|d| d.as_millis() as i64).unwrap_or(0),
        sync_interval_ms: a.sync_interval.as_deref().map(parse_interval).transpose()?,
        upload_delay_ms: a.upload_delay.map(|d| d.as_millis() as i64).unwrap_or(0),
    };
    let m = fs.mount(&uri, &path, opts).await?;
    println!("mounted {} at {} ({})", m.uri, m.path, m.write_mode);
    Ok(())
}

pub async fn sync(path: &str, c: &ClientArgs) -> Result<()> {
    let r = c.fs()?.sync(path).await?;
    for e in &r.errors {
        eprintln!("  {e}");
    }
    if r.failed > 0 {
        bail!("{} of {} pending files under {path} failed to upload (they stay queued and are retried)", r.failed, r.pending_before);
    }
    println!("{} files under {path} uploaded to the UFS", r.persisted);
    Ok(())
}

pub async fn umount(path: &str, force: bool, c: &ClientArgs) -> Result<()> {
    let fs = c.fs()?;
    let freed = fs.umount(path, force).await?;
    println!("unmounted {path} ({freed} cached blocks dropped)");
    Ok(())
}

fn interval_str(ms: i64) -> String {
    match ms {
        i64::MIN..=-1 => "never".into(),
        0 => "always".into(),
        ms => humantime::format_duration(Duration::from_millis(ms as u64)).to_string(),
    }
}

fn list(mounts: &[MountInfo], json: bool) -> Result<()> {
    if json {
        let v: Vec<_> = mounts
            .iter()
            .map(|m| {
                let opts: BTreeMap<_, _> = m.options.iter().collect();
                serde_json::json!({
                    "id": m.id, "path": m.path, "uri": m.uri, "write_mode": m.write_mode,
                    "ttl_ms": m.ttl_ms, "sync_interval_ms": m.sync_interval_ms,
                    "block_size": m.block_size, "options": opts, "upload_delay_ms": m.upload_delay_ms,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if mounts.is_empty() {
        println!("no mounts (add one with `cv mount s3://bucket/prefix /path`)");
        return Ok(());
    }
    for m in mounts {
        let opts: BTreeMap<_, _> = m.options.iter().collect();
        let opts: Vec<String> = opts.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let ttl = if m.ttl_ms > 0 { interval_str(m.ttl_ms) } else { "none".into() };
        println!(
            "{}  {}  {}  sync {}  ttl {}  block {}  {}",
            m.path,
            m.uri,
            m.write_mode,
            interval_str(m.sync_interval_ms),
            ttl,
            human(m.block_size),
            opts.join(",")
        );
    }
    Ok(())
}
