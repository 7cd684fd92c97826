//! `nvmfd rpc METHOD [--json PARAMS | KEY=VALUE ...]`: call one method on the control socket.
//!
//! Parameters are given either as one JSON object (`--json '{"nqn": "..."}'`) or as words:
//! `key=value` sets a string, `key:=value` a JSON value (number, boolean, object, ...), and a
//! dotted key sets a member of a nested object (`namespace.bdev_name=ram0`). Method names may
//! use `-` for `_` (`save-config`). Output is human-readable unless `--output json`; a string
//! result (`save_config`'s YAML) is printed as is.

use super::client::Client;
use clap::{Args, ValueEnum};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct RpcArgs {
    /// The method, e.g. nvmf_get_subsystems (`-` may stand for `_`).
    pub method: String,
    /// Parameters as one JSON object.
    #[arg(long = "json", value_name = "PARAMS", conflicts_with = "params")]
    pub json_params: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    /// Parameters as KEY=STRING or KEY:=JSON words.
    pub params: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Human,
    Json,
}

/// Build the params object from `key=value` / `key:=json` words.
pub fn params_from_words(words: &[String]) -> Result<Option<Value>, String> {
    if words.is_empty() {
        return Ok(None);
    }
    let mut root = Map::new();
    for w in words {
        let (key, value) = if let Some((k, v)) = w.split_once(":=") {
            let v: Value = serde_json::from_str(v)
                .map_err(|e| format!("{w:?}: the value after := is not JSON ({e})"))?;
            (k, v)
        } else if let Some((k, v)) = w.split_once('=') {
            (k, Value::String(v.to_owned()))
        } else {
            return Err(format!("{w:?}: write parameters as KEY=VALUE or KEY:=JSON"));
        };
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("{w:?}: empty key"));
        }
        let mut obj = &mut root;
        for p in &parts[..parts.len() - 1] {
            let slot = obj
                .entry(p.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            obj = slot
                .as_object_mut()
                .ok_or_else(|| format!("{w:?}: {p} is already set to a value"))?;
        }
        obj.insert(parts[parts.len() - 1].to_owned(), value);
    }
    Ok(Some(Value::Object(root)))
}

/// Human-readable rendering: indented `key: value` lines, list items with `-`.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    render_into(v, 0, &mut out);
    out
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("-".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.escape_debug().to_string()),
        Value::Array(a) if a.is_empty() => Some("(none)".into()),
        Value::Object(o) if o.is_empty() => Some("(none)".into()),
        _ => None,
    }
}

fn render_into(v: &Value, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match scalar(x) {
                    Some(s) => out.push_str(&format!("{pad}{k}: {s}\n")),
                    None => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        render_into(x, indent + 1, out);
                    }
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                match scalar(x) {
                    Some(s) => out.push_str(&format!("{pad}- {s}\n")),
                    None => {
                        out.push_str(&format!("{pad}-\n"));
                        render_into(x, indent + 1, out);
                    }
                }
            }
        }
        x => out.push_str(&format!("{pad}{}\n", scalar(x).unwrap_or_default())),
    }
}

pub fn run(args: &RpcArgs, socket: PathBuf) -> ExitCode {
    let params = match &args.json_params {
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(v @ Value::Object(_)) => Some(v),
            Ok(_) => {
                eprintln!("nvmfd rpc: --json takes a JSON object");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("nvmfd rpc: --json is not valid JSON: {e}");
                return ExitCode::from(2);
            }
        },
        None => match params_from_words(&args.params) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("nvmfd rpc: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let method = args.method.replace('-', "_");
    let result = Client::connect(&socket).and_then(|mut c| c.call(&method, params));
    match result {
        Err(e) => {
            eprintln!("nvmfd rpc: {e:#}");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            match args.output {
                Output::Json => eprintln!(
                    "{}",
                    serde_json::json!({"code": e.code, "message": e.message})
                ),
                Output::Human => eprintln!("nvmfd rpc: {method}: {} (code {})", e.message, e.code),
            }
            ExitCode::FAILURE
        }
        Ok(Ok(v)) => {
            match (args.output, &v) {
                (Output::Human, Value::String(s)) => print!("{s}"),
                (Output::Human, v) => print!("{}", render(v)),
                (Output::Json, v) => {
                    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default())
                }
            }
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn w(words: &[&str]) -> Result<Option<Value>, String> {
        params_from_words(&words.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn words_to_params() {
        assert_eq!(w(&[]).unwrap(), None);
        assert_eq!(
            w(&[
                "nqn=nqn.a:b",
                "serial_number=0001",
                "allow_any_host:=true",
                "namespace.bdev_name=ram0",
                "namespace.nsid:=3"
            ])
            .unwrap(),
            Some(
                json!({"nqn": "nqn.a:b", "serial_number": "0001", "allow_any_host": true,
                        "namespace": {"bdev_name": "ram0", "nsid": 3}})
            )
        );
        // `=` inside the value stays in the value.
        assert_eq!(w(&["k=a=b"]).unwrap(), Some(json!({"k": "a=b"})));
        assert!(w(&["novalue"]).is_err());
        assert!(w(&["n:=nope"]).is_err());
        assert!(w(&["a=1", "a.b=2"]).is_err());
        assert!(w(&[".x=1"]).is_err());
    }

    #[test]
    fn human_rendering() {
        let v = json!([{"nqn": "n1", "hosts": [], "listen_addresses": [{"traddr": "127.0.0.1"}], "ok": true}]);
        assert_eq!(
            render(&v),
            "-\n  hosts: (none)\n  listen_addresses:\n    -\n      traddr: 127.0.0.1\n  nqn: n1\n  ok: true\n"
        );
        assert_eq!(render(&json!("x\ny")), "x\\ny\n");
    }
}
