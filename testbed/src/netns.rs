//! A small virtual network made by the test itself: one Linux bridge in the
//! test's own namespace and N network namespaces ("hosts"), each joined to
//! it by a veth pair and given an address of a private /24. Processes run
//! in a host with `ip netns exec`; the test process reaches every host
//! through the bridge. `cut(a, b)` partitions two hosts from each other
//! (blackhole routes both ways: packets vanish, as behind a failed switch,
//! while each still reaches everyone else), `heal` undoes it.
//!
//! Needs root and iproute2 (`ip`), as the test machines have. Names carry
//! the test process's pid and a counter, so parallel tests never share a
//! bridge or host (the subnet is random and checked free); Drop removes
//! everything (kill the processes first: a namespace lives until its last
//! process ends), and `create` first removes what a test process that no
//! longer exists left behind (killed before its Drop ran).

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

pub struct Net {
    tag: String,
    /// The /24 as "10.x.y".
    prefix: String,
    hosts: usize,
    cuts: Mutex<BTreeSet<(usize, usize)>>,
}

/// The `ip` binary (root's PATH may lack /usr/sbin under some runners).
pub fn ip_bin() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].into_iter().find(|p| std::path::Path::new(p).exists()).unwrap_or("ip")
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new(ip_bin()).args(args).output().with_context(|| format!("cannot run `ip {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Random bits from the OS (no extra crate).
fn random_tag() -> Result<u32> {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))?;
    Ok(u32::from_le_bytes(b) & 0xff_ffff)
}

impl Net {
    /// Creates `hosts` namespaces on a new bridge. A clear error (not a
    /// skip) where the machine cannot: these machines can.
    pub fn create(hosts: usize) -> Result<Net> {
        anyhow::ensure!(hosts > 0 && hosts < 250, "1..250 hosts");
        sweep_leftovers();
        let t = random_tag()?;
        // 10.(100..=227).y.0/24: away from the usual 10.0.x and 10.1.x.
        let prefix = format!("10.{}.{}", 100 + ((t >> 16) & 0x7f), (t >> 8) & 0xff);
        // pid (at most 7 hex digits), "x", a per-process counter: the
        // longest interface name, "cvh" + tag + "h" + host number, fits in 15.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 16;
        let tag = format!("{:x}x{n:x}", std::process::id());
        let net = Net { tag, prefix, hosts: 0, cuts: Mutex::new(BTreeSet::new()) };
        let existing = Command::new(ip_bin()).args(["-o", "-4", "addr"]).output().context("cannot run `ip addr` (iproute2 missing?)")?;
        if String::from_utf8_lossy(&existing.stdout).contains(&format!(" {}.", net.prefix)) {
            bail!("subnet {}.0/24 is in use on this machine; run again", net.prefix);
        }
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"]).context("creating a bridge for the test's network (needs root)")?;
        let mut net = net;
        ip(&["addr", "add", &format!("{}.1/24", net.prefix), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..hosts {
            let (ns, veth) = (net.ns(i), format!("cvh{}h{i}", net.tag));
            ip(&["netns", "add", &ns])?;
            net.hosts = i + 1;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &veth, "master", &br, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", net.ip(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("cvb{}", self.tag)
    }

    /// Host `i`'s namespace name (for `ip netns exec`).
    pub fn ns(&self, i: usize) -> String {
        format!("cvns{}-{i}", self.tag)
    }

    /// Host `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, i + 2)
    }

    /// The command prefix that runs a program in host `i`.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec!["netns".into(), "exec".into(), self.ns(i)]
    }

    /// Partitions hosts `a` and `b` from each other (both directions).
    pub fn cut(&self, a: usize, b: usize) -> Result<()> {
        let key = (a.min(b), a.max(b));
        if !self.cuts.lock().unwrap().insert(key) {
            return Ok(());
        }
        ip(&["-n", &self.ns(a), "route", "add", "blackhole", &format!("{}/32", self.ip(b))])?;
        ip(&["-n", &self.ns(b), "route", "add", "blackhole", &format!("{}/32", self.ip(a))])
    }

    /// Undoes `cut(a, b)`.
    pub fn heal(&self, a: usize, b: usize) -> Result<()> {
        let key = (a.min(b), a.max(b));
        if !self.cuts.lock().unwrap().remove(&key) {
            return Ok(());
        }
        ip(&["-n", &self.ns(a), "route", "del", "blackhole", &format!("{}/32", self.ip(b))])?;
        ip(&["-n", &self.ns(b), "route", "del", "blackhole", &format!("{}/32", self.ip(a))])
    }
}

/// The pid a name made by `Net` carries (`cvb<pid>x<n>`, `cvns<pid>x<n>-<i>`).
fn owner(name: &str, prefix: &str) -> Option<u32> {
    let tag = name.strip_prefix(prefix)?;
    u32::from_str_radix(tag.split('x').next()?, 16).ok()
}

/// Removes namespaces and bridges whose test process is gone.
fn sweep_leftovers() {
    let gone = |pid: u32| !std::path::Path::new(&format!("/proc/{pid}")).exists();
    if let Ok(out) = Command::new(ip_bin()).args(["netns", "list"]).output() {
        for ns in String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()) {
            if owner(ns, "cvns").is_some_and(gone) {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
    if let Ok(out) = Command::new(ip_bin()).args(["-o", "link", "show", "type", "bridge"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "7: cvb1a2bx0: <BROADCAST,…"
            let Some(name) = line.split(": ").nth(1) else { continue };
            if owner(name, "cvb").is_some_and(gone) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            // The veth pair goes with its namespace.
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_carry_their_owner_s_pid() {
        assert_eq!(super::owner("cvb1a2bx0", "cvb"), Some(0x1a2b));
        assert_eq!(super::owner("cvns3fx2-1", "cvns"), Some(0x3f));
        assert_eq!(super::owner("cvbother", "cvb"), None);
        assert_eq!(super::owner("eth0", "cvb"), None);
    }
}
