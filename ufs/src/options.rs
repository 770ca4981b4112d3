//! Mount options: validation against each service's OpenDAL config keys,
//! friendly aliases, Curvine's own tuning keys, redaction of secrets, and
//! credentials picked up from the mounting user's environment.
//!
//! Keys accepted for a scheme are
//! - the OpenDAL config keys of its service (`S3Config`, `GcsConfig`, …),
//!   except the ones the URI sets (`bucket`, `container`, `root`, …);
//! - the aliases in [`ALIASES`] (e.g. s3 `secret_key` → `secret_access_key`);
//! - Curvine's keys for every scheme: `read_chunk` (bytes per ranged GET of a
//!   large read, default 16MiB), `read_concurrency` (ranged GETs in flight,
//!   default 4), `write_chunk` (multipart part size, default 8MiB, ≥ 5MiB on
//!   S3), `write_concurrency` (parts in flight, default 4), `list_page`
//!   (entries per list request, default 1000).
//!
//! `file://` and `webhdfs://` stage writes in OpenDAL's `atomic_write_dir`
//! and rename them into place on close, so a failed or aborted overwrite
//! leaves the previous object intact. Unless the option is given it is
//! [`STAGING_DIR`] inside the mount root (same file system, so the rename
//! works); `file://` takes an absolute directory, `webhdfs://` one relative
//! to the root. A staging directory inside the root is hidden from listings
//! and refused as a path.

use std::collections::{BTreeMap, BTreeSet};

use curvine_common::size::ByteSize;
use opendal::services;

use crate::uri::{normalize_root, UfsUri};
use crate::{Error, ErrorKind, Result};

/// Friendly names → OpenDAL keys, per scheme. The AWS/Azure/Google spellings
/// are the ones users copy from other tools.
pub const ALIASES: &[(&str, &str, &str)] = &[
    ("s3", "access_key", "access_key_id"),
    ("s3", "aws_access_key_id", "access_key_id"),
    ("s3", "secret_key", "secret_access_key"),
    ("s3", "aws_secret_access_key", "secret_access_key"),
    ("s3", "aws_session_token", "session_token"),
    ("s3", "aws_region", "region"),
    ("s3", "endpoint_url", "endpoint"),
    ("s3", "aws_endpoint_url", "endpoint"),
    ("s3", "virtual_host_style", "enable_virtual_host_style"),
    ("s3", "anonymous", "skip_signature"),
    ("gs", "credentials_file", "credential_path"),
    ("gs", "google_application_credentials", "credential_path"),
    ("gs", "service_account_key", "credential"),
    ("gs", "anonymous", "skip_signature"),
    ("azblob", "account", "account_name"),
    ("azblob", "azure_storage_account", "account_name"),
    ("azblob", "access_key", "account_key"),
    ("azblob", "azure_storage_key", "account_key"),
    ("azblob", "sas", "sas_token"),
    ("azblob", "anonymous", "skip_signature"),
    ("oss", "secret_access_key", "access_key_secret"),
    ("oss", "session_token", "security_token"),
    ("oss", "anonymous", "skip_signature"),
    ("webhdfs", "user", "user_name"),
];

/// Keys set from the URI, or deprecated in OpenDAL: not accepted as options.
const NOT_OPTIONS: &[&str] = &["root", "bucket", "container", "name_node", "enable_versioning", "allow_anonymous"];

const CURVINE_KEYS: &[&str] = &["list_page", "read_chunk", "read_concurrency", "write_chunk", "write_concurrency"];

/// Where `file://` and `webhdfs://` stage writes unless `atomic_write_dir`
/// is given: this directory in the mount root.
pub const STAGING_DIR: &str = ".curvine-tmp";

/// What `Ufs::new` needs from the options after validation.
#[derive(Debug)]
pub(crate) struct Settings {
    /// OpenDAL config, canonical keys, including the URI's bucket/root.
    pub opendal: BTreeMap<String, String>,
    /// The staging directory relative to the root (`.curvine-tmp`), when
    /// writes are staged inside the root: hidden from listings, refused as
    /// a path.
    pub staging: Option<String>,
    /// Whether writes go to the object itself (hdfs; file:// whose staging
    /// directory cannot be created): only then has a failed write touched
    /// the object, and an abort that OpenDAL cannot do must delete it.
    pub writes_in_place: bool,
    pub read_chunk: usize,
    pub read_concurrency: usize,
    pub write_chunk: usize,
    pub write_concurrency: usize,
    pub list_page: usize,
}

/// The OpenDAL keys of `C`, read from its serde form so they follow the
/// OpenDAL version instead of a copied list.
fn config_keys<C: serde::Serialize + Default>() -> Vec<String> {
    match serde_json::to_value(C::default()) {
        Ok(serde_json::Value::Object(m)) => m.into_iter().map(|(k, _)| k).collect(),
        _ => Vec::new(),
    }
}

fn opendal_keys(scheme: &str) -> Vec<String> {
    let keys = match scheme {
        "s3" => config_keys::<services::S3Config>(),
        "gs" => config_keys::<services::GcsConfig>(),
        "azblob" => config_keys::<services::AzblobConfig>(),
        "oss" => config_keys::<services::OssConfig>(),
        "webhdfs" => config_keys::<services::WebhdfsConfig>(),
        #[cfg(feature = "hdfs")]
        "hdfs" => config_keys::<services::HdfsNativeConfig>(),
        "file" => config_keys::<services::FsConfig>(),
        _ => Vec::new(),
    };
    keys.into_iter().filter(|k| !NOT_OPTIONS.contains(&k.as_str())).collect()
}

/// Every key `Ufs::new` accepts for `scheme`, sorted (for error messages and docs).
pub fn valid_keys(scheme: &str) -> Vec<String> {
    let mut keys: BTreeSet<String> = opendal_keys(scheme).into_iter().collect();
    keys.extend(ALIASES.iter().filter(|a| a.0 == scheme).map(|a| a.1.to_string()));
    keys.extend(CURVINE_KEYS.iter().map(|k| k.to_string()));
    keys.into_iter().collect()
}

/// `key` with an alias resolved to its OpenDAL name.
fn canonical<'a>(scheme: &str, key: &'a str) -> &'a str {
    ALIASES.iter().find(|a| a.0 == scheme && a.1 == key).map(|a| a.2).unwrap_or(key)
}

/// Checks every key, resolves aliases, applies defaults and the URI.
/// `shown` is the URI for messages.
pub(crate) fn resolve(uri: &UfsUri, options: &BTreeMap<String, String>) -> Result<Settings> {
    let shown = uri.to_string();
    let known = opendal_keys(&uri.scheme);
    let mut opendal = BTreeMap::new();
    let mut s = Settings {
        opendal: BTreeMap::new(),
        staging: None,
        writes_in_place: uri.scheme == "hdfs",
        read_chunk: 16 << 20,
        read_concurrency: 4,
        write_chunk: 8 << 20,
        write_concurrency: 4,
        list_page: 1000,
    };
    for (key, value) in options {
        let k = canonical(&uri.scheme, key);
        let bad_value = |why: &str| Error::invalid(format!("{shown}: option {key}: {why}"));
        match k {
            "read_chunk" | "write_chunk" => {
                let n = value.parse::<ByteSize>().map_err(|e| bad_value(&e))?.0;
                if !(64 << 10..=1 << 30).contains(&n) {
                    return Err(bad_value("must be between 64KiB and 1GiB"));
                }
                *(if k == "read_chunk" { &mut s.read_chunk } else { &mut s.write_chunk }) = n as usize;
            }
            "read_concurrency" | "write_concurrency" => {
                let n = value.parse::<usize>().ok().filter(|n| (1..=64).contains(n));
                let n = n.ok_or_else(|| bad_value("must be a number from 1 to 64"))?;
                *(if k == "read_concurrency" { &mut s.read_concurrency } else { &mut s.write_concurrency }) = n;
            }
            "list_page" => {
                let n = value.parse::<usize>().ok().filter(|n| (1..=10_000).contains(n));
                s.list_page = n.ok_or_else(|| bad_value("must be a number from 1 to 10000"))?;
            }
            _ if known.iter().any(|x| x == k) => {
                if opendal.insert(k.to_string(), value.clone()).is_some() {
                    return Err(Error::invalid(format!("{shown}: option {k} is given twice (directly and as an alias)")));
                }
            }
            _ if NOT_OPTIONS.contains(&k) => {
                return Err(Error::invalid(format!("{shown}: option {key} is not allowed: it comes from the URI")));
            }
            _ => {
                return Err(Error::invalid(format!(
                    "{shown}: unknown option '{key}' for {}:// (valid: {})",
                    uri.scheme,
                    valid_keys(&uri.scheme).join(", ")
                )))
            }
        }
    }
    if uri.scheme == "s3" && s.write_chunk < 5 << 20 {
        return Err(Error::invalid(format!("{shown}: option write_chunk: S3 parts must be at least 5MiB")));
    }
    apply_uri_and_defaults(uri, &mut opendal);
    s.staging = staging(uri, &mut opendal).map_err(|why| Error::invalid(format!("{shown}: option atomic_write_dir: {why}")))?;
    s.opendal = opendal;
    Ok(s)
}

/// Sets OpenDAL's `atomic_write_dir` for the schemes that write in place
/// without one (file) or cannot write more than one chunk without one
/// (webhdfs), and returns the staging directory relative to the root when it
/// lies inside the root.
fn staging(uri: &UfsUri, m: &mut BTreeMap<String, String>) -> std::result::Result<Option<String>, String> {
    let given = m.get("atomic_write_dir").cloned();
    match uri.scheme.as_str() {
        "file" => {
            let root = uri.root.trim_end_matches('/');
            let dir = match given {
                None => format!("{root}/{STAGING_DIR}"),
                Some(d) if d.starts_with('/') => normalize_root(&d)?,
                Some(_) => return Err("must be an absolute directory on the file system of the root".into()),
            };
            let rel = if root.is_empty() { dir.strip_prefix('/') } else { dir.strip_prefix(root).and_then(|r| r.strip_prefix('/')) };
            if dir == uri.root {
                return Err("must not be the root itself".into());
            }
            m.insert("atomic_write_dir".into(), dir.clone());
            Ok(rel.map(str::to_string))
        }
        "webhdfs" => {
            // OpenDAL appends block ids to it and resolves it under the root.
            let dir = given.unwrap_or_else(|| STAGING_DIR.to_string());
            if dir.starts_with('/') {
                return Err("must be relative to the root (e.g. .curvine-tmp)".into());
            }
            let rel = normalize_root(&format!("/{dir}"))?;
            if rel == "/" {
                return Err("must not be the root itself".into());
            }
            m.insert("atomic_write_dir".into(), format!("{}/", &rel[1..]));
            Ok(Some(rel[1..].to_string()))
        }
        _ => Ok(None),
    }
}

fn apply_uri_and_defaults(uri: &UfsUri, m: &mut BTreeMap<String, String>) {
    m.insert("root".into(), uri.root.clone());
    match uri.scheme.as_str() {
        "s3" => {
            m.insert("bucket".into(), uri.authority.clone());
            // S3-compatible stores (MinIO, moto, Ceph) ignore the region but
            // SigV4 needs one; OpenDAL would refuse to build without it.
            if m.contains_key("endpoint") && !m.contains_key("region") {
                let env = std::env::var("AWS_REGION").or_else(|_| std::env::var("AWS_DEFAULT_REGION"));
                m.insert("region".into(), env.unwrap_or_else(|_| "us-east-1".into()));
            }
            // Path-style addressing is OpenDAL's default (enable_virtual_host_style
            // = false), which is what custom endpoints need.
        }
        "gs" | "oss" => {
            m.insert("bucket".into(), uri.authority.clone());
        }
        "azblob" => {
            m.insert("container".into(), uri.authority.clone());
            if !m.contains_key("endpoint") {
                if let Some(account) = m.get("account_name").cloned() {
                    m.insert("endpoint".into(), format!("https://{account}.blob.core.windows.net"));
                }
            }
        }
        "webhdfs" if !m.contains_key("endpoint") => {
            let host = if uri.authority.contains(':') { uri.authority.clone() } else { format!("{}:9870", uri.authority) };
            m.insert("endpoint".into(), format!("http://{host}"));
        }
        "hdfs" => {
            m.insert("name_node".into(), format!("hdfs://{}", uri.authority));
        }
        _ => {}
    }
}

/// Whether the value of option `key` must not be shown: any `_`-separated
/// part is secret/token/password/credential/sas/sig/delegation/private, or
/// the key ends in `key` (account_key, access_key, customer_key). Names of
/// identities (`access_key_id`, `kms_key_id`) and file paths
/// (`credential_path`, `oidc_token_file`) are shown: they are not secrets and
/// help debugging.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    let parts: Vec<&str> = k.split(['_', '-', '.']).collect();
    let last = parts.last().copied().unwrap_or("");
    if matches!(last, "id" | "path" | "file") {
        return false;
    }
    last == "key"
        || parts.iter().any(|p| {
            matches!(
                *p,
                "secret" | "token" | "password" | "passwd" | "credential" | "credentials" | "sas" | "sig" | "delegation" | "private"
            )
        })
}

/// A copy of `options` with secret values replaced by `****` (see
/// [`is_secret`]). Use it whenever options are shown or logged.
pub fn redact(options: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    options
        .iter()
        .map(|(k, v)| (k.clone(), if is_secret(k) { "****".to_string() } else { v.clone() }))
        .collect()
}

/// Environment variables read for each scheme: (variable, option key,
/// credential group). A group is taken whole or not at all: if `given` has any
/// key of a group, no variable of that group is added, so a user's explicit
/// key is never paired with someone else's secret from the environment.
const ENV: &[(&str, &str, &str, &str)] = &[
    ("s3", "AWS_ACCESS_KEY_ID", "access_key_id", "keys"),
    ("s3", "AWS_SECRET_ACCESS_KEY", "secret_access_key", "keys"),
    ("s3", "AWS_SESSION_TOKEN", "session_token", "keys"),
    ("s3", "AWS_REGION", "region", "region"),
    ("s3", "AWS_DEFAULT_REGION", "region", "region"),
    ("s3", "AWS_ENDPOINT_URL_S3", "endpoint", "endpoint"),
    ("s3", "AWS_ENDPOINT_URL", "endpoint", "endpoint"),
    ("gs", "GOOGLE_APPLICATION_CREDENTIALS", "credential", "keys"),
    ("azblob", "AZURE_STORAGE_ACCOUNT", "account_name", "account"),
    ("azblob", "AZURE_STORAGE_ACCOUNT_NAME", "account_name", "account"),
    ("azblob", "AZURE_STORAGE_KEY", "account_key", "keys"),
    ("azblob", "AZURE_STORAGE_ACCOUNT_KEY", "account_key", "keys"),
    ("azblob", "AZURE_STORAGE_SAS_TOKEN", "sas_token", "keys"),
    ("oss", "OSS_ACCESS_KEY_ID", "access_key_id", "keys"),
    ("oss", "OSS_ACCESS_KEY_SECRET", "access_key_secret", "keys"),
    ("oss", "OSS_SECURITY_TOKEN", "security_token", "keys"),
    ("oss", "OSS_SESSION_TOKEN", "security_token", "keys"),
    ("oss", "OSS_ENDPOINT", "endpoint", "endpoint"),
    ("webhdfs", "HADOOP_USER_NAME", "user_name", "user"),
];

/// Credentials (and region/endpoint) from the caller's environment for
/// `scheme`, as option keys `Ufs::new` accepts, leaving out keys (and
/// credential groups) already in `given`. `cv mount` calls this: the servers
/// that use the mount run in other processes with other environments.
///
/// `GOOGLE_APPLICATION_CREDENTIALS` is read here and passed as the `credential`
/// option (base64 of the file), since the servers may not have the file.
pub fn env_options(scheme: &str, given: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env_options_from(scheme, given, |v| std::env::var(v).ok().filter(|s| !s.is_empty()))
}

pub(crate) fn env_options_from(
    scheme: &str,
    given: &BTreeMap<String, String>,
    var: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    let scheme = UfsUri::parse(&format!("{scheme}://x")).map(|u| u.scheme).unwrap_or_default();
    let given: BTreeSet<&str> = given.keys().map(|k| canonical(&scheme, k)).collect();
    let taken_group = |group: &str| {
        ENV.iter().any(|e| e.0 == scheme && e.3 == group && given.contains(e.2))
    };
    let mut out = BTreeMap::new();
    for &(s, name, key, group) in ENV {
        if s != scheme || out.contains_key(key) || taken_group(group) {
            continue;
        }
        let Some(value) = var(name) else { continue };
        let value = if name == "GOOGLE_APPLICATION_CREDENTIALS" {
            match std::fs::read(&value) {
                Ok(bytes) => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                }
                Err(e) => {
                    tracing::warn!(path = %value, error = %e, "cannot read GOOGLE_APPLICATION_CREDENTIALS; not passing it");
                    continue;
                }
            }
        } else {
            value
        };
        out.insert(key.to_string(), value);
    }
    out
}

/// Replaces every secret option value found in `msg` by `****`: a last line
/// of defence for messages built from service errors.
pub(crate) fn scrub(msg: &str, opendal: &BTreeMap<String, String>) -> String {
    let mut out = msg.to_string();
    for (k, v) in opendal {
        if is_secret(k) && v.len() >= 4 {
            out = out.replace(v.as_str(), "****");
        }
    }
    out
}

impl Settings {
    /// The error for a config OpenDAL refused at build time.
    pub(crate) fn config_error(uri: &UfsUri, e: &opendal::Error) -> Error {
        let mut msg = format!("{uri}: bad configuration: {}", e.message());
        if let Some(src) = std::error::Error::source(e) {
            msg.push_str(&format!(": {src}"));
        }
        if e.message().contains("endpoint is empty") {
            msg = format!("{uri}: endpoint is missing: set the endpoint option (e.g. endpoint=https://…)");
        }
        if e.message().contains("region is missing") {
            msg = format!("{uri}: region is missing: set the region option (e.g. region=us-east-1) or AWS_REGION");
        }
        Error::new(ErrorKind::Config, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn uri(s: &str) -> UfsUri {
        UfsUri::parse(s).unwrap()
    }

    #[test]
    fn unknown_key_is_named_with_the_valid_ones() {
        let e = resolve(&uri("s3://b"), &opts(&[("acess_key_id", "x")])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().starts_with("s3://b: unknown option 'acess_key_id' for s3://"), "{}", e.message());
        for k in ["access_key_id", "secret_access_key", "endpoint", "region", "read_chunk", "secret_key"] {
            assert!(e.message().contains(k), "{k} missing in {}", e.message());
        }
    }

    #[test]
    fn aliases_resolve_and_uri_sets_bucket_and_root() {
        let s = resolve(&uri("s3://b/data"), &opts(&[("access_key", "A"), ("secret_key", "S"), ("endpoint", "http://h:1")])).unwrap();
        assert_eq!(s.opendal["access_key_id"], "A");
        assert_eq!(s.opendal["secret_access_key"], "S");
        assert_eq!(s.opendal["bucket"], "b");
        assert_eq!(s.opendal["root"], "/data");
        assert!(s.opendal.contains_key("region"), "custom endpoint gets a default region");
        let e = resolve(&uri("s3://b"), &opts(&[("access_key", "A"), ("access_key_id", "B")])).unwrap_err();
        assert!(e.message().contains("given twice"), "{}", e.message());
    }

    #[test]
    fn uri_keys_and_bad_values_are_refused() {
        let e = resolve(&uri("s3://b"), &opts(&[("bucket", "other")])).unwrap_err();
        assert!(e.message().contains("comes from the URI"), "{}", e.message());
        let e = resolve(&uri("s3://b"), &opts(&[("read_concurrency", "0")])).unwrap_err();
        assert!(e.message().contains("option read_concurrency"), "{}", e.message());
        let e = resolve(&uri("s3://b"), &opts(&[("write_chunk", "1MiB")])).unwrap_err();
        assert!(e.message().contains("5MiB"), "{}", e.message());
        let s = resolve(&uri("file:///tmp"), &opts(&[("read_chunk", "1MiB"), ("read_concurrency", "8")])).unwrap();
        assert_eq!((s.read_chunk, s.read_concurrency), (1 << 20, 8));
    }

    #[test]
    fn each_scheme_knows_its_keys() {
        assert!(valid_keys("gs").contains(&"credential_path".to_string()));
        assert!(valid_keys("azblob").contains(&"sas_token".to_string()));
        assert!(valid_keys("oss").contains(&"access_key_secret".to_string()));
        assert!(valid_keys("webhdfs").contains(&"user_name".to_string()));
        assert!(!valid_keys("s3").contains(&"bucket".to_string()));
        let s = resolve(&uri("webhdfs://nn/user"), &BTreeMap::new()).unwrap();
        assert_eq!(s.opendal["endpoint"], "http://nn:9870");
        let s = resolve(&uri("azblob://c"), &opts(&[("account", "acct")])).unwrap();
        assert_eq!(s.opendal["endpoint"], "https://acct.blob.core.windows.net");
    }

    #[test]
    fn file_and_webhdfs_stage_writes_inside_the_root() {
        let staged = |u: &str, kv: &[(&str, &str)]| {
            let s = resolve(&uri(u), &opts(kv)).unwrap();
            (s.opendal.get("atomic_write_dir").cloned(), s.staging, s.writes_in_place)
        };
        let some = |d: &str, rel: Option<&str>| (Some(d.to_string()), rel.map(str::to_string), false);
        assert_eq!(staged("file:///data/", &[]), some("/data/.curvine-tmp", Some(".curvine-tmp")));
        assert_eq!(staged("file:///", &[]), some("/.curvine-tmp", Some(".curvine-tmp")));
        assert_eq!(staged("file:///data", &[("atomic_write_dir", "/data/t/")]), some("/data/t", Some("t")));
        assert_eq!(staged("file:///data", &[("atomic_write_dir", "/database/t")]), some("/database/t", None));
        assert_eq!(staged("webhdfs://nn/user", &[]), some(".curvine-tmp/", Some(".curvine-tmp")));
        assert_eq!(staged("webhdfs://nn/user", &[("atomic_write_dir", "a/b/")]), some("a/b/", Some("a/b")));
        assert_eq!(staged("s3://b/x", &[]), (None, None, false));
        for (u, dir, why) in [
            ("file:///data", "tmp", "absolute"),
            ("file:///data", "/data/", "root itself"),
            ("file:///data", "/data/../x", "'..'"),
            ("webhdfs://nn/user", "/tmp/x", "relative to the root"),
            ("webhdfs://nn/user", "a/../b", "'..'"),
            ("webhdfs://nn/user", "", "root itself"),
        ] {
            let e = resolve(&uri(u), &opts(&[("atomic_write_dir", dir)])).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{u} {dir}");
            assert!(e.message().contains("option atomic_write_dir: ") && e.message().contains(why), "{u} {dir}: {}", e.message());
        }
    }

    #[test]
    fn redaction_hides_secrets_only() {
        let r = redact(&opts(&[
            ("access_key_id", "AKIA"),
            ("secret_access_key", "s"),
            ("secret_key", "s"),
            ("session_token", "t"),
            ("account_key", "k"),
            ("access_key", "k"),
            ("sas_token", "t"),
            ("credential", "c"),
            ("access_key_secret", "s"),
            ("security_token", "t"),
            ("delegation", "d"),
            ("server_side_encryption_customer_key", "k"),
            ("endpoint", "http://h"),
            ("region", "r"),
            ("credential_path", "/p"),
            ("server_side_encryption_aws_kms_key_id", "kid"),
            ("skip_signature", "true"),
        ]));
        for (k, v) in &r {
            let shown = ["access_key_id", "endpoint", "region", "credential_path", "server_side_encryption_aws_kms_key_id", "skip_signature"];
            assert_eq!(v == "****", !shown.contains(&k.as_str()), "{k}={v}");
        }
    }

    #[test]
    fn env_options_fill_only_missing_groups() {
        let env = |v: &str| match v {
            "AWS_ACCESS_KEY_ID" => Some("AK".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("SK".to_string()),
            "AWS_DEFAULT_REGION" => Some("eu-west-1".to_string()),
            "AZURE_STORAGE_ACCOUNT" => Some("acct".to_string()),
            _ => None,
        };
        let got = env_options_from("s3", &BTreeMap::new(), env);
        assert_eq!(got, opts(&[("access_key_id", "AK"), ("secret_access_key", "SK"), ("region", "eu-west-1")]));
        // The user gave a key (under an alias): the environment's keys stay out.
        let got = env_options_from("s3a", &opts(&[("access_key", "mine"), ("region", "x")]), env);
        assert!(got.is_empty(), "{got:?}");
        let got = env_options_from("azblob", &BTreeMap::new(), env);
        assert_eq!(got, opts(&[("account_name", "acct")]));
        // Whatever env_options returns, Ufs::new accepts.
        let all = env_options_from("s3", &BTreeMap::new(), |_| Some("v".into()));
        resolve(&uri("s3://b"), &all).unwrap();
    }

    #[test]
    fn gcs_credentials_file_is_inlined() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key.json");
        std::fs::write(&f, b"{}").unwrap();
        let path = f.to_string_lossy().to_string();
        let got = env_options_from("gs", &BTreeMap::new(), |v| (v == "GOOGLE_APPLICATION_CREDENTIALS").then(|| path.clone()));
        assert_eq!(got, opts(&[("credential", "e30=")]));
    }

    #[test]
    fn scrub_removes_secret_values() {
        let m = opts(&[("secret_access_key", "topsecret"), ("region", "us-east-1")]);
        assert_eq!(scrub("bad sig for topsecret in us-east-1", &m), "bad sig for **** in us-east-1");
    }
}
