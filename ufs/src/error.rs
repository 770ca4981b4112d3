//! OpenDAL errors → Curvine errors that name the UFS path, say what to do,
//! and never carry secrets.
//!
//! | OpenDAL | Curvine |
//! |---|---|
//! | NotFound | NotFound |
//! | PermissionDenied | PermissionDenied ("check the credentials") |
//! | ConfigInvalid | Config |
//! | RateLimited | Unavailable (temporary) |
//! | ConditionNotMatch | Unavailable (temporary): the object changed since its etag was recorded; the caller re-stats and retries |
//! | RangeNotSatisfied | Io: the object is shorter than the range asked for |
//! | IsADirectory / NotADirectory / AlreadyExists | the same kind |
//! | Unexpected from a connection failure (refused, DNS, connect timeout, reset) or marked temporary | Unavailable (temporary) |
//! | anything else | Io with OpenDAL's message |

use std::collections::BTreeMap;

use opendal::ErrorKind as OK;

use crate::options::scrub;
use crate::{Error, ErrorKind};

/// Maps `e`, raised while working on `what` (e.g. `s3://bkt/a/b`).
pub(crate) fn map(e: &opendal::Error, what: &str, opts: &BTreeMap<String, String>) -> Error {
    let detail = scrub(&describe(e), opts);
    let (kind, msg) = match e.kind() {
        // S3 reports a missing bucket as a config error.
        _ if detail.contains("NoSuchBucket") || detail.contains("ContainerNotFound") => {
            (ErrorKind::NotFound, format!("{what}: bucket does not exist ({detail})"))
        }
        // OpenDAL's signers found no credentials anywhere (options, env, profile, metadata service).
        _ if detail.contains("load signing credential") => (
            ErrorKind::Config,
            format!(
                "{what}: no credentials found: give {} as mount options (or in the environment of `cv mount`), or anonymous=true for a public bucket",
                credential_keys(what)
            ),
        ),
        OK::NotFound => (ErrorKind::NotFound, format!("{what}: {}", ErrorKind::NotFound.phrase())),
        OK::PermissionDenied => (
            ErrorKind::PermissionDenied,
            format!("{what}: access denied (check the credentials, {}, and the bucket's permissions): {detail}", credential_keys(what)),
        ),
        OK::ConfigInvalid => (ErrorKind::Config, format!("{what}: bad configuration: {detail}")),
        OK::RateLimited => (ErrorKind::Unavailable, format!("{what}: rate limited by the store: {detail}")),
        OK::ConditionNotMatch => (
            ErrorKind::Unavailable,
            format!("{what}: changed in the UFS since it was cached (etag no longer matches); re-read its metadata and retry"),
        ),
        OK::RangeNotSatisfied => {
            (ErrorKind::Io, format!("{what}: object is shorter than the requested range (changed in the UFS?): {detail}"))
        }
        OK::IsADirectory => (ErrorKind::IsADirectory, format!("{what}: {}", ErrorKind::IsADirectory.phrase())),
        _ if is_not_dir(e) => (ErrorKind::NotADirectory, format!("{what}: {}", ErrorKind::NotADirectory.phrase())),
        OK::AlreadyExists => (ErrorKind::AlreadyExists, format!("{what}: {}", ErrorKind::AlreadyExists.phrase())),
        OK::Unsupported => (ErrorKind::InvalidArgument, format!("{what}: not supported by this store: {detail}")),
        _ => match connection_failure(e) {
            Some(why) => (ErrorKind::Unavailable, format!("{what}: cannot reach the store: {why}")),
            None if e.is_temporary() => (ErrorKind::Unavailable, format!("{what}: temporary store error: {detail}")),
            None => (ErrorKind::Io, format!("{what}: {detail}")),
        },
    };
    Error::new(kind, msg)
}

/// The options that hold credentials for the scheme of `what`, for hints.
fn credential_keys(what: &str) -> &'static str {
    match what.split("://").next().unwrap_or("") {
        "s3" => "access_key_id/secret_access_key/session_token",
        "gs" => "credential/credential_path/token",
        "azblob" => "account_name/account_key/sas_token",
        "oss" => "access_key_id/access_key_secret",
        "webhdfs" => "user_name/delegation",
        _ => "the store's credentials",
    }
}

/// Whether `e` says a path component is not a directory (OpenDAL's fs
/// reports ENOTDIR as `Unexpected`).
pub(crate) fn is_not_dir(e: &opendal::Error) -> bool {
    if e.kind() == OK::NotADirectory {
        return true;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if s.downcast_ref::<std::io::Error>().and_then(|io| io.raw_os_error()) == Some(libc::ENOTDIR) {
            return true;
        }
        src = s.source();
    }
    false
}

/// OpenDAL's message plus its source chain, without the request URL (which
/// may carry a SAS token) and without OpenDAL's `Kind (status) at op` prefix.
fn describe(e: &opendal::Error) -> String {
    let mut out = e.message().to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let text = strip_urls(&s.to_string());
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

/// Drops query strings from any URL in `s`.
fn strip_urls(s: &str) -> String {
    s.split(' ')
        .map(|w| if w.contains("://") { w.split('?').next().unwrap_or(w) } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A short reason when `e` comes from failing to connect (or losing the
/// connection) rather than from the store answering.
fn connection_failure(e: &opendal::Error) -> Option<String> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut connect = false;
    let mut reason = None;
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<reqwest::Error>() {
            connect |= r.is_connect() || r.is_timeout();
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted | K::TimedOut | K::NotConnected | K::BrokenPipe
            ) {
                connect = true;
                reason = Some(io.to_string());
            }
        }
        let text = s.to_string().to_ascii_lowercase();
        if text.contains("dns error") || text.contains("failed to lookup address") {
            connect = true;
            reason = Some(s.to_string());
        }
        src = s.source();
    }
    connect.then(|| reason.unwrap_or_else(|| "connection failed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_and_messages_name_the_path() {
        let o = BTreeMap::new();
        let cases = [
            (OK::NotFound, ErrorKind::NotFound),
            (OK::PermissionDenied, ErrorKind::PermissionDenied),
            (OK::ConfigInvalid, ErrorKind::Config),
            (OK::RateLimited, ErrorKind::Unavailable),
            (OK::ConditionNotMatch, ErrorKind::Unavailable),
            (OK::Unexpected, ErrorKind::Io),
        ];
        for (from, to) in cases {
            let e = map(&opendal::Error::new(from, "boom"), "s3://b/k", &o);
            assert_eq!(e.kind(), to, "{from:?}");
            assert!(e.message().starts_with("s3://b/k: "), "{}", e.message());
        }
        assert!(map(&opendal::Error::new(OK::RateLimited, "x"), "p", &o).is_temporary());
        let t = opendal::Error::new(OK::Unexpected, "x").set_temporary();
        assert_eq!(map(&t, "p", &o).kind(), ErrorKind::Unavailable);
    }

    #[test]
    fn secrets_and_query_strings_are_removed() {
        let o: BTreeMap<String, String> = [("sas_token".to_string(), "sv=2020&sig=abcdef".to_string())].into();
        let e = opendal::Error::new(OK::Unexpected, "failed for sv=2020&sig=abcdef")
            .set_source(std::io::Error::other("GET https://a.blob.core.windows.net/c/k?sv=2020&sig=zzz failed"));
        let m = map(&e, "azblob://c/k", &o);
        assert!(!m.message().contains("abcdef") && !m.message().contains("zzz"), "{}", m.message());
    }

    #[test]
    fn connection_refused_is_unavailable() {
        let e = opendal::Error::new(OK::Unexpected, "send http request")
            .set_source(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let m = map(&e, "s3://b", &BTreeMap::new());
        assert_eq!(m.kind(), ErrorKind::Unavailable);
        assert!(m.message().contains("cannot reach"), "{}", m.message());
    }
}
