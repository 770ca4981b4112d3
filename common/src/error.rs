//! The one error type of Curvine: a kind a caller can act on, a message, and
//! whether retrying can help. Errors cross gRPC and the data plane as a kind
//! code plus message and come back as the same kind.

use std::fmt;

/// What went wrong, in terms a caller can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u16)]
pub enum ErrorKind {
    NotFound = 1,
    AlreadyExists = 2,
    NotADirectory = 3,
    IsADirectory = 4,
    NotEmpty = 5,
    InvalidPath = 6,
    InvalidArgument = 7,
    NoSpace = 8,
    Unavailable = 9,
    PermissionDenied = 10,
    Corrupt = 11,
    Protocol = 12,
    Io = 13,
    Timeout = 14,
    Config = 15,
    Internal = 16,
    /// The meta node asked is not the Raft leader; the message names the
    /// leader when it is known (`Error::leader_hint`). Clients move there.
    NotLeader = 17,
    /// The operation is never allowed on this kind of entry (EPERM), e.g. a
    /// hard link to a directory.
    NotPermitted = 18,
    /// A lock is held by another owner (EAGAIN from F_SETLK / flock
    /// LOCK_NB); trying again later may succeed.
    WouldBlock = 19,
}

impl ErrorKind {
    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn from_code(code: u16) -> ErrorKind {
        use ErrorKind::*;
        match code {
            1 => NotFound,
            2 => AlreadyExists,
            3 => NotADirectory,
            4 => IsADirectory,
            5 => NotEmpty,
            6 => InvalidPath,
            7 => InvalidArgument,
            8 => NoSpace,
            9 => Unavailable,
            10 => PermissionDenied,
            11 => Corrupt,
            12 => Protocol,
            13 => Io,
            14 => Timeout,
            15 => Config,
            17 => NotLeader,
            18 => NotPermitted,
            19 => WouldBlock,
            _ => Internal,
        }
    }

    /// The phrase used in one-line human errors (`cv: /a: no such file or directory`).
    pub fn phrase(self) -> &'static str {
        use ErrorKind::*;
        match self {
            NotFound => "no such file or directory",
            AlreadyExists => "file exists",
            NotADirectory => "not a directory",
            IsADirectory => "is a directory",
            NotEmpty => "directory not empty",
            InvalidPath => "invalid path",
            InvalidArgument => "invalid argument",
            NoSpace => "no space left",
            Unavailable => "service unavailable",
            PermissionDenied => "permission denied",
            Corrupt => "data corrupted",
            Protocol => "protocol error",
            Io => "i/o error",
            Timeout => "timed out",
            Config => "bad configuration",
            Internal => "internal error",
            NotLeader => "not the meta leader",
            NotPermitted => "operation not permitted",
            WouldBlock => "resource temporarily unavailable",
        }
    }

    /// POSIX errno for FUSE and Python.
    pub fn errno(self) -> i32 {
        use ErrorKind::*;
        match self {
            NotFound => libc::ENOENT,
            AlreadyExists => libc::EEXIST,
            NotADirectory => libc::ENOTDIR,
            IsADirectory => libc::EISDIR,
            NotEmpty => libc::ENOTEMPTY,
            InvalidPath | InvalidArgument | Config => libc::EINVAL,
            NoSpace => libc::ENOSPC,
            Unavailable | NotLeader | WouldBlock => libc::EAGAIN,
            PermissionDenied => libc::EACCES,
            NotPermitted => libc::EPERM,
            Corrupt | Protocol | Io | Internal => libc::EIO,
            Timeout => libc::ETIMEDOUT,
        }
    }

    /// Whether the same request may succeed if retried later.
    pub fn is_temporary(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::NotLeader)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.phrase())
    }
}

/// A Curvine error: kind + human message (which already names the path,
/// block or worker it concerns).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    temporary: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), temporary: kind.is_temporary() }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// Marks the error as permanent even if its kind usually is not
    /// (e.g. an `Unavailable` that retrying cannot fix).
    pub fn permanent(mut self) -> Self {
        self.temporary = false;
        self
    }

    /// Prefixes the message with context, e.g. the worker that failed.
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.message = format!("{ctx}: {}", self.message);
        self
    }

    /// `"<path>: <phrase>"` errors, the common POSIX-style shape.
    pub fn path(kind: ErrorKind, path: &str) -> Self {
        Error::new(kind, format!("{path}: {}", kind.phrase()))
    }

    pub fn not_found(path: &str) -> Self {
        Self::path(ErrorKind::NotFound, path)
    }
    pub fn exists(path: &str) -> Self {
        Self::path(ErrorKind::AlreadyExists, path)
    }
    pub fn not_dir(path: &str) -> Self {
        Self::path(ErrorKind::NotADirectory, path)
    }
    pub fn is_dir(path: &str) -> Self {
        Self::path(ErrorKind::IsADirectory, path)
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, msg)
    }
    pub fn protocol(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::Protocol, msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, msg)
    }
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unavailable, msg)
    }

    /// This meta node is not the leader; `leader` is the leader's address
    /// when known.
    pub fn not_leader(node: u64, leader: Option<&str>) -> Self {
        match leader {
            Some(l) => Error::new(ErrorKind::NotLeader, format!("meta node {node} is not the leader; {LEADER_IS}{l}")),
            None => Error::new(
                ErrorKind::NotLeader,
                format!("meta node {node} is not the leader and knows no leader (an election is running, or too few members are up for a quorum)"),
            ),
        }
    }

    /// The leader's address a `NotLeader` error names.
    pub fn leader_hint(&self) -> Option<&str> {
        if self.kind != ErrorKind::NotLeader {
            return None;
        }
        let at = self.message.find(LEADER_IS)? + LEADER_IS.len();
        self.message[at..].split_whitespace().next()
    }
}

const LEADER_IS: &str = "the leader is at ";

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let kind = match e.kind() {
            K::NotFound => ErrorKind::NotFound,
            K::AlreadyExists => ErrorKind::AlreadyExists,
            K::PermissionDenied => ErrorKind::PermissionDenied,
            K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
            | K::NotConnected | K::UnexpectedEof => ErrorKind::Unavailable,
            K::TimedOut => ErrorKind::Timeout,
            K::StorageFull => ErrorKind::NoSpace,
            K::InvalidData => ErrorKind::Protocol,
            _ if e.raw_os_error() == Some(libc::ENOSPC) => ErrorKind::NoSpace,
            _ => ErrorKind::Io,
        };
        Error::new(kind, e.to_string())
    }
}

const KIND_HEADER: &str = "x-cv-kind";

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Code;
        let code = match e.kind {
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::NoSpace => Code::ResourceExhausted,
            ErrorKind::Unavailable | ErrorKind::NotLeader => Code::Unavailable,
            ErrorKind::Timeout => Code::DeadlineExceeded,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::Internal | ErrorKind::Io | ErrorKind::Corrupt => Code::Internal,
            _ => Code::FailedPrecondition,
        };
        let mut status = tonic::Status::new(code, e.message);
        if let Ok(v) = e.kind.code().to_string().parse() {
            status.metadata_mut().insert(KIND_HEADER, v);
        }
        status
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        if let Some(kind) = s
            .metadata()
            .get(KIND_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u16>().ok())
        {
            return Error::new(ErrorKind::from_code(kind), s.message());
        }
        // No kind header: the status came from the transport or a proxy.
        let kind = match s.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => ErrorKind::Unavailable,
            tonic::Code::DeadlineExceeded => ErrorKind::Timeout,
            tonic::Code::NotFound => ErrorKind::NotFound,
            _ => ErrorKind::Internal,
        };
        Error::new(kind, format!("meta service: {}", s.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_survive_grpc_round_trip() {
        for code in 1..=18u16 {
            let kind = ErrorKind::from_code(code);
            assert_eq!(kind.code(), code);
            let e = Error::new(kind, format!("/x: {}", kind.phrase()));
            let back = Error::from(tonic::Status::from(e.clone()));
            assert_eq!(back.kind(), kind);
            assert_eq!(back.message(), e.message());
        }
    }

    #[test]
    fn only_unavailable_and_timeout_are_temporary() {
        assert!(Error::unavailable("x").is_temporary());
        assert!(!Error::not_found("/a").is_temporary());
        assert!(!Error::unavailable("x").permanent().is_temporary());
        assert!(Error::not_leader(2, None).is_temporary());
    }

    #[test]
    fn a_leader_hint_survives_grpc() {
        let e = Error::from(tonic::Status::from(Error::not_leader(2, Some("10.0.0.1:8995"))));
        assert_eq!((e.kind(), e.leader_hint()), (ErrorKind::NotLeader, Some("10.0.0.1:8995")));
        assert_eq!(Error::not_leader(2, None).leader_hint(), None);
        assert_eq!(Error::unavailable("the leader is at x:1").leader_hint(), None);
    }
}
