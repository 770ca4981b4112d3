//! Curvine paths: absolute, `/`-separated, normalized (no `.`/`..`/empty
//! components). Validation happens at the edge so the metadata service only
//! sees clean paths.

use crate::error::{Error, ErrorKind, Result};

pub const MAX_NAME_LEN: usize = 255;
pub const MAX_PATH_LEN: usize = 4096;

/// Normalizes `path` into `/a/b` form. Accepts `cv://a/b` and `cv:///a/b`.
pub fn normalize(path: &str) -> Result<String> {
    let p = path.strip_prefix("cv://").map(|r| if r.starts_with('/') { r.to_string() } else { format!("/{r}") });
    let p = p.as_deref().unwrap_or(path);
    if !p.starts_with('/') {
        return Err(Error::new(ErrorKind::InvalidPath, format!("{path}: invalid path: must be absolute")));
    }
    if p.len() > MAX_PATH_LEN {
        return Err(Error::new(ErrorKind::InvalidPath, format!("{path}: invalid path: longer than {MAX_PATH_LEN} bytes")));
    }
    let mut out = String::with_capacity(p.len());
    for c in p.split('/') {
        match c {
            "" | "." => continue,
            ".." => {
                return Err(Error::new(ErrorKind::InvalidPath, format!("{path}: invalid path: '..' is not allowed")))
            }
            c if c.len() > MAX_NAME_LEN => {
                return Err(Error::new(ErrorKind::InvalidPath, format!("{path}: invalid path: name longer than {MAX_NAME_LEN} bytes")))
            }
            c if c.contains('\0') => {
                return Err(Error::new(ErrorKind::InvalidPath, format!("{path}: invalid path: contains NUL")))
            }
            c => {
                out.push('/');
                out.push_str(c);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Components of a normalized path (`/` has none).
pub fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// Splits a normalized path into (parent, name). `/` has no parent.
pub fn split(path: &str) -> Option<(&str, &str)> {
    if path == "/" {
        return None;
    }
    let i = path.rfind('/')?;
    let parent = if i == 0 { "/" } else { &path[..i] };
    Some((parent, &path[i + 1..]))
}

/// Joins a normalized directory path and a child name.
pub fn join(dir: &str, name: &str) -> String {
    if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") }
}

/// Whether `path` is `ancestor` or lies below it.
pub fn is_within(path: &str, ancestor: &str) -> bool {
    ancestor == "/" || path == ancestor || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("//a//b/./c/").unwrap(), "/a/b/c");
        assert_eq!(normalize("cv://data/x").unwrap(), "/data/x");
        assert_eq!(normalize("cv:///data/x").unwrap(), "/data/x");
        assert_eq!(normalize("a/b").unwrap_err().kind(), ErrorKind::InvalidPath);
        assert_eq!(normalize("/a/../b").unwrap_err().kind(), ErrorKind::InvalidPath);
        assert_eq!(normalize(&format!("/{}", "x".repeat(256))).unwrap_err().kind(), ErrorKind::InvalidPath);
    }

    #[test]
    fn splits_and_joins() {
        assert_eq!(split("/a"), Some(("/", "a")));
        assert_eq!(split("/a/b"), Some(("/a", "b")));
        assert_eq!(split("/"), None);
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
        assert!(is_within("/a/b", "/a"));
        assert!(!is_within("/ab", "/a"));
        assert!(is_within("/a", "/a"));
    }
}
