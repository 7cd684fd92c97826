//! JSON-RPC 2.0 (<https://www.jsonrpc.org/specification>): requests, responses, batches and the
//! standard error codes, independent of any socket so every rule is unit-tested.
//!
//! Framing: SPDK's Python client (`spdk.rpc.client.JSONRPCClient`) writes JSON texts back to
//! back (pretty-printed, several requests joined by newlines, a batch as one array) and reads
//! until one complete JSON value has arrived; no length prefix or delimiter is guaranteed. The
//! server therefore reads a stream of JSON values ([`Framer`]), answers each, and writes each
//! answer as one JSON text followed by a newline.

use serde_json::{json, Map, Value};

/// Invalid JSON was received (spec 5.1).
pub const PARSE_ERROR: i32 = -32700;
/// The JSON sent is not a valid Request object.
pub const INVALID_REQUEST: i32 = -32600;
/// The method does not exist.
pub const METHOD_NOT_FOUND: i32 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i32 = -32602;
/// Internal JSON-RPC error.
pub const INTERNAL_ERROR: i32 = -32603;
/// SPDK answers "no such object" with `-ENODEV`.
pub const ENODEV: i32 = -19;
/// `-EOPNOTSUPP`: a method nvmfd knows but cannot carry out yet.
pub const EOPNOTSUPP: i32 = -95;

/// The largest request text accepted (one JSON value). Larger ones get a [`INVALID_REQUEST`]
/// error and the connection is closed, since what follows cannot be told apart from the rest.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }
}

/// Calls a method: name and params (an object or array when present, `None` when absent).
pub trait Dispatch {
    fn call(&self, method: &str, params: Option<&Value>) -> Result<Value, RpcError>;
}

/// An error response with `id` (null when the request's id could not be read).
pub fn error_response(id: Value, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": e.code, "message": e.message}, "id": id})
}

/// Answer one received JSON value (a request or a batch): `None` when nothing is to be sent
/// (notifications only).
pub fn handle(value: Value, d: &dyn Dispatch) -> Option<Value> {
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                // Spec 6: an empty batch is one Invalid Request error, not an empty array.
                return Some(error_response(
                    Value::Null,
                    &RpcError::new(INVALID_REQUEST, "Invalid Request: empty batch"),
                ));
            }
            let out: Vec<Value> = items.into_iter().filter_map(|v| single(v, d)).collect();
            // Spec 6: a batch of notifications only gets no answer at all.
            (!out.is_empty()).then_some(Value::Array(out))
        }
        v => single(v, d),
    }
}

/// One request object.
fn single(v: Value, d: &dyn Dispatch) -> Option<Value> {
    let invalid = |id: Value, why: &str| {
        Some(error_response(
            id,
            &RpcError::new(INVALID_REQUEST, format!("Invalid Request: {why}")),
        ))
    };
    let Value::Object(mut obj) = v else {
        return invalid(Value::Null, "a request is a JSON object");
    };
    // The id first, so errors about the rest can name it. Spec 4: a String, Number or Null;
    // absent means a notification.
    let id = obj.remove("id");
    let id = match id {
        None => None,
        Some(i @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(i),
        Some(_) => return invalid(Value::Null, "\"id\" must be a string, a number or null"),
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return invalid(reply_id, "\"jsonrpc\" must be \"2.0\"");
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => return invalid(reply_id, "\"method\" must be a string"),
    };
    let params = obj.remove("params");
    if let Some(p) = &params {
        if !(p.is_object() || p.is_array()) {
            return invalid(reply_id, "\"params\" must be an object or an array");
        }
    }
    if let Some(k) = obj.keys().find(|k| k.as_str() != "jsonrpc") {
        return invalid(reply_id, &format!("unknown member {k:?}"));
    }
    let result = d.call(&method, params.as_ref());
    // Spec 4.1: a notification is not answered, not even with an error.
    let id = id?;
    Some(match result {
        Ok(r) => json!({"jsonrpc": "2.0", "result": r, "id": id}),
        Err(e) => error_response(id, &e),
    })
}

/// What the framer found in the bytes received so far.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A complete JSON value (the bytes it used are consumed).
    Value(Value),
    /// Nothing complete yet: read more.
    Incomplete,
    /// The bytes are not JSON, or the value is larger than [`MAX_REQUEST_BYTES`]: answer with
    /// this error (id null) and close the connection.
    Fatal(RpcError),
}

/// Splits a byte stream into JSON values.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete value, if any.
    pub fn next_frame(&mut self) -> Frame {
        let start = self
            .buf
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(self.buf.len());
        self.buf.drain(..start);
        if self.buf.is_empty() {
            return Frame::Incomplete;
        }
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                let used = it.byte_offset();
                if used > MAX_REQUEST_BYTES {
                    return too_large();
                }
                self.buf.drain(..used);
                Frame::Value(v)
            }
            Some(Err(e)) if e.is_eof() => {
                if self.buf.len() > MAX_REQUEST_BYTES {
                    too_large()
                } else {
                    Frame::Incomplete
                }
            }
            Some(Err(e)) => Frame::Fatal(RpcError::new(PARSE_ERROR, format!("Parse error: {e}"))),
            None => Frame::Incomplete,
        }
    }
}

fn too_large() -> Frame {
    Frame::Fatal(RpcError::new(
        INVALID_REQUEST,
        format!("Invalid Request: larger than {MAX_REQUEST_BYTES} bytes"),
    ))
}

/// Decode by-name params into `T` (a `deny_unknown_fields` struct): absent params are `{}`;
/// positional params, wrong types and unknown or missing members are Invalid params (-32602).
pub fn params<T: serde::de::DeserializeOwned>(p: Option<&Value>) -> Result<T, RpcError> {
    let v = match p {
        None => Value::Object(Map::new()),
        Some(Value::Object(_)) => p.cloned().unwrap_or(Value::Null),
        Some(_) => {
            return Err(RpcError::invalid_params(
                "Invalid parameters: give them by name (a JSON object)",
            ))
        }
    };
    serde_json::from_value(v)
        .map_err(|e| RpcError::invalid_params(format!("Invalid parameters: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echoes params for "echo", fails "fail", knows nothing else.
    struct Echo;
    impl Dispatch for Echo {
        fn call(&self, method: &str, params: Option<&Value>) -> Result<Value, RpcError> {
            match method {
                "echo" => Ok(params.cloned().unwrap_or(Value::Null)),
                "fail" => Err(RpcError::new(-5, "boom")),
                m => Err(RpcError::new(
                    METHOD_NOT_FOUND,
                    format!("Method not found: {m}"),
                )),
            }
        }
    }

    fn run(text: &str) -> Option<Value> {
        handle(serde_json::from_str(text).unwrap(), &Echo)
    }

    fn code(v: &Value) -> i64 {
        v["error"]["code"].as_i64().unwrap()
    }

    #[test]
    fn request_and_result() {
        let r = run(r#"{"jsonrpc":"2.0","method":"echo","params":{"a":1},"id":7}"#).unwrap();
        assert_eq!(r, json!({"jsonrpc":"2.0","result":{"a":1},"id":7}));
        let r = run(r#"{"jsonrpc":"2.0","method":"echo","id":"x"}"#).unwrap();
        assert_eq!(r, json!({"jsonrpc":"2.0","result":null,"id":"x"}));
    }

    #[test]
    fn errors_keep_the_id() {
        let r = run(r#"{"jsonrpc":"2.0","method":"fail","id":3}"#).unwrap();
        assert_eq!(
            r,
            json!({"jsonrpc":"2.0","error":{"code":-5,"message":"boom"},"id":3})
        );
        let r = run(r#"{"jsonrpc":"2.0","method":"nope","id":4}"#).unwrap();
        assert_eq!(code(&r), -32601);
        assert_eq!(r["id"], 4);
    }

    #[test]
    fn invalid_requests() {
        for (text, id) in [
            (r#"{"method":"echo","id":1}"#, json!(1)),
            (r#"{"jsonrpc":"1.0","method":"echo","id":1}"#, json!(1)),
            (r#"{"jsonrpc":"2.0","method":5,"id":2}"#, json!(2)),
            (r#"{"jsonrpc":"2.0","id":2}"#, json!(2)),
            (
                r#"{"jsonrpc":"2.0","method":"echo","params":3,"id":2}"#,
                json!(2),
            ),
            (
                r#"{"jsonrpc":"2.0","method":"echo","id":{"a":1}}"#,
                Value::Null,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"echo","id":1,"extra":0}"#,
                json!(1),
            ),
            ("42", Value::Null),
            (r#""echo""#, Value::Null),
        ] {
            let r = run(text).unwrap_or_else(|| panic!("no answer to {text}"));
            assert_eq!(code(&r), -32600, "{text}: {r}");
            assert_eq!(r["id"], id, "{text}");
        }
    }

    #[test]
    fn notifications_get_no_answer() {
        assert_eq!(run(r#"{"jsonrpc":"2.0","method":"echo"}"#), None);
        assert_eq!(run(r#"{"jsonrpc":"2.0","method":"nope"}"#), None);
        // A null id is a request, not a notification.
        assert!(run(r#"{"jsonrpc":"2.0","method":"echo","id":null}"#).is_some());
    }

    #[test]
    fn batches() {
        let r = run(r#"[{"jsonrpc":"2.0","method":"echo","params":[1],"id":1},
                {"jsonrpc":"2.0","method":"echo"},
                {"jsonrpc":"2.0","method":"nope","id":2}, 5]"#)
        .unwrap();
        let a = r.as_array().unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[0]["result"], json!([1]));
        assert_eq!(code(&a[1]), -32601);
        assert_eq!(code(&a[2]), -32600);
        assert_eq!(code(&run("[]").unwrap()), -32600);
        assert_eq!(run(r#"[{"jsonrpc":"2.0","method":"echo"}]"#), None);
    }

    #[test]
    fn framing_of_pretty_and_split_values() {
        let mut f = Framer::default();
        let text =
            "{\n  \"jsonrpc\": \"2.0\",\n  \"method\": \"echo\",\n  \"id\": 1\n}\n{\"a\":[1,2]}";
        // Byte by byte: nothing before the closing brace, then exactly one value.
        let bytes = text.as_bytes();
        let first_end = text.find('}').unwrap();
        for (i, b) in bytes.iter().enumerate() {
            f.push(std::slice::from_ref(b));
            let got = f.next_frame();
            if i == first_end {
                assert_eq!(
                    got,
                    Frame::Value(json!({"jsonrpc":"2.0","method":"echo","id":1}))
                );
            } else if i == bytes.len() - 1 {
                assert_eq!(got, Frame::Value(json!({"a":[1,2]})));
            } else {
                assert_eq!(got, Frame::Incomplete, "at byte {i}");
            }
        }
        // The second value ends the text: a number or object needs its closing token.
        let mut f = Framer::default();
        f.push(text.as_bytes());
        assert!(matches!(f.next_frame(), Frame::Value(_)));
        assert_eq!(f.next_frame(), Frame::Value(json!({"a":[1,2]})));
        assert_eq!(f.next_frame(), Frame::Incomplete);
    }

    #[test]
    fn framing_errors() {
        let mut f = Framer::default();
        f.push(b"{\"a\": nope}");
        match f.next_frame() {
            Frame::Fatal(e) => assert_eq!(e.code, -32700),
            x => panic!("{x:?}"),
        }
        let mut f = Framer::default();
        f.push(b"\xff\xfe");
        assert!(matches!(
            f.next_frame(),
            Frame::Fatal(RpcError { code: -32700, .. })
        ));
        // An unfinished value that grows past the limit is refused without waiting for its end.
        let mut f = Framer::default();
        f.push(b"{\"a\":\"");
        f.push(&vec![b'x'; MAX_REQUEST_BYTES]);
        assert!(matches!(
            f.next_frame(),
            Frame::Fatal(RpcError { code: -32600, .. })
        ));
        // A complete value over the limit too.
        let mut f = Framer::default();
        let mut big = b"[\"".to_vec();
        big.extend(vec![b'y'; MAX_REQUEST_BYTES]);
        big.extend(b"\"]");
        f.push(&big);
        assert!(matches!(
            f.next_frame(),
            Frame::Fatal(RpcError { code: -32600, .. })
        ));
    }

    #[test]
    fn params_decoding() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct P {
            nqn: String,
            #[serde(default)]
            n: Option<u32>,
        }
        let ok: P = params(Some(&json!({"nqn": "x", "n": 2}))).unwrap();
        assert_eq!(
            ok,
            P {
                nqn: "x".into(),
                n: Some(2)
            }
        );
        for bad in [
            json!({"nqn": 1}),
            json!({"nqn": "x", "z": 1}),
            json!({}),
            json!(["x"]),
        ] {
            let e = params::<P>(Some(&bad)).unwrap_err();
            assert_eq!(e.code, -32602, "{bad}");
        }
        assert_eq!(params::<P>(None).unwrap_err().code, -32602);
    }
}
