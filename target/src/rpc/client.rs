//! A small blocking JSON-RPC client for the control socket (`nvmfd rpc`, tests).

use super::jsonrpc::{Frame, Framer, RpcError};
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub struct Client {
    stream: UnixStream,
    framer: Framer,
    next_id: u64,
}

impl Client {
    pub fn connect(path: &Path) -> anyhow::Result<Client> {
        let stream = UnixStream::connect(path).with_context(|| {
            format!(
                "cannot connect to {} (is nvmfd running? the socket is set with rpc.socket or \
                 --rpc-socket)",
                path.display()
            )
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Client {
            stream,
            framer: Framer::default(),
            next_id: 1,
        })
    }

    /// Send raw bytes (tests use this for malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Read the next complete JSON value the server sends.
    pub fn read_value(&mut self) -> anyhow::Result<Value> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.framer.next_frame() {
                Frame::Value(v) => return Ok(v),
                Frame::Fatal(e) => {
                    bail!("the server sent something that is not JSON: {}", e.message)
                }
                Frame::Incomplete => {}
            }
            let n = self
                .stream
                .read(&mut buf)
                .context("reading from the RPC socket")?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.framer.push(&buf[..n]);
        }
    }

    /// Call `method`: Ok(result), or Err(the server's error object). Transport problems are the
    /// outer error.
    pub fn call(
        &mut self,
        method: &str,
        params: Option<Value>,
    ) -> anyhow::Result<Result<Value, RpcError>> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if let Some(p) = params {
            req["params"] = p;
        }
        let text = serde_json::to_vec(&req)?;
        self.stream
            .write_all(&text)
            .context("writing to the RPC socket")?;
        let resp = self.read_value()?;
        if resp["id"] != json!(id) {
            bail!("answer for another request: {resp}");
        }
        if let Some(e) = resp.get("error") {
            return Ok(Err(RpcError {
                code: e["code"].as_i64().unwrap_or(0) as i32,
                message: e["message"].as_str().unwrap_or("").to_owned(),
            }));
        }
        Ok(Ok(resp.get("result").cloned().unwrap_or(Value::Null)))
    }
}
