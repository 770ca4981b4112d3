//! The TCP transport: pipelined requests, `sendfile` on the server, reads
//! straight into the caller's buffer on the client.

mod client;
mod server;
mod server_rdma;

pub use client::{TcpConn, TcpOptions, TcpTransport};
pub use server::{serve, serve_with, ServeOptions};
