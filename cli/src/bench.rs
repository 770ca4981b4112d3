//! `cv bench`: throughput through the client, printed beside machine
//! baselines measured in the same run (memcpy, one raw loopback TCP stream).

use std::io::{Read, Write};
use std::time::Instant;

use anyhow::Result;
use clap::{Args, Subcommand};
use curvine_client::{CreateOptions, FileSystem};
use curvine_common::size::ByteSize;

use crate::ClientArgs;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Read a file of --size with --threads readers (written first if missing)
    Read(BenchArgs),
    /// Write --size bytes split over --threads files
    Write(BenchArgs),
    /// UFS objects read directly vs through Curvine (cold, hot) and by `cv warm`
    Ufs(crate::bench_ufs::UfsBenchArgs),
    /// Metadata ops/s (create, stat, list, rename, delete) with N client tasks
    Meta(crate::bench_meta::MetaBenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(long, default_value = "1GiB")]
    size: ByteSize,
    #[arg(long, short = 't', default_value_t = 1)]
    threads: usize,
    /// Bytes per read call (and the TCP baseline's receive buffer)
    #[arg(long, default_value = "16MiB")]
    buf: ByteSize,
    /// Directory for benchmark files
    #[arg(long, default_value = "/.bench")]
    dir: String,
    /// Measured passes, each followed by a TCP baseline pass (medians are reported)
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Print one JSON object
    #[arg(long)]
    json: bool,
    /// Bytes per data-plane request (client.chunk_size)
    #[arg(long, default_value = "2MiB")]
    chunk: ByteSize,
    /// Requests in flight per connection (client.pipeline_depth)
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Skip the client's end-to-end crc32c check of received chunks
    #[arg(long)]
    no_verify: bool,
    /// Read over TCP even when the worker is on this host
    #[arg(long)]
    no_short_circuit: bool,
    /// `read` only: instead of streaming, this many random reads of
    /// --random-size each (ops/s), against random `pread`s of a tmpfs copy
    #[arg(long, default_value_t = 0)]
    random: u64,
    #[arg(long, default_value = "64KiB")]
    random_size: ByteSize,
    /// Bytes fetched ahead for sequential small reads of remote blocks
    /// (client.read_ahead; 0 = off)
    #[arg(long, default_value = "8MiB")]
    read_ahead: ByteSize,
}

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
}

/// Single-thread memcpy bandwidth over `size` bytes (buffers up to 256 MiB,
/// reused).
pub fn memcpy_baseline(size: u64) -> f64 {
    let n = size.min(256 << 20) as usize;
    let src = vec![0x5au8; n];
    let mut dst = vec![0u8; n];
    dst.copy_from_slice(&src); // fault the pages in before timing
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let mut done = 0u64;
        while done < size {
            let k = ((size - done) as usize).min(n);
            dst[..k].copy_from_slice(&src[..k]);
            done += k as u64;
        }
        std::hint::black_box(&dst);
        best = best.max(mib_s(size, t.elapsed().as_secs_f64()));
    }
    best
}

/// One TCP stream between two sockets on loopback moving `size` bytes,
/// received into a `buf`-byte buffer as the client bench receives into its
/// own; the best of `rounds`.
pub fn tcp_rounds(size: u64, buf_len: usize, rounds: usize) -> Result<f64> {
    let mut best = 0f64;
    for _ in 0..rounds {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let reader = std::thread::spawn(move || -> std::io::Result<()> {
            let mut buf = vec![0u8; buf_len];
            buf.fill(1); // fault the pages in before timing
            let (mut s, _) = l.accept()?;
            let mut got = 0u64;
            let mut at = 0usize;
            while got < size {
                let n = s.read(&mut buf[at..])?;
                if n == 0 {
                    break;
                }
                got += n as u64;
                at = if at + n == buf.len() { 0 } else { at + n };
            }
            Ok(())
        });
        let buf = vec![0x5au8; 4 << 20];
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(addr)?;
        let mut sent = 0u64;
        while sent < size {
            let k = ((size - sent) as usize).min(buf.len());
            s.write_all(&buf[..k])?;
            sent += k as u64;
        }
        drop(s);
        reader.join().map_err(|_| anyhow::anyhow!("baseline reader panicked"))??;
        best = best.max(mib_s(size, t.elapsed().as_secs_f64()));
    }
    Ok(best)
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Writes `total` bytes to `path` from a repeating pattern buffer.
async fn write_file(fs: &FileSystem, path: &str, total: u64, src: &[u8]) -> Result<()> {
    let mut w = fs.create(path, CreateOptions { overwrite: true, parents: true, ..Default::default() }).await?;
    let mut done = 0u64;
    while done < total {
        let k = ((total - done) as usize).min(src.len());
        w.write(&src[..k]).await?;
        done += k as u64;
    }
    w.close().await?;
    Ok(())
}

/// One measured pass through the client; returns seconds.
async fn write_pass(fs: &FileSystem, a: &BenchArgs, round: usize, src: &std::sync::Arc<Vec<u8>>) -> Result<f64> {
    let (size, threads) = (a.size.0, a.threads.max(1));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..threads {
        let (fs, src) = (fs.clone(), src.clone());
        let path = format!("{}/write-{}-{round}-{i}", a.dir, std::process::id());
        let share = size / threads as u64 + if i == 0 { size % threads as u64 } else { 0 };
        tasks.push(tokio::spawn(async move {
            write_file(&fs, &path, share, &src).await?;
            Ok::<_, anyhow::Error>(path)
        }));
    }
    let mut paths = Vec::new();
    for t in tasks {
        paths.push(t.await??);
    }
    let el = t.elapsed().as_secs_f64();
    for p in paths {
        fs.delete(&p, false).await?;
    }
    Ok(el)
}

async fn read_pass(fs: &FileSystem, a: &BenchArgs, path: &str) -> Result<f64> {
    let (size, threads) = (a.size.0, a.threads.max(1) as u64);
    // Small buffers are honoured (a reader taking 8 KiB at a time is a real
    // pattern); the TCP baseline keeps at least 1 MiB.
    let buf_len = (a.buf.0 as usize).max(4096);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..threads {
        let (fs, path) = (fs.clone(), path.to_string());
        let (lo, hi) = (size * i / threads, size * (i + 1) / threads);
        tasks.push(tokio::spawn(async move {
            let r = fs.open(&path).await?;
            let mut buf = crate::fs_cmd::big_buffer(buf_len);
            let mut off = lo;
            while off < hi {
                let k = ((hi - off) as usize).min(buf_len);
                let n = r.read_at(off, &mut buf[..k]).await?;
                if n == 0 {
                    anyhow::bail!("{path}: unexpected end of file at {off}");
                }
                off += n as u64;
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Cheap deterministic offsets (xorshift); no need for a crypto RNG here.
fn offsets(seed: u64, n: u64, size: u64, len: u64) -> Vec<u64> {
    let slots = (size / len).max(1);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % slots) * len
        })
        .collect()
}

/// `a.random` random reads of `a.random_size` through Curvine, over
/// `threads` tasks; returns reads per second.
async fn random_pass(fs: &FileSystem, a: &BenchArgs, path: &str, round: u64) -> Result<f64> {
    let (threads, len) = (a.threads.max(1) as u64, a.random_size.0.max(1));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..threads {
        let (fs, path) = (fs.clone(), path.to_string());
        let offs = offsets(round * 1000 + i + 1, a.random / threads, a.size.0, len);
        tasks.push(tokio::spawn(async move {
            let r = fs.open(&path).await?;
            let mut buf = vec![0u8; len as usize];
            for off in offs {
                r.read_at(off, &mut buf).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((a.random / threads * threads) as f64 / t.elapsed().as_secs_f64().max(1e-9))
}

/// The same random reads as `pread` of a local file, same threads.
fn random_local(file: &std::fs::File, a: &BenchArgs, round: u64) -> Result<f64> {
    use std::os::unix::fs::FileExt;
    let (threads, len) = (a.threads.max(1) as u64, a.random_size.0.max(1));
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let offs = offsets(round * 1000 + i + 1, a.random / threads, a.size.0, len);
                s.spawn(move || -> std::io::Result<()> {
                    let mut buf = vec![0u8; len as usize];
                    for off in offs {
                        file.read_exact_at(&mut buf, off)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join().map_err(|_| anyhow::anyhow!("baseline reader panicked"))??;
        }
        Ok(())
    })?;
    Ok((a.random / threads * threads) as f64 / t.elapsed().as_secs_f64().max(1e-9))
}

/// `cv bench read --random N`: random reads per second, Curvine vs a local
/// tmpfs file of the same size, rounds interleaved.
async fn run_random(fs: &FileSystem, a: &BenchArgs, path: &str) -> Result<()> {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { std::path::PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let tmp = dir.join(format!("cv-bench-random-{}", std::process::id()));
    let local = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&tmp)?;
    std::fs::remove_file(&tmp)?; // gone with the handle
    {
        let data = fs.read_all(path).await?;
        use std::io::Write;
        (&local).write_all(&data)?;
    }
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for round in 0..a.rounds.max(1) as u64 {
        ours.push(random_pass(fs, a, path, round).await?);
        base.push(random_local(&local, a, round)?);
    }
    let (m, b) = (median(&mut ours), median(&mut base));
    let via = if fs.local_stats().reads > 0 { "short-circuit" } else { "tcp" };
    if a.json {
        println!(
            "{}",
            serde_json::json!({"bench": "read-random", "reads_per_s": m, "size": a.random_size.0, "threads": a.threads,
                "path": via, "baselines": {"local_tmpfs_pread_per_s": b}, "ratios": {"vs_local_pread": m / b}})
        );
    } else {
        println!(
            "random {} reads, {} thread(s) over {via}: {m:.0} reads/s median of {}; local tmpfs pread {b:.0} reads/s, ratio {:.2}",
            a.random_size, a.threads, a.rounds, m / b
        );
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub async fn run(cmd: BenchCmd, c: &ClientArgs) -> Result<()> {
    let (name, a) = match &cmd {
        BenchCmd::Read(a) => ("read", a.clone()),
        BenchCmd::Write(a) => ("write", a.clone()),
        BenchCmd::Ufs(a) => return crate::bench_ufs::run(a.clone(), c).await,
        BenchCmd::Meta(a) => return crate::bench_meta::run(a.clone(), c).await,
    };
    let conf = curvine_common::config::Config {
        client: curvine_common::config::ClientConf {
            meta: c.meta.clone(),
            chunk_size: a.chunk,
            pipeline_depth: a.depth,
            verify_checksums: !a.no_verify,
            short_circuit: !a.no_short_circuit,
            read_ahead: a.read_ahead,
            ..Default::default()
        },
        ..Default::default()
    };
    conf.validate("cv bench")?;
    let fs = FileSystem::new(conf.client)?;
    let size = a.size.0;
    let threads = a.threads.max(1);
    let rounds = a.rounds.max(1);
    let src = std::sync::Arc::new(pattern((a.buf.0 as usize).min(size.max(1) as usize)));
    let read_path = format!("{}/read-{size}", a.dir);
    if name == "read" {
        match fs.stat(&read_path).await {
            Ok(s) if s.len == size && s.complete => {}
            _ => write_file(&fs, &read_path, size, &src).await?,
        }
    }
    if name == "read" && a.random > 0 {
        return run_random(&fs, &a, &read_path).await;
    }
    // Client passes and TCP baseline passes alternate, so drift in the
    // machine's speed (a shared VM host) hits both alike; medians are
    // compared.
    let buf_len = (a.buf.0 as usize).clamp(1 << 20, size.max(1 << 20) as usize);
    let (mut ours, mut tcp) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let secs = match name {
            "read" => read_pass(&fs, &a, &read_path).await?,
            _ => write_pass(&fs, &a, round, &src).await?,
        };
        ours.push(mib_s(size, secs));
        tcp.push(tokio::task::spawn_blocking(move || tcp_rounds(size, buf_len, 1)).await??);
    }
    let best = ours.iter().cloned().fold(0.0, f64::max);
    let tcp_best = tcp.iter().cloned().fold(0.0, f64::max);
    let (med, tcp_med) = (median(&mut ours), median(&mut tcp));
    let memcpy = tokio::task::spawn_blocking(move || memcpy_baseline(size)).await?;
    let local = fs.local_stats();
    let path = if local.reads > 0 || local.writes > 0 { "short-circuit" } else { "tcp" };
    if a.json {
        let v = serde_json::json!({
            "bench": name, "size": size, "threads": threads, "rounds": rounds,
            "chunk": a.chunk.0, "depth": a.depth, "verify": !a.no_verify, "buf": buf_len, "path": path,
            "mib_s": med, "mib_s_best": best,
            "baselines": {"memcpy_mib_s": memcpy, "tcp_loopback_mib_s": tcp_med, "tcp_loopback_mib_s_best": tcp_best},
            "ratios": {"vs_tcp_loopback": med / tcp_med, "vs_memcpy": med / memcpy},
        });
        println!("{v}");
    } else {
        println!(
            "{name}: {} with {threads} thread(s) over {path}: {med:.0} MiB/s median of {rounds} (best {best:.0})",
            ByteSize(size)
        );
        println!("baseline memcpy (1 thread):        {memcpy:.0} MiB/s   ratio {:.2}", med / memcpy);
        println!(
            "baseline raw TCP loopback stream:  {tcp_med:.0} MiB/s median (best {tcp_best:.0})   ratio {:.2}  (same {} receive buffer)",
            med / tcp_med,
            ByteSize(buf_len as u64)
        );
    }
    Ok(())
}
