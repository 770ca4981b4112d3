//! curvine-ufs: the under file systems Curvine caches (S3, GCS, Azure Blob,
//! OSS, WebHDFS, local directories) behind one small API on OpenDAL.
//!
//! A [`Ufs`] is built from a URI (`s3://bucket/prefix`) and options without
//! IO; [`Ufs::check`] proves reachability, credentials and bucket existence.
//! Paths given to its methods are relative to the URI's root. Errors are
//! Curvine errors that name the UFS path and never contain secrets; see
//! `error.rs` for how OpenDAL's kinds map.
//!
//! To ensure correctness:
//! - An entry's `etag` is the store's ETag when it has one, else (local
//!   files, WebHDFS) a synthetic `len-mtime` tag; both change when the object
//!   is rewritten. `read` with an etag fails with `Unavailable` ("changed in
//!   the UFS") instead of returning bytes of another version — with the
//!   store's `If-Match` where supported, else by a stat before reading.
//! - `stat` prefers a file over a directory of the same name (S3 can have
//!   both `a` and `a/x`).
//! - `list` of a missing directory is empty (object stores cannot tell).
//! - A write replaces the object only at `close`: an aborted, dropped or
//!   failed write leaves the previous content (object stores upload in
//!   parts; file:// and webhdfs:// stage in [`Ufs::staging_dir`], hidden
//!   from `list`, and rename). hdfs writes in place ([`Ufs::writes_in_place`]):
//!   there a failed write deletes the partial object.

mod error;
mod io;
pub mod options;
pub mod testing;
mod ufs;
mod uri;

pub use curvine_common::{Error, ErrorKind, Result};
pub use io::{UfsLister, UfsRead, UfsWriter};
pub use options::{env_options, redact};
pub use ufs::{Ufs, UfsEntry};
pub use uri::{UfsUri, SCHEMES};

/// Process-wide setup that OpenDAL and rustls need before the first `Ufs`:
/// rustls's crypto provider (we build rustls with `ring` and without a
/// default provider, so one must be installed; it is a process global by
/// rustls's design), OpenDAL's service registry, and OpenDAL's default HTTP
/// transport (used by paths that do not take our per-operator client, e.g. the
/// STS calls of S3 assume-role). All three are first-caller-wins globals of
/// those crates, hence one `Once` here. `Ufs::new` calls it.
pub fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        // Err means another provider is installed already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        opendal::init_default_registry();
        opendal_http_transport_reqwest::install_default();
    });
}

#[cfg(test)]
mod send_tests {
    use super::*;

    fn send<T: Send>(_: &T) {}

    /// Callers spawn these on tokio: handles and futures must be `Send`.
    #[allow(dead_code, unreachable_code, clippy::diverging_sub_expression)]
    async fn handles_and_futures_are_send(u: Ufs, l: UfsLister, r: UfsRead, w: UfsWriter) {
        send(&u);
        send(&l);
        send(&r);
        send(&w);
        send(&u.check());
        send(&u.stat(""));
        send(&u.list(""));
        send(&u.read("", 0, 0, None));
        send(&u.writer(""));
        send(&u.delete(""));
        let (mut l, mut r, mut w) = (l, r, w);
        send(&l.next_page(1));
        send(&r.next());
        send(&w.write(bytes::Bytes::new()));
        send(&w.close());
    }
}
