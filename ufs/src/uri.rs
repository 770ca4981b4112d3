//! UFS URIs: `scheme://authority/root`, parsed and checked without IO.

use std::fmt;

use crate::{Error, Result};

/// The schemes this build can mount, as users write them.
pub const SCHEMES: &[&str] = &[
    "s3",
    "gs",
    "azblob",
    "oss",
    "webhdfs",
    #[cfg(feature = "hdfs")]
    "hdfs",
    "file",
];

/// A parsed UFS URI: `scheme://authority/root`.
///
/// - `scheme` is canonical (`s3a` → `s3`, `gcs` → `gs`).
/// - `authority` is the bucket (s3, gs, oss), the container (azblob),
///   `host:port` (webhdfs, hdfs) or empty (file).
/// - `root` is an absolute path without a trailing `/` (`/` for the top).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UfsUri {
    pub scheme: String,
    pub authority: String,
    pub root: String,
}

impl UfsUri {
    /// Parses and validates `uri`. Errors are `InvalidArgument` and name the
    /// URI without anything that may hold a secret: a `user:password@` part
    /// and a query string or fragment (a SAS token) are hidden.
    ///
    /// A URI with `@` anywhere is refused: userinfo can only be told from a
    /// path reliably when the secret has no `/`, and AWS secrets often do.
    pub fn parse(uri: &str) -> Result<UfsUri> {
        let shown = shown(uri);
        let bad = |why: &str| Error::invalid(format!("{shown}: {why}"));
        if uri.contains('@') {
            return Err(bad("credentials in the URI are not allowed; pass them as mount options (a UFS URI cannot contain '@')"));
        }
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(bad(&format!("not a UFS URI (expected scheme://bucket/path; schemes: {})", SCHEMES.join(", "))));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "s3" | "s3a" => "s3",
            "gs" | "gcs" => "gs",
            "azblob" => "azblob",
            "oss" => "oss",
            "webhdfs" => "webhdfs",
            #[cfg(feature = "hdfs")]
            "hdfs" => "hdfs",
            "file" => "file",
            other => return Err(bad(&format!("unsupported scheme '{other}' (supported: {})", SCHEMES.join(", ")))),
        };
        if rest.contains(['?', '#']) {
            return Err(bad("query strings and fragments are not allowed; pass settings as mount options"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        match scheme {
            "file" => {
                if !(authority.is_empty() || authority == "localhost") {
                    return Err(bad("file URIs must be absolute and local: file:///path"));
                }
            }
            "webhdfs" | "hdfs" => {
                if authority.is_empty() {
                    return Err(bad("missing namenode host (expected webhdfs://host:port/path)"));
                }
                if let Some((_, port)) = authority.rsplit_once(':') {
                    if port.parse::<u16>().is_err() {
                        return Err(bad(&format!("bad port '{port}'")));
                    }
                }
            }
            _ => {
                let what = if scheme == "azblob" { "container" } else { "bucket" };
                if authority.is_empty() {
                    return Err(bad(&format!("missing {what} (expected {scheme}://{what}/path)")));
                }
                if !authority.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
                    return Err(bad(&format!("'{authority}' is not a valid {what} name")));
                }
            }
        }
        let root = normalize_root(path).map_err(|why| bad(&why))?;
        let authority = if scheme == "file" { String::new() } else { authority.to_string() };
        Ok(UfsUri { scheme: scheme.to_string(), authority, root })
    }
}

impl fmt::Display for UfsUri {
    /// Canonical form: `s3://bkt`, `s3://bkt/data`, `file:///tmp/x`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)?;
        if self.root != "/" || self.scheme == "file" {
            f.write_str(&self.root)?;
        }
        Ok(())
    }
}

/// `/a/b/` → `/a/b`; rejects `.`/`..` and empty components.
pub(crate) fn normalize_root(path: &str) -> std::result::Result<String, String> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".into());
    }
    for c in trimmed[1..].split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!("path '{path}' has an empty, '.' or '..' component"));
        }
    }
    Ok(trimmed.to_string())
}

/// A path relative to the mount root: `""` (the root) or `a/b/c` with no
/// empty, `.` or `..` components. Leading and trailing `/` are ignored.
pub(crate) fn check_rel(rel: &str) -> Result<&str> {
    let r = rel.trim_matches('/');
    if r.split('/').any(|c| c == "." || c == "..") || (!r.is_empty() && r.split('/').any(str::is_empty)) {
        return Err(Error::new(curvine_common::ErrorKind::InvalidPath, format!("'{rel}': invalid UFS path")));
    }
    Ok(r)
}

/// `uri` as errors show it: `s3://key:secret@bkt/x` → `s3://***@bkt/x`
/// (everything up to the last `@` is masked, so a secret containing `/` or
/// `@` is too) and `azblob://c/x?sv=…&sig=…` → `azblob://c/x?…` (a query
/// string or fragment is never shown).
fn shown(uri: &str) -> String {
    let (head, rest) = match uri.split_once("://") {
        Some((scheme, rest)) if scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) => {
            (format!("{scheme}://"), rest)
        }
        _ => (String::new(), uri),
    };
    let (masked, rest) = match rest.rfind('@') {
        Some(at) => ("***", &rest[at..]),
        None => ("", rest),
    };
    let rest = match rest.find(['?', '#']) {
        Some(i) => format!("{}{}…", &rest[..i], &rest[i..i + 1]),
        None => rest.to_string(),
    };
    format!("{head}{masked}{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use curvine_common::ErrorKind;

    fn p(s: &str) -> UfsUri {
        UfsUri::parse(s).unwrap()
    }

    #[test]
    fn parses_each_scheme() {
        assert_eq!(p("s3://bkt"), UfsUri { scheme: "s3".into(), authority: "bkt".into(), root: "/".into() });
        assert_eq!(p("s3a://bkt/a/b/").root, "/a/b");
        assert_eq!(p("gcs://b/x").scheme, "gs");
        assert_eq!(p("azblob://cont/data").authority, "cont");
        assert_eq!(p("oss://b/").root, "/");
        assert_eq!(p("webhdfs://nn:9870/user").authority, "nn:9870");
        assert_eq!(p("file:///tmp/x"), UfsUri { scheme: "file".into(), authority: "".into(), root: "/tmp/x".into() });
        assert_eq!(p("file://localhost/tmp").root, "/tmp");
    }

    #[test]
    fn displays_canonically() {
        assert_eq!(p("S3A://bkt/").to_string(), "s3://bkt");
        assert_eq!(p("s3://bkt/a/").to_string(), "s3://bkt/a");
        assert_eq!(p("file:///tmp/x/").to_string(), "file:///tmp/x");
        assert_eq!(p("file:///").to_string(), "file:///");
    }

    #[test]
    fn rejects_bad_uris_naming_them() {
        for (uri, needle) in [
            ("ftp://h/x", "unsupported scheme 'ftp' (supported: s3, gs"),
            ("s3://", "missing bucket"),
            ("s3:///x", "missing bucket"),
            ("azblob:///x", "missing container"),
            ("bucket/x", "not a UFS URI"),
            ("file://tmp/x", "file:///path"),
            ("file://relative", "file:///path"),
            ("s3://b/a/../c", "'..'"),
            ("s3://b/a//c", "empty"),
            ("s3://b/x?versionId=1", "query strings"),
            ("webhdfs:///x", "namenode"),
            ("webhdfs://nn:abc/x", "bad port"),
            ("s3://Bad Bucket/x", "not a valid bucket name"),
        ] {
            let e = UfsUri::parse(uri).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{uri}");
            assert!(e.message().contains(needle), "{uri}: {}", e.message());
            assert!(e.message().starts_with(uri.split('?').next().unwrap()), "{uri}: {}", e.message());
        }
    }

    #[test]
    fn never_echoes_userinfo() {
        for (uri, secret, shown, why) in [
            ("s3://AKIA:sekrit@bkt/x", "sekrit", "s3://***@bkt/x", "credentials in the URI are not allowed"),
            // A secret with '/' (AWS secrets often have one) or '@'.
            ("s3://AKIA:ab/cdSECRET@bkt/x", "SECRET", "s3://***@bkt/x", "credentials in the URI are not allowed"),
            ("s3://AKIA:ab@cdSECRET@bkt/x", "SECRET", "s3://***@bkt/x", "credentials in the URI are not allowed"),
            ("webhdfs://u:pw/SECRET@nn:9870/x", "SECRET", "webhdfs://***@nn:9870/x", "credentials in the URI are not allowed"),
            ("AKIA:ab/SECRET@bkt/x", "SECRET", "***@bkt/x", "credentials in the URI are not allowed"),
            // A SAS token in the query string, or anything in a fragment.
            ("azblob://c/data?sv=2020&sig=SECRET", "SECRET", "azblob://c/data?…", "query strings and fragments"),
            ("s3://bkt/x#SECRET", "SECRET", "s3://bkt/x#…", "query strings and fragments"),
            ("s3://bkt/x?token=SECRET@y", "SECRET", "s3://***@y", "credentials in the URI are not allowed"),
        ] {
            let e = UfsUri::parse(uri).unwrap_err();
            let m = e.message();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{uri}");
            assert!(!m.contains(secret) && !m.contains("sig=") && !m.contains("AKIA"), "{uri}: {m}");
            assert!(m.starts_with(&format!("{shown}: ")), "{uri}: {m}");
            assert!(m.contains(why), "{uri}: {m}");
        }
    }

    #[test]
    fn relative_paths() {
        assert_eq!(check_rel("").unwrap(), "");
        assert_eq!(check_rel("/a/b/").unwrap(), "a/b");
        assert_eq!(check_rel("a/../b").unwrap_err().kind(), ErrorKind::InvalidPath);
        assert_eq!(check_rel("a//b").unwrap_err().kind(), ErrorKind::InvalidPath);
    }
}
