//! `kubectl exec` served by the agent: a process started in a running container, its stdio
//! carried over one WebSocket in Kubernetes' channel protocol (`v5.channel.k8s.io`, or
//! `v4.channel.k8s.io` for older clients). Each binary message starts with its channel: 0
//! stdin, 1 stdout, 2 stderr, 3 the final `Status`, 4 a terminal resize; in v5, 255 closes
//! the channel named by the next byte (kubectl's way to send end-of-file on stdin).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::Shared;

/// The subprotocols served, newest first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// What the exec request asked for (its query string).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecOptions {
    /// Parses `command=a&command=b&stdin=true&…`; `command` repeats, one per argument.
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut o = ExecOptions::default();
        for (k, v) in query_pairs(query) {
            // As Go's ParseBool reads it (the Python client sends `True`).
            let flag = || matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True");
            match k.as_str() {
                "command" => o.command.push(v.clone()),
                "input" | "stdin" => o.stdin = flag(),
                "output" | "stdout" => o.stdout = flag(),
                "error" | "stderr" => o.stderr = flag(),
                "tty" => o.tty = flag(),
                _ => {}
            }
        }
        if o.command.is_empty() {
            return Err("you must specify at least one command for the container".into());
        }
        if !(o.stdin || o.stdout || o.stderr) {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        if o.tty {
            // A terminal merges stderr into stdout, as upstream does.
            o.stderr = false;
        }
        Ok(o)
    }
}

/// The decoded `key=value` pairs of a query string, in order (keys may repeat).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `Status` sent on the error channel when the process ends (or could not start), as
/// the kubelet sends it: kubectl takes the exit code from the `ExitCode` cause.
pub fn exit_status(result: &Result<i32, String>) -> Value {
    match result {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("error executing command in container: {e}"),
            "reason": "InternalError",
        }),
    }
}

/// Upgrades to the WebSocket and runs the session; `id` is the running container.
pub fn upgrade(
    shared: Arc<Shared>,
    id: String,
    opts: ExecOptions,
    ws: WebSocketUpgrade,
) -> axum::response::Response {
    ws.protocols(PROTOCOLS)
        .on_upgrade(move |socket| session(shared, id, opts, socket))
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The process's ends as the session sees them.
struct Wiring {
    stdin: Option<Writer>,
    stdout: Option<Reader>,
    stderr: Option<Reader>,
    /// The terminal, kept for resizes.
    resize: Option<OwnedFd>,
}

fn start(
    shared: &Shared,
    id: &str,
    opts: &ExecOptions,
) -> Result<(strake_runtime::ExecProcess, Wiring), String> {
    if opts.tty {
        let pty =
            strake_runtime::open_pty(80, 24).map_err(|e| format!("opening a terminal: {e}"))?;
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| format!("duplicating the terminal: {e}"))
        };
        let io = strake_runtime::ExecIo {
            stdin: Stdio::from(dup(&pty.slave)?),
            stdout: Stdio::from(dup(&pty.slave)?),
            stderr: Stdio::from(pty.slave),
            tty: true,
        };
        let resize = dup(&pty.master)?;
        let process = shared
            .runtime
            .spawn_exec(id, &opts.command, io)
            .map_err(|e| e.to_string())?;
        let master = strake_runtime::PtyMaster::new(pty.master)
            .map_err(|e| format!("polling the terminal: {e}"))?;
        let (r, w) = tokio::io::split(master);
        return Ok((
            process,
            Wiring {
                stdin: opts.stdin.then(|| Box::new(w) as Writer),
                stdout: Some(Box::new(r)),
                stderr: None,
                resize: Some(resize),
            },
        ));
    }
    let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    let io = strake_runtime::ExecIo {
        stdin: pipe(opts.stdin),
        stdout: pipe(opts.stdout),
        stderr: pipe(opts.stderr),
        tty: false,
    };
    let mut process = shared
        .runtime
        .spawn_exec(id, &opts.command, io)
        .map_err(|e| e.to_string())?;
    let wiring = Wiring {
        stdin: process.take_stdin().map(|w| Box::new(w) as Writer),
        stdout: process.take_stdout().map(|r| Box::new(r) as Reader),
        stderr: process.take_stderr().map(|r| Box::new(r) as Reader),
        resize: None,
    };
    Ok((process, wiring))
}

/// The client's side of an exec, whatever carries it: the process's stdin comes from
/// `stdin` (its end is end-of-file), output goes to `stdout` and `stderr`, terminal sizes
/// come from `resize`, and `gone` turns true when the client has left.
pub struct Client {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
    pub gone: watch::Receiver<bool>,
}

/// Copies `from` to `to` until either ends.
async fn pump(mut from: Reader, to: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs the exec for `client`: its exit code, or why it could not start.
async fn run(shared: &Shared, id: &str, opts: &ExecOptions, client: Client) -> Result<i32, String> {
    let Client {
        stdin: mut input,
        stdout,
        stderr,
        resize,
        mut gone,
    } = client;
    let (process, mut wiring) = start(shared, id, opts)?;
    let mut pumps = Vec::new();
    if let (Some(r), Some(to)) = (wiring.stdout.take(), stdout) {
        pumps.push(tokio::spawn(pump(r, to)));
    }
    if let (Some(r), Some(to)) = (wiring.stderr.take(), stderr) {
        pumps.push(tokio::spawn(pump(r, to)));
    }
    let stdin = wiring.stdin.take();
    let feeder = tokio::spawn(async move {
        let (Some(mut w), Some(rx)) = (stdin, input.as_mut()) else {
            return;
        };
        while let Some(chunk) = rx.recv().await {
            if w.write_all(&chunk).await.is_err() || w.flush().await.is_err() {
                return;
            }
        }
        // End of the client's input: end of the process's.
        let _ = w.shutdown().await;
    });
    let terminal = wiring.resize.take();
    let resizer = tokio::spawn(async move {
        let (Some(fd), Some(mut rx)) = (terminal, resize) else {
            return;
        };
        while let Some((cols, rows)) = rx.recv().await {
            let _ = strake_runtime::set_window_size(fd.as_fd(), cols, rows);
        }
    });
    let wait = process.wait();
    tokio::pin!(wait);
    let result = tokio::select! {
        r = &mut wait => r,
        _ = async { let _ = gone.wait_for(|g| *g).await; } => {
            // The client left: hang up on the process (its stdin and terminal close).
            feeder.abort();
            resizer.abort();
            for p in &pumps {
                p.abort();
            }
            wait.await
        }
    };
    feeder.abort();
    resizer.abort();
    // What the process wrote last is still in the pipes; a child it left running may hold
    // them open, so don't wait for that for long.
    for p in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
    }
    result.map_err(|e| e.to_string())
}

/// The WebSocket session: channel-prefixed messages both ways, the status on channel 3.
async fn session(shared: Arc<Shared>, id: String, opts: ExecOptions, socket: WebSocket) {
    let (mut sink, mut incoming) = socket.split();
    let (out, mut queue) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = queue.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        // A normal closure (1000): clients read it as the end of every channel, while a
        // close without a code (1005) is an error to them.
        let bye = Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        }));
        let _ = sink.send(bye).await;
        let _ = sink.close().await;
    });
    let framed = |channel: u8| {
        let (tx, mut rx) = mpsc::channel::<Bytes>(8);
        let out = out.clone();
        let task = tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                let mut m = Vec::with_capacity(b.len() + 1);
                m.push(channel);
                m.extend_from_slice(&b);
                if out.send(Message::Binary(m.into())).await.is_err() {
                    return;
                }
            }
        });
        (tx, task)
    };
    let (stdout, out_task) = framed(STDOUT);
    let (stderr, err_task) = framed(STDERR);
    let (stdin_tx, stdin) = mpsc::channel::<Bytes>(8);
    let (resize_tx, resize) = mpsc::channel::<(u16, u16)>(4);
    let (gone_tx, gone) = watch::channel(false);
    let reader = tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        loop {
            let data = match incoming.next().await {
                Some(Ok(Message::Binary(b))) => b.to_vec(),
                Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(tx) = &stdin_tx
                        && tx.send(Bytes::copy_from_slice(payload)).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                RESIZE => {
                    if let Some(size) = parse_resize(payload) {
                        let _ = resize_tx.send(size).await;
                    }
                }
                CLOSE if payload.first() == Some(&STDIN) => stdin_tx = None,
                _ => {}
            }
        }
        let _ = gone_tx.send(true);
    });
    let client = Client {
        stdin: opts.stdin.then_some(stdin),
        stdout: opts.stdout.then_some(stdout),
        stderr: opts.stderr.then_some(stderr),
        resize: opts.tty.then_some(resize),
        gone,
    };
    let result = run(&shared, &id, &opts, client).await;
    if let Err(e) = &result {
        tracing::info!(container = %id, error = %e, "exec could not start");
    }
    let _ = out_task.await;
    let _ = err_task.await;
    let mut msg = vec![ERROR];
    msg.extend(serde_json::to_vec(&exit_status(&result)).unwrap_or_default());
    let _ = out.send(Message::Binary(msg.into())).await;
    drop(out);
    let _ = writer.await;
    reader.abort();
}

/// The SPDY protocols exec speaks, newest first (v5 is WebSocket-only).
pub const SPDY_PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// The SPDY session: the client opens one stream per kind (`streamtype` error, stdin, stdout,
/// stderr, resize) before anything flows; the status goes on the error stream (JSON from v4,
/// plain text on failure before), then every stream is finished and the session ends.
pub async fn serve_spdy<IO>(
    io: IO,
    shared: Arc<Shared>,
    id: String,
    opts: ExecOptions,
    protocol: String,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let mut conn = strake_spdy::serve(io);
    let v3_or_later = protocol != "channel.k8s.io" && protocol != "v2.channel.k8s.io";
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(opts.tty && v3_or_later);
    let mut streams: HashMap<String, strake_spdy::Stream> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while streams.len() < expected {
        let Ok(Some(stream)) = tokio::time::timeout_at(deadline, conn.incoming.recv()).await else {
            tracing::info!(container = %id, "exec: timed out waiting for the client to create streams");
            conn.close().await;
            return;
        };
        if stream.reply().await.is_err() {
            return;
        }
        let kind = stream.header("streamtype").unwrap_or_default().to_string();
        streams.insert(kind, stream);
    }
    let Some(error) = streams.remove("error") else {
        conn.close().await;
        return;
    };
    let (gone_tx, gone) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut outlet = |kind: &str| {
        let stream = streams.remove(kind)?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(8);
        let gone_tx = gone_tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if stream.write(&b).await.is_err() {
                    let _ = gone_tx.send(true);
                    return;
                }
            }
            stream.finish().await;
        }));
        Some(tx)
    };
    let stdout = outlet("stdout");
    let stderr = outlet("stderr");
    let stdin = streams.remove("stdin").map(|mut s| {
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        tokio::spawn(async move {
            while let Some(b) = s.read().await {
                if tx.send(b).await.is_err() {
                    break;
                }
            }
            s.finish().await;
        });
        rx
    });
    let resize = streams.remove("resize").map(|mut s| {
        let (tx, rx) = mpsc::channel::<(u16, u16)>(4);
        tokio::spawn(async move {
            // JSON objects, one per line.
            let mut pending = Vec::new();
            while let Some(b) = s.read().await {
                pending.extend_from_slice(&b);
                while let Some(nl) = pending.iter().position(|&c| c == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    if let Some(size) = parse_resize(&line)
                        && tx.send(size).await.is_err()
                    {
                        return;
                    }
                }
            }
        });
        rx
    });
    let client = Client {
        stdin,
        stdout,
        stderr,
        resize,
        gone,
    };
    let result = run(&shared, &id, &opts, client).await;
    for t in tasks {
        let _ = t.await;
    }
    let status = if protocol == "v4.channel.k8s.io" {
        serde_json::to_vec(&exit_status(&result)).unwrap_or_default()
    } else {
        match &result {
            Ok(0) => Vec::new(),
            Ok(code) => format!("command terminated with non-zero exit code: exit status {code}")
                .into_bytes(),
            Err(e) => format!("error executing command in container: {e}").into_bytes(),
        }
    };
    if !status.is_empty() {
        let _ = error.write(&status).await;
    }
    error.finish().await;
    conn.close().await;
}

/// `{"Width": 120, "Height": 40}` as (columns, rows).
fn parse_resize(payload: &[u8]) -> Option<(u16, u16)> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let w = u16::try_from(v.get("Width")?.as_u64()?).ok()?;
    let h = u16::try_from(v.get("Height")?.as_u64()?).ok()?;
    Some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_options_follow_the_query() {
        let o = ExecOptions::parse(
            "command=sh&command=-c&command=echo%20a%26b&stdin=true&stdout=true&stderr=true&tty=false",
        )
        .unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo a&b"]);
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        let t =
            ExecOptions::parse("command=sh&stdin=true&stdout=true&stderr=true&tty=true").unwrap();
        assert!(t.tty && !t.stderr, "a terminal carries stderr in stdout");
        assert!(
            ExecOptions::parse("stdout=true")
                .unwrap_err()
                .contains("at least one command")
        );
        assert!(
            ExecOptions::parse("command=ls")
                .unwrap_err()
                .contains("at least 1 of")
        );
    }

    #[test]
    fn exit_statuses_carry_the_code() {
        assert_eq!(exit_status(&Ok(0))["status"], "Success");
        let s = exit_status(&Ok(3));
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(
            exit_status(&Err("no such file".into()))["status"],
            "Failure"
        );
    }

    #[test]
    fn resizes_parse() {
        assert_eq!(
            parse_resize(br#"{"Width":120,"Height":40}"#),
            Some((120, 40))
        );
        assert_eq!(parse_resize(b"{}"), None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c%"), "a/b c%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
