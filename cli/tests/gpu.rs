//! `FileReader::read_to_device` (built with `--features gpu`): file bytes
//! into CUDA memory through pinned staging buffers, checked byte for byte
//! after copying back. Skips, saying why, where there is no CUDA driver or
//! device (these machines have no GPU); CI compiles and runs it anyway.
#![cfg(feature = "gpu")]

mod common;

use common::*;
use curvine_client::gpu::{cuda_available, Staging};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_to_device_lands_the_file_in_gpu_memory() {
    if !cuda_available() {
        eprintln!("SKIPPED read_to_device_lands_the_file_in_gpu_memory: no CUDA driver (libcuda.so) or no GPU on this machine");
        return;
    }
    let n = node_with(UpOptions { block_size: Some("4MiB".into()), ..Default::default() }).await;
    let fs = n.fs().unwrap();
    // Several blocks, several staging pieces, and a partial last piece.
    let data = random_bytes((21 << 20) + 12_345, 77);
    fs.write_all("/g", &data, false).await.unwrap();
    let mut staging = Staging::new(
        cudarc::driver::CudaContext::new(0).unwrap().new_stream().unwrap(),
        3 << 20,
    )
    .unwrap();
    let stream = staging.stream().clone();
    let mut dev = stream.alloc_zeros::<u8>(data.len() + 100).unwrap();
    let r = fs.open("/g").await.unwrap();
    let got = r.read_to_device(0, &mut dev.slice_mut(..), &mut staging).await.unwrap();
    assert_eq!(got, data.len());
    let back: Vec<u8> = stream.clone_dtoh(&dev).unwrap();
    assert!(back[..data.len()] == data[..], "device bytes differ from the file");
    assert!(back[data.len()..].iter().all(|&b| b == 0), "nothing written past the end of the file");
    // From an offset, into a smaller window.
    let mut win = stream.alloc_zeros::<u8>(5 << 20).unwrap();
    let got = r.read_to_device(1_000_003, &mut win.slice_mut(..), &mut staging).await.unwrap();
    assert_eq!(got, 5 << 20);
    let back: Vec<u8> = stream.clone_dtoh(&win).unwrap();
    assert!(back[..] == data[1_000_003..1_000_003 + (5 << 20)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gpudirect_reads_disk_tier_blocks_into_gpu_memory() {
    use curvine_client::gpu::GpuDirect;
    let gds = match GpuDirect::open() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("SKIPPED gpudirect_reads_disk_tier_blocks_into_gpu_memory: {}", e.message());
            return;
        }
    };
    // A node whose MEM tier is too small for the file: its blocks land on SSD.
    let n = node_with(UpOptions { block_size: Some("4MiB".into()), mem: Some("4MiB".into()), ..Default::default() }).await;
    let conf = curvine_common::config::ClientConf { meta: vec![n.meta_addr()], verify_checksums: false, ..Default::default() };
    let fs = curvine_client::FileSystem::new(conf).unwrap();
    let data = random_bytes((13 << 20) + 777, 78);
    fs.write_all("/gds", &data, false).await.unwrap();
    let mut staging = Staging::for_device(0).unwrap();
    let stream = staging.stream().clone();
    let mut dev = stream.alloc_zeros::<u8>(data.len()).unwrap();
    let r = fs.open("/gds").await.unwrap();
    let got = r.read_to_device_direct(0, &mut dev.slice_mut(..), &mut staging, &gds).await.unwrap();
    assert_eq!(got, data.len());
    let back: Vec<u8> = stream.clone_dtoh(&dev).unwrap();
    assert!(back == data, "device bytes differ from the file");
    // The staging path alone would pass the checks above: cuFile must
    // have read the SSD blocks (all but at most one block, which the
    // 4 MiB MEM tier may hold).
    let direct = fs.local_stats().gpudirect_bytes;
    eprintln!("gpudirect: {direct} of {} bytes read by cuFile", data.len());
    assert!(direct >= (data.len() - (4 << 20)) as u64, "cuFile read only {direct} of {} bytes", data.len());
}
