//! A real S3 server for UFS tests: moto in server mode (default) or s3s-fs
//! (`CV_S3_SERVER=s3s-fs`, if on PATH), one per test on an OS-chosen port,
//! killed on drop. Install moto with `scripts/s3-server.sh install`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Credentials the servers are started with (moto accepts any).
pub const ACCESS_KEY: &str = "test";
pub const SECRET_KEY: &str = "test";
pub const REGION: &str = "us-east-1";

/// How long the server may take to answer HTTP (moto imports a lot of Python).
const START_TIMEOUT: Duration = Duration::from_secs(60);

enum Kind {
    Moto,
    /// s3s-fs keeps buckets as directories under this root.
    S3sFs(tempfile::TempDir),
}

/// One running S3 server process.
pub struct S3Server {
    child: Child,
    port: u16,
    kind: Kind,
    log: tempfile::NamedTempFile,
}

/// The moto venv: `$CV_MOTO_VENV` or `~/.cache/curvine/moto-venv`.
pub fn moto_venv() -> PathBuf {
    if let Ok(v) = std::env::var("CV_MOTO_VENV") {
        return PathBuf::from(v);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/curvine/moto-venv")
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

impl S3Server {
    /// Starts a server and waits until it answers HTTP. Panics with what to
    /// do when the server is not installed.
    pub fn start() -> S3Server {
        Self::start_with(false)
    }

    /// A server that refuses every request's credentials (moto with IAM
    /// authentication on and no users; s3s-fs checks keys anyway, so pass
    /// wrong ones there): for access-denied paths. Buckets cannot be created.
    pub fn start_refusing_credentials() -> S3Server {
        Self::start_with(true)
    }

    fn start_with(refuse: bool) -> S3Server {
        let want_s3s = std::env::var("CV_S3_SERVER").map(|v| v == "s3s-fs").unwrap_or(false);
        if want_s3s && !on_path("s3s-fs") {
            panic!("CV_S3_SERVER=s3s-fs but s3s-fs is not on PATH: cargo install s3s-fs@0.14.1 --locked --features binary");
        }
        // The port is free when we look; another process may take it before
        // the server binds, so a server that dies at start gets a new port.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(want_s3s, refuse) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    fn try_start(s3s: bool, refuse: bool) -> Result<S3Server, String> {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().map_err(|e| format!("temp log: {e}"))?;
        let err = log.reopen().map_err(|e| format!("temp log: {e}"))?;
        let (mut cmd, kind) = if s3s {
            let root = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
            let mut c = Command::new("s3s-fs");
            c.args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(root.path());
            (c, Kind::S3sFs(root))
        } else {
            let bin = moto_venv().join("bin/moto_server");
            if !bin.is_file() {
                panic!("{} not found: run scripts/s3-server.sh install", bin.display());
            }
            let mut c = Command::new(bin);
            c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            if refuse {
                // Number of requests moto serves before it starts checking
                // signatures against its (empty) IAM user list.
                c.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
            }
            (c, Kind::Moto)
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(err.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("cannot start the S3 server: {e}"))?;
        let mut s = S3Server { child, port, kind, log };
        s.wait_ready()?;
        Ok(s)
    }

    /// Polls until the server answers an HTTP request (any status), or it exits.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("S3 server exited at start ({status}); log:\n{}", self.log_text()));
            }
            // An answer on the port, from this server: another process may
            // have taken the port first, and this one then exits (checked
            // above) or, for moto, never logs that it runs on it.
            if http_status(self.port, "GET", "/").is_some() {
                let ours = match self.kind {
                    Kind::Moto => self.log_text().contains(&format!("Running on http://127.0.0.1:{}", self.port)),
                    Kind::S3sFs(_) => true,
                };
                if ours && matches!(self.child.try_wait(), Ok(None)) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("S3 server did not answer on port {} within {START_TIMEOUT:?}; log:\n{}", self.port, self.log_text()));
            }
            // Bounded by the connect attempt: a refused connect returns at once,
            // so pause briefly between polls to not spin.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates bucket `name` (an unsigned PUT for moto; a directory for s3s-fs).
    pub fn create_bucket(&self, name: &str) {
        match &self.kind {
            Kind::S3sFs(root) => std::fs::create_dir_all(root.path().join(name)).expect("create bucket dir"),
            Kind::Moto => {
                let status = http_status(self.port, "PUT", &format!("/{name}"));
                assert_eq!(status, Some(200), "create bucket {name} on {}", self.endpoint());
            }
        }
    }

    /// Options for `curvine_ufs::Ufs::new` / `cv mount` that reach this server.
    pub fn options(&self) -> BTreeMap<String, String> {
        [
            ("endpoint", self.endpoint()),
            ("region", REGION.to_string()),
            ("access_key_id", ACCESS_KEY.to_string()),
            ("secret_access_key", SECRET_KEY.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `s3://bucket/prefix` (prefix may be empty).
    pub fn uri(&self, bucket: &str, prefix: &str) -> String {
        let p = prefix.trim_matches('/');
        if p.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{p}") }
    }

    /// Runs `code` with the moto venv's Python, `s3` being a boto3 client for
    /// this server (path-style, the test credentials). Returns stdout; panics
    /// with stderr if the snippet fails.
    pub fn boto3(&self, code: &str) -> String {
        let prelude = "import os, boto3, botocore.config\n\
            s3 = boto3.client('s3', endpoint_url=os.environ['CV_S3_ENDPOINT'], region_name=os.environ['CV_S3_REGION'],\n\
            \x20   aws_access_key_id=os.environ['CV_S3_AK'], aws_secret_access_key=os.environ['CV_S3_SK'],\n\
            \x20   config=botocore.config.Config(s3={'addressing_style': 'path'}))\n";
        let python = moto_venv().join("bin/python");
        let out = Command::new(&python)
            .arg("-c")
            .arg(format!("{prelude}{code}"))
            .env("CV_S3_ENDPOINT", self.endpoint())
            .env("CV_S3_REGION", REGION)
            .env("CV_S3_AK", ACCESS_KEY)
            .env("CV_S3_SK", SECRET_KEY)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} (run scripts/s3-server.sh install): {e}", python.display()));
        if !out.status.success() {
            panic!("boto3 snippet failed ({}):\n{code}\nstderr:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 request without a body; the response status, or None if the
/// server does not answer.
fn http_status(port: u16, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut head = [0u8; 32];
    let n = s.read(&mut head).ok()?;
    // "HTTP/1.1 200 OK"
    std::str::from_utf8(&head[..n]).ok()?.split_whitespace().nth(1)?.parse().ok()
}
