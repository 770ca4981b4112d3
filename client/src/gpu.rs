//! Reads into CUDA device memory (`--features gpu`): file bytes land in
//! page-locked host buffers and are copied to the device asynchronously,
//! two buffers in turn, so reading the next piece overlaps the copy of the
//! last. The CUDA driver is loaded at run time; `cuda_available` says
//! whether this machine has one (and a device).

use std::sync::Arc;

use cudarc::cufile::safe::Cufile;
use cudarc::driver::{CudaContext, CudaStream, CudaViewMut, PinnedHostSlice};
use curvine_common::tier::TierKind;
use curvine_common::{Error, ErrorKind, Result};

use crate::reader::FileReader;

/// Bytes per staging buffer (two are used).
pub const DEFAULT_PIECE: usize = 8 << 20;

/// Whether the CUDA driver library loads and reports at least one device.
pub fn cuda_available() -> bool {
    // SAFETY: only probes for the driver library (no CUDA call is made
    // unless it loads).
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    present && CudaContext::device_count().map(|n| n > 0).unwrap_or(false)
}

fn cuda(e: cudarc::driver::DriverError) -> Error {
    Error::new(ErrorKind::Io, format!("CUDA: {e}"))
}

/// Two page-locked buffers bound to a stream; reuse one per reading thread.
pub struct Staging {
    stream: Arc<CudaStream>,
    bufs: [PinnedHostSlice<u8>; 2],
}

impl Staging {
    /// Allocates two pinned buffers of `piece` bytes on `stream`'s context.
    pub fn new(stream: Arc<CudaStream>, piece: usize) -> Result<Staging> {
        if piece == 0 {
            return Err(Error::invalid("staging buffers need at least one byte"));
        }
        let ctx = stream.context().clone();
        // SAFETY: the buffers are written (by reads) before any byte of
        // them is copied to the device.
        let alloc = || unsafe { ctx.alloc_pinned::<u8>(piece) }.map_err(cuda);
        Ok(Staging { bufs: [alloc()?, alloc()?], stream })
    }

    /// A stream of device `ordinal`'s context with default-size buffers.
    pub fn for_device(ordinal: usize) -> Result<Staging> {
        if !cuda_available() {
            return Err(Error::new(ErrorKind::Unavailable, "no CUDA driver or device on this machine"));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda)?;
        Staging::new(ctx.new_stream().map_err(cuda)?, DEFAULT_PIECE)
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

impl FileReader {
    /// Fills `dst` (device memory) from file offset `offset`; returns the
    /// bytes copied (fewer than `dst.len()` only at end of file). Returns
    /// once the copies are complete on the device.
    pub async fn read_to_device(&self, offset: u64, dst: &mut CudaViewMut<'_, u8>, staging: &mut Staging) -> Result<usize> {
        let total = (dst.len() as u64).min(self.len().saturating_sub(offset)) as usize;
        let piece = staging.bufs[0].len();
        let stream = staging.stream.clone();
        let mut done = 0usize;
        let mut turn = 0usize;
        while done < total {
            let n = piece.min(total - done);
            let buf = &mut staging.bufs[turn % 2];
            // Waits for the copy that last used this buffer.
            let host = buf.as_mut_slice().map_err(cuda)?;
            let got = self.read_at(offset + done as u64, &mut host[..n]).await?;
            if got != n {
                return Err(Error::new(ErrorKind::Corrupt, format!("{}: short read at {}", self.status().path, offset + done as u64)));
            }
            let mut view = dst.slice_mut(done..done + n);
            if n == piece {
                // Asynchronous: the buffer's event marks when it is free.
                stream.memcpy_htod(&*buf, &mut view).map_err(cuda)?;
            } else {
                // The last, partial piece (synchronous).
                let host = buf.as_slice().map_err(cuda)?;
                stream.memcpy_htod(&host[..n], &mut view).map_err(cuda)?;
            }
            done += n;
            turn += 1;
        }
        stream.synchronize().map_err(cuda)?;
        Ok(done)
    }
}

/// GPUDirect Storage (cuFile): the NVMe DMAs a block file's bytes straight
/// into device memory, with no bounce through host memory. Loaded at run
/// time like the driver; `open` says why when it cannot be used.
pub struct GpuDirect {
    driver: Arc<Cufile>,
}

impl GpuDirect {
    pub fn open() -> Result<GpuDirect> {
        // SAFETY: only probes for the library (no cuFile call unless it loads).
        if !unsafe { cudarc::cufile::sys::is_culib_present() } || !cuda_available() {
            return Err(Error::new(ErrorKind::Unavailable, "no cuFile library (libcufile.so) or no GPU on this machine"));
        }
        let driver = Cufile::new().map_err(|e| Error::new(ErrorKind::Unavailable, format!("cuFile: {e:?}")))?;
        Ok(GpuDirect { driver })
    }
}

impl FileReader {
    /// `read_to_device`, with the blocks that sit in a disk tier (SSD/HDD)
    /// of a worker on this host read by cuFile straight from their files
    /// into `dst`. Other blocks (MEM tier, remote, not yet cached) go
    /// through the staging buffers. cuFile bytes never pass the CPU, so
    /// the client's crc check cannot see them: this path is taken only when
    /// the client was configured with `verify_checksums = false`; with
    /// checks on, everything goes through `read_to_device`.
    pub async fn read_to_device_direct(
        &self,
        offset: u64,
        dst: &mut CudaViewMut<'_, u8>,
        staging: &mut Staging,
        gds: &GpuDirect,
    ) -> Result<usize> {
        let inner = &self.fs().inner;
        if inner.conf.verify_checksums || !inner.conf.short_circuit {
            return self.read_to_device(offset, dst, staging).await;
        }
        let total = (dst.len() as u64).min(self.len().saturating_sub(offset)) as usize;
        let mut done = 0usize;
        while done < total {
            let pos = offset + done as u64;
            let i = self.blocks().partition_point(|b| b.offset + b.len <= pos);
            let Some(b) = self.blocks().get(i) else { break };
            let n = ((b.offset + b.len - pos) as usize).min(total - done);
            let mut view = dst.slice_mut(done..done + n);
            let mut direct = false;
            if !b.from_ufs {
                for loc in b.locations.iter().filter(|l| l.hostname == inner.hostname) {
                    let Some(f) = inner.local.block_file(loc, b.id).await else { continue };
                    if f.tier == TierKind::Mem || f.len < b.len {
                        continue; // tmpfs has no DMA path; a short file is read the checked way
                    }
                    if let Ok(got) = self.cufile_read(gds, &f.file, f.base + pos - b.offset, &mut view) {
                        if got == n {
                            direct = true;
                            inner.local.gpudirect_bytes.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
            if !direct {
                let got = self.read_to_device(pos, &mut view, staging).await?;
                if got != n {
                    return Err(Error::new(ErrorKind::Corrupt, format!("{}: short read at {pos}", self.status().path)));
                }
            }
            done += n;
        }
        Ok(done)
    }

    /// One cuFile read of `view.len()` bytes at `at` of a block file,
    /// opened again with O_DIRECT (cuFile's DMA path needs it).
    fn cufile_read(&self, gds: &GpuDirect, file: &std::fs::File, at: u64, view: &mut CudaViewMut<'_, u8>) -> Result<usize> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        let handle = gds.driver.register(direct).map_err(|e| Error::new(ErrorKind::Io, format!("cuFile register: {e:?}")))?;
        let got = handle.sync_read(at as i64, view).map_err(|e| Error::new(ErrorKind::Io, format!("cuFile read: {e:?}")))?;
        usize::try_from(got).map_err(|_| Error::new(ErrorKind::Io, format!("cuFile read failed ({got})")))
    }
}
