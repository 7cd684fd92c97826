//! The control plane: a JSON-RPC 2.0 server on a Unix socket, speaking SPDK's method names and
//! result shapes (see `docs/rpc.md`), and the client behind `nvmfd rpc`.
//!
//! The server runs a single-threaded tokio runtime on a thread of its own ("rpc"); nothing of
//! it touches a reactor. Each connection is a task: it reads a stream of JSON values
//! ([`jsonrpc::Framer`]), answers each in order, and is closed after a parse error or an
//! oversized request (the rest of the stream cannot be trusted). Several clients may be
//! connected at once, up to [`MAX_CLIENTS`].

pub mod cli;
pub mod client;
pub mod jsonrpc;
pub mod methods;
pub mod metrics;
pub mod reports;
mod socket;

use anyhow::Context as _;
use methods::Context;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

/// Connections served at once; more are accepted and closed at once.
pub const MAX_CLIENTS: usize = 64;

/// A running RPC server; [`RpcServer::stop`] (or drop) ends it and removes the socket.
pub struct RpcServer {
    path: PathBuf,
    /// The socket file we created (device, inode): removed at stop only if still ours.
    ino: (u64, u64),
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RpcServer {
    /// Create the socket at `path` and serve `ctx` on it.
    pub fn start(path: &Path, ctx: Context) -> anyhow::Result<RpcServer> {
        let std_listener = socket::bind(path)?;
        std_listener.set_nonblocking(true)?;
        let meta = std::fs::symlink_metadata(path)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("cannot build the RPC runtime")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ctx = Arc::new(ctx);
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("rpc".into())
            .spawn(move || rt.block_on(serve(std_listener, ctx, rx)))
            .context("cannot start the RPC thread")?;
        info!(socket = %shown, "JSON-RPC server listening");
        Ok(RpcServer {
            path: path.to_owned(),
            ino: (meta.dev(), meta.ino()),
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop serving (open connections are dropped) and remove the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn serve(
    std_listener: std::os::unix::net::UnixListener,
    ctx: Arc<Context>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::UnixListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "RPC socket unusable; control plane off");
            return;
        }
    };
    let clients = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = clients.clone().try_acquire_owned() else {
                        warn!(max = MAX_CLIENTS, "RPC: too many clients; closing a new connection");
                        continue;
                    };
                    let ctx = ctx.clone();
                    tasks.spawn(async move {
                        connection(stream, &ctx).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "RPC accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

/// Serve one client until it closes, or until its stream stops being JSON.
async fn connection(mut stream: tokio::net::UnixStream, ctx: &Context) {
    let mut framer = jsonrpc::Framer::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        loop {
            match framer.next_frame() {
                jsonrpc::Frame::Value(v) => {
                    if let Some(reply) = jsonrpc::handle(v, ctx) {
                        if write_json(&mut stream, &reply).await.is_err() {
                            return;
                        }
                    }
                }
                jsonrpc::Frame::Incomplete => break,
                jsonrpc::Frame::Fatal(e) => {
                    debug!(code = e.code, message = %e.message.escape_debug(), "RPC request refused; closing");
                    let _ = write_json(
                        &mut stream,
                        &jsonrpc::error_response(serde_json::Value::Null, &e),
                    )
                    .await;
                    return;
                }
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => framer.push(&buf[..n]),
        }
    }
}

async fn write_json(s: &mut tokio::net::UnixStream, v: &serde_json::Value) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(v).unwrap_or_default();
    text.push(b'\n');
    s.write_all(&text).await
}
