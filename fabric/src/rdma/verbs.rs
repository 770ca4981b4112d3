//! Owned wrappers over the libibverbs objects the RDMA transport uses: a
//! device context, a protection domain, registered memory, a completion
//! queue whose events wake tokio, and reliable-connected queue pairs.
//!
//! Every wrapper frees its object on drop, after the objects that depend on
//! it (each holds an `Arc` of its parent). libibverbs objects may be used
//! from any thread, which is what the `Send`/`Sync` impls below assert.

use std::ffi::CStr;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;

use curvine_common::{Error, ErrorKind, Result};
use rdma_sys::*;
use tokio::io::unix::AsyncFd;

use super::wire::Endpoint;

fn os_error(what: &str) -> Error {
    let e = std::io::Error::last_os_error();
    let hint = match e.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::ENODEV) | Some(libc::ENOENT) => {
            " (this kernel has no RDMA support: load a driver such as rdma_rxe and add a link, see testbed/rxe.sh)"
        }
        Some(libc::ENOMEM) => " (the locked-memory limit may be too low: raise `ulimit -l`)",
        _ => "",
    };
    Error::new(ErrorKind::Unavailable, format!("rdma: {what}: {e}{hint}"))
}

/// The RDMA devices this host has, by name; an error that names the missing
/// kernel support when it has none.
pub fn device_names() -> Result<Vec<String>> {
    let mut n = 0;
    // SAFETY: ibv_get_device_list returns an array of `n` device pointers
    // (or null), freed below with ibv_free_device_list.
    unsafe {
        let list = ibv_get_device_list(&mut n);
        if list.is_null() {
            return Err(os_error("ibv_get_device_list"));
        }
        let names = (0..n.max(0) as usize)
            .map(|i| CStr::from_ptr(ibv_get_device_name(*list.add(i))).to_string_lossy().into_owned())
            .collect();
        ibv_free_device_list(list);
        Ok(names)
    }
}

/// An open device and the protection domain every region and queue pair of
/// this process lives in.
pub struct Device {
    ctx: NonNull<ibv_context>,
    pd: NonNull<ibv_pd>,
    pub name: String,
    pub port: u8,
    pub gid_index: u8,
    local: PortInfo,
}

#[derive(Clone, Copy)]
struct PortInfo {
    lid: u16,
    gid: [u8; 16],
    mtu: u8,
}

// SAFETY: verbs contexts and protection domains are thread-safe in
// libibverbs; the pointers are only freed in Drop.
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

impl Device {
    /// Opens device `name` (the first one when `None`) and checks that
    /// `port` is active.
    pub fn open(name: Option<&str>, port: u8, gid_index: u8) -> Result<Arc<Device>> {
        let mut n = 0;
        // SAFETY: the list is valid until ibv_free_device_list; the context
        // stays valid after the list is freed (documented by libibverbs).
        unsafe {
            let list = ibv_get_device_list(&mut n);
            if list.is_null() {
                return Err(os_error("ibv_get_device_list"));
            }
            let mut chosen = None;
            for i in 0..n.max(0) as usize {
                let dev = *list.add(i);
                let dev_name = CStr::from_ptr(ibv_get_device_name(dev)).to_string_lossy().into_owned();
                if name.is_none_or(|want| want == dev_name) {
                    chosen = Some((dev, dev_name));
                    break;
                }
            }
            let Some((dev, dev_name)) = chosen else {
                ibv_free_device_list(list);
                let what = name.map(|w| format!("no RDMA device named {w:?}")).unwrap_or_else(|| "no RDMA device".into());
                return Err(Error::new(ErrorKind::Unavailable, format!("rdma: {what} on this host")));
            };
            let ctx = ibv_open_device(dev);
            ibv_free_device_list(list);
            let ctx = NonNull::new(ctx).ok_or_else(|| os_error(&format!("ibv_open_device({dev_name})")))?;
            let pd = match NonNull::new(ibv_alloc_pd(ctx.as_ptr())) {
                Some(pd) => pd,
                None => {
                    let e = os_error("ibv_alloc_pd");
                    ibv_close_device(ctx.as_ptr());
                    return Err(e);
                }
            };
            let mut dev = Device {
                ctx,
                pd,
                name: dev_name,
                port,
                gid_index,
                local: PortInfo { lid: 0, gid: [0; 16], mtu: 0 },
            };
            dev.local = dev.query_port()?;
            Ok(Arc::new(dev))
        }
    }

    fn query_port(&self) -> Result<PortInfo> {
        // SAFETY: both out-structs are plain C data, zero-initialised.
        unsafe {
            let mut attr: ibv_port_attr = std::mem::zeroed();
            if ___ibv_query_port(self.ctx.as_ptr(), self.port, &mut attr) != 0 {
                return Err(os_error(&format!("query port {} of {}", self.port, self.name)));
            }
            if attr.state != ibv_port_state::IBV_PORT_ACTIVE {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("rdma: port {} of {} is not active (state {})", self.port, self.name, attr.state),
                ));
            }
            let mut gid: ibv_gid = std::mem::zeroed();
            if ibv_query_gid(self.ctx.as_ptr(), self.port, self.gid_index as i32, &mut gid) != 0 {
                return Err(os_error(&format!("query gid {} of {}", self.gid_index, self.name)));
            }
            Ok(PortInfo { lid: attr.lid, gid: gid.raw, mtu: attr.active_mtu as u8 })
        }
    }

    pub(crate) fn pd(&self) -> *mut ibv_pd {
        self.pd.as_ptr()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: every region and queue pair holds an Arc<Device>, so none
        // is left when this runs.
        unsafe {
            ibv_dealloc_pd(self.pd.as_ptr());
            ibv_close_device(self.ctx.as_ptr());
        }
    }
}

/// Page-aligned memory registered once for local writes and remote reads
/// and writes. Slices of it are handed out by `pool::Pool`.
pub struct Region {
    mr: NonNull<ibv_mr>,
    base: NonNull<u8>,
    len: usize,
    _dev: Arc<Device>,
}

// SAFETY: the region's memory is only accessed through `slice`, whose
// callers (the pool) hand each byte range to one owner at a time.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    pub fn new(dev: &Arc<Device>, len: usize) -> Result<Region> {
        let layout = std::alloc::Layout::from_size_align(len.max(4096), 4096)
            .map_err(|e| Error::invalid(format!("rdma buffer of {len} bytes: {e}")))?;
        // SAFETY: non-zero size; freed with the same layout in Drop (or just
        // below when registration fails).
        let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
            .ok_or_else(|| Error::new(ErrorKind::NoSpace, format!("rdma: cannot allocate {len} bytes")))?;
        let access = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_READ;
        // SAFETY: the buffer outlives the registration (deregistered first in Drop).
        let mr = unsafe { ibv_reg_mr(dev.pd(), base.as_ptr().cast(), layout.size(), access.0 as i32) };
        match NonNull::new(mr) {
            Some(mr) => Ok(Region { mr, base, len: layout.size(), _dev: dev.clone() }),
            None => {
                let e = os_error(&format!("register {len} bytes"));
                // SAFETY: allocated above with this layout, never registered.
                unsafe { std::alloc::dealloc(base.as_ptr(), layout) };
                Err(e)
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn lkey(&self) -> u32 {
        // SAFETY: the mr is valid while self lives.
        unsafe { self.mr.as_ref().lkey }
    }
    pub fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { self.mr.as_ref().rkey }
    }
    pub fn addr(&self, offset: usize) -> u64 {
        self.base.as_ptr() as u64 + offset as u64
    }

    /// The bytes `offset..offset+len`.
    ///
    /// # Safety
    /// The caller must be the only one using that range (the pool hands
    /// each slot to one owner) and no RDMA operation may be writing it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset + len <= self.len, "slice beyond the registered region");
        std::slice::from_raw_parts_mut(self.base.as_ptr().add(offset), len)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: deregister before freeing the memory it covers.
        unsafe {
            ibv_dereg_mr(self.mr.as_ptr());
            std::alloc::dealloc(self.base.as_ptr(), std::alloc::Layout::from_size_align_unchecked(self.len, 4096));
        }
    }
}

/// A completion queue with its own event channel, so waiting for a
/// completion is an `await` on the channel's descriptor, not a busy poll.
struct Cq {
    // Declared first so it is dropped (deregistered) before the channel
    // that owns the descriptor is destroyed.
    fd: AsyncFd<RawFd>,
    cq: NonNull<ibv_cq>,
    channel: NonNull<ibv_comp_channel>,
    /// Events taken with ibv_get_cq_event and not yet acknowledged.
    unacked: u32,
}

// SAFETY: completion queues and channels may be used from any thread;
// `&mut self` serialises this side's polling.
unsafe impl Send for Cq {}

impl Cq {
    fn new(dev: &Device, depth: i32) -> Result<Cq> {
        // SAFETY: objects are created in order and destroyed in reverse on
        // every failure path (and in Drop).
        unsafe {
            let ctx = dev.ctx.as_ptr();
            let channel = NonNull::new(ibv_create_comp_channel(ctx)).ok_or_else(|| os_error("create completion channel"))?;
            let cq = match NonNull::new(ibv_create_cq(ctx, depth, std::ptr::null_mut(), channel.as_ptr(), 0)) {
                Some(cq) => cq,
                None => {
                    let e = os_error("create completion queue");
                    ibv_destroy_comp_channel(channel.as_ptr());
                    return Err(e);
                }
            };
            let raw = channel.as_ref().fd;
            let flags = libc::fcntl(raw, libc::F_GETFL);
            libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK);
            // SAFETY: the descriptor belongs to the channel, which is
            // destroyed only after this registration (Drop below).
            let fd = match AsyncFd::register_with_interest(raw, tokio::io::Interest::READABLE) {
                Ok(fd) => fd,
                Err(e) => {
                    ibv_destroy_cq(cq.as_ptr());
                    ibv_destroy_comp_channel(channel.as_ptr());
                    let e: std::io::Error = e.into();
                    return Err(Error::from(e).context("rdma: watch completion channel"));
                }
            };
            Ok(Cq { fd, cq, channel, unacked: 0 })
        }
    }

    /// Waits for the completion of work request `wr_id` (the only one in
    /// flight on this queue) and checks its status.
    async fn wait(&mut self, wr_id: u64, what: &str) -> Result<()> {
        loop {
            if let Some(wc) = self.poll()? {
                return check(&wc, wr_id, what);
            }
            // Arm the notification, then poll again: a completion that
            // arrived between the poll and the arming raises no event.
            // SAFETY: the cq is valid while self lives.
            if unsafe { ibv_req_notify_cq(self.cq.as_ptr(), 0) } != 0 {
                return Err(os_error("arm completion notification"));
            }
            if let Some(wc) = self.poll()? {
                return check(&wc, wr_id, what);
            }
            let mut ready = self.fd.readable().await.map_err(|e| Error::from(e).context("rdma: completion channel"))?;
            let mut cq = std::ptr::null_mut();
            let mut cq_ctx = std::ptr::null_mut();
            // SAFETY: the channel is non-blocking; -1/EAGAIN means no event yet.
            if unsafe { ibv_get_cq_event(self.channel.as_ptr(), &mut cq, &mut cq_ctx) } == 0 {
                self.unacked += 1;
                if self.unacked >= 64 {
                    // SAFETY: acknowledges events taken above on this cq.
                    unsafe { ibv_ack_cq_events(self.cq.as_ptr(), self.unacked) };
                    self.unacked = 0;
                }
            } else {
                ready.clear_ready();
            }
        }
    }

    fn poll(&mut self) -> Result<Option<ibv_wc>> {
        // SAFETY: ibv_wc is plain C data; poll writes at most one entry.
        unsafe {
            let mut wc: ibv_wc = std::mem::zeroed();
            match ibv_poll_cq(self.cq.as_ptr(), 1, &mut wc) {
                0 => Ok(None),
                1 => Ok(Some(wc)),
                _ => Err(os_error("poll completion queue")),
            }
        }
    }
}

fn check(wc: &ibv_wc, wr_id: u64, what: &str) -> Result<()> {
    if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
        // SAFETY: ibv_wc_status_str returns a static string for any status.
        let why = unsafe { CStr::from_ptr(ibv_wc_status_str(wc.status)) }.to_string_lossy();
        return Err(Error::new(ErrorKind::Io, format!("rdma {what} failed: {why} (status {})", wc.status)));
    }
    if wc.wr_id != wr_id {
        return Err(Error::protocol(format!("rdma: completion for request {} while waiting for {wr_id}", wc.wr_id)));
    }
    Ok(())
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: the queue pair using this cq was destroyed first (field
        // order in QueuePair); events are acknowledged before destroying.
        unsafe {
            if self.unacked > 0 {
                ibv_ack_cq_events(self.cq.as_ptr(), self.unacked);
            }
            ibv_destroy_cq(self.cq.as_ptr());
            ibv_destroy_comp_channel(self.channel.as_ptr());
        }
    }
}

/// A reliable-connected queue pair with its completion queue. One RDMA
/// operation is in flight at a time: each call waits for its completion.
pub struct QueuePair {
    qp: NonNull<ibv_qp>,
    cq: Cq,
    psn: u32,
    next_wr: u64,
    /// An operation was posted and its completion not yet seen (its future
    /// was dropped): the queue pair must not be reused.
    in_flight: bool,
    dev: Arc<Device>,
}

// SAFETY: queue pairs and completion queues are thread-safe in libibverbs;
// `&mut self` methods serialise this side's use.
unsafe impl Send for QueuePair {}

/// Send-queue depth: one operation at a time, plus room for the flush on error.
const SQ_DEPTH: u32 = 4;

impl QueuePair {
    /// A new queue pair in the INIT state; `endpoint` is what the peer needs
    /// to connect to it.
    pub fn new(dev: &Arc<Device>) -> Result<QueuePair> {
        let cq = Cq::new(dev, SQ_DEPTH as i32 * 2)?;
        // SAFETY: init_attr is plain C data; the cq outlives the qp.
        unsafe {
            let mut init: ibv_qp_init_attr = std::mem::zeroed();
            init.send_cq = cq.cq.as_ptr();
            init.recv_cq = cq.cq.as_ptr();
            init.cap.max_send_wr = SQ_DEPTH;
            init.cap.max_recv_wr = 1;
            init.cap.max_send_sge = 1;
            init.cap.max_recv_sge = 1;
            init.qp_type = ibv_qp_type::IBV_QPT_RC;
            init.sq_sig_all = 1;
            let qp = NonNull::new(ibv_create_qp(dev.pd(), &mut init)).ok_or_else(|| os_error("create queue pair"))?;
            let psn = (qp.as_ref().qp_num.wrapping_mul(2654435761)) & 0xff_ffff;
            let mut me = QueuePair { qp, cq, psn, next_wr: 1, in_flight: false, dev: dev.clone() };
            let mut attr: ibv_qp_attr = std::mem::zeroed();
            attr.qp_state = ibv_qp_state::IBV_QPS_INIT;
            attr.pkey_index = 0;
            attr.port_num = dev.port;
            attr.qp_access_flags = (ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
                | ibv_access_flags::IBV_ACCESS_REMOTE_READ
                | ibv_access_flags::IBV_ACCESS_LOCAL_WRITE)
                .0;
            let mask = ibv_qp_attr_mask::IBV_QP_STATE
                | ibv_qp_attr_mask::IBV_QP_PKEY_INDEX
                | ibv_qp_attr_mask::IBV_QP_PORT
                | ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS;
            me.modify(&mut attr, mask, "INIT")?;
            Ok(me)
        }
    }

    /// False once an operation's future was dropped before its completion
    /// or an operation failed (the queue pair is then in the error state).
    pub fn usable(&self) -> bool {
        !self.in_flight
    }

    pub fn endpoint(&self) -> Endpoint {
        let l = self.dev.local;
        // SAFETY: the qp is valid while self lives.
        let qpn = unsafe { self.qp.as_ref().qp_num };
        Endpoint { qpn, psn: self.psn, lid: l.lid, gid: l.gid, mtu: l.mtu }
    }

    fn modify(&mut self, attr: &mut ibv_qp_attr, mask: ibv_qp_attr_mask, state: &str) -> Result<()> {
        // SAFETY: attr is fully initialised for the fields `mask` names.
        let rc = unsafe { ibv_modify_qp(self.qp.as_ptr(), attr, mask.0 as i32) };
        if rc != 0 {
            let e = std::io::Error::from_raw_os_error(rc);
            return Err(Error::new(ErrorKind::Unavailable, format!("rdma: queue pair to {state}: {e}")));
        }
        Ok(())
    }

    /// Connects to the peer's queue pair: INIT → RTR → RTS. Both sides must
    /// reach RTR before either sends.
    pub fn connect(&mut self, peer: &Endpoint) -> Result<()> {
        // RoCE and InfiniBand differ in addressing: a GID (always set here,
        // as soft-RoCE needs it) and a LID (0 on RoCE).
        let mtu = peer.mtu.min(self.dev.local.mtu) as ibv_mtu::Type;
        // SAFETY: plain C data, zero-initialised, fields set below.
        unsafe {
            let mut attr: ibv_qp_attr = std::mem::zeroed();
            attr.qp_state = ibv_qp_state::IBV_QPS_RTR;
            attr.path_mtu = mtu;
            attr.dest_qp_num = peer.qpn;
            attr.rq_psn = peer.psn;
            attr.max_dest_rd_atomic = 4;
            attr.min_rnr_timer = 12;
            attr.ah_attr.dlid = peer.lid;
            attr.ah_attr.sl = 0;
            attr.ah_attr.src_path_bits = 0;
            attr.ah_attr.port_num = self.dev.port;
            attr.ah_attr.is_global = 1;
            attr.ah_attr.grh.dgid.raw = peer.gid;
            attr.ah_attr.grh.sgid_index = self.dev.gid_index;
            attr.ah_attr.grh.hop_limit = 64;
            let mask = ibv_qp_attr_mask::IBV_QP_STATE
                | ibv_qp_attr_mask::IBV_QP_AV
                | ibv_qp_attr_mask::IBV_QP_PATH_MTU
                | ibv_qp_attr_mask::IBV_QP_DEST_QPN
                | ibv_qp_attr_mask::IBV_QP_RQ_PSN
                | ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC
                | ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER;
            self.modify(&mut attr, mask, "RTR")?;

            let mut attr: ibv_qp_attr = std::mem::zeroed();
            attr.qp_state = ibv_qp_state::IBV_QPS_RTS;
            attr.sq_psn = self.psn;
            attr.timeout = 14; // 4.096 µs × 2^14 ≈ 67 ms per retry
            attr.retry_cnt = 7;
            attr.rnr_retry = 7;
            attr.max_rd_atomic = 4;
            let mask = ibv_qp_attr_mask::IBV_QP_STATE
                | ibv_qp_attr_mask::IBV_QP_TIMEOUT
                | ibv_qp_attr_mask::IBV_QP_RETRY_CNT
                | ibv_qp_attr_mask::IBV_QP_RNR_RETRY
                | ibv_qp_attr_mask::IBV_QP_SQ_PSN
                | ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC;
            self.modify(&mut attr, mask, "RTS")
        }
    }

    /// RDMA-WRITEs `len` bytes of `local` from `offset` to the peer's
    /// registered memory at `remote_addr` and waits until the peer's NIC
    /// has acknowledged them (they are in the peer's memory).
    pub async fn write(&mut self, local: &Region, offset: usize, len: usize, remote_addr: u64, rkey: u32) -> Result<()> {
        self.post(ibv_wr_opcode::IBV_WR_RDMA_WRITE, local, offset, len, remote_addr, rkey).await
    }

    /// RDMA-READs `len` bytes from the peer's registered memory at
    /// `remote_addr` into `local` at `offset`, and waits until they landed.
    pub async fn read(&mut self, local: &Region, offset: usize, len: usize, remote_addr: u64, rkey: u32) -> Result<()> {
        self.post(ibv_wr_opcode::IBV_WR_RDMA_READ, local, offset, len, remote_addr, rkey).await
    }

    async fn post(
        &mut self,
        opcode: ibv_wr_opcode::Type,
        local: &Region,
        offset: usize,
        len: usize,
        remote_addr: u64,
        rkey: u32,
    ) -> Result<()> {
        if offset + len > local.len() || len > u32::MAX as usize {
            return Err(Error::invalid(format!("rdma: {len} bytes at {offset} exceed the registered buffer")));
        }
        if len == 0 {
            return Ok(());
        }
        let wr_id = self.next_wr;
        self.next_wr += 1;
        let what = if opcode == ibv_wr_opcode::IBV_WR_RDMA_WRITE { "write" } else { "read" };
        // SAFETY: the sge points into a registered region that outlives the
        // operation (we wait for its completion before returning, and the
        // caller holds `local` borrowed until then).
        unsafe {
            let mut sge = ibv_sge { addr: local.addr(offset), length: len as u32, lkey: local.lkey() };
            let mut wr: ibv_send_wr = std::mem::zeroed();
            wr.wr_id = wr_id;
            wr.sg_list = &mut sge;
            wr.num_sge = 1;
            wr.opcode = opcode;
            wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
            wr.wr.rdma.remote_addr = remote_addr;
            wr.wr.rdma.rkey = rkey;
            let mut bad = std::ptr::null_mut();
            let rc = ibv_post_send(self.qp.as_ptr(), &mut wr, &mut bad);
            if rc != 0 {
                let e = std::io::Error::from_raw_os_error(rc);
                return Err(Error::new(ErrorKind::Io, format!("rdma: post {what}: {e}")));
            }
        }
        self.in_flight = true;
        self.cq.wait(wr_id, what).await?;
        self.in_flight = false;
        Ok(())
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: destroyed before its cq (the `cq` field drops after this).
        unsafe {
            ibv_destroy_qp(self.qp.as_ptr());
        }
    }
}
