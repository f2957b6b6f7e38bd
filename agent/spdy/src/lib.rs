//! SPDY/3.1 as Kubernetes uses it for `kubectl port-forward` and SPDY exec: the frames (with
//! their zlib-compressed header blocks) and the server half of a session. Clients open every
//! stream; the server answers each with SYN_REPLY (or refuses it with RST_STREAM), exchanges
//! data frames, half-closes with FIN, echoes pings, and ends with GOAWAY. There is no flow
//! control, as in the Go implementation every Kubernetes client uses: back-pressure is the
//! connection's. The server sends nothing before the client's first frame (a Go client drops
//! bytes that arrive with the 101 response).

mod dictionary;
pub mod frame;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

pub use frame::{CANCEL, Frame, Headers, header};

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY header compression: {0}")]
    Compression(String),
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    #[error("SPDY frame of {0} bytes is too large")]
    TooLarge(usize),
    #[error("the SPDY connection is closed")]
    Closed,
}

/// Largest data frame sent.
const CHUNK: usize = 32 * 1024;

/// Queues frames for the connection's writer; cloneable.
#[derive(Clone)]
pub struct Sender(mpsc::Sender<Frame>);

impl Sender {
    pub async fn send(&self, frame: Frame) -> Result<(), SpdyError> {
        self.0.send(frame).await.map_err(|_| SpdyError::Closed)
    }
}

/// A stream the client opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    data: mpsc::Receiver<Bytes>,
    writer: StreamWriter,
}

/// The sending half of a stream (cloneable, so one task can read while another writes).
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    tx: Sender,
    finished: Arc<AtomicBool>,
}

impl StreamWriter {
    /// Sends `data` on the stream.
    pub async fn write(&self, data: &[u8]) -> Result<(), SpdyError> {
        if self.finished.load(Ordering::Relaxed) {
            return Err(SpdyError::Closed);
        }
        for chunk in data.chunks(CHUNK) {
            self.tx
                .send(Frame::Data {
                    id: self.id,
                    fin: false,
                    data: Bytes::copy_from_slice(chunk),
                })
                .await?;
        }
        Ok(())
    }

    /// Half-closes our side (an empty data frame with FIN), once.
    pub async fn finish(&self) {
        if !self.finished.swap(true, Ordering::Relaxed) {
            let _ = self
                .tx
                .send(Frame::Data {
                    id: self.id,
                    fin: true,
                    data: Bytes::new(),
                })
                .await;
        }
    }

    /// Abandons the stream (RST_STREAM CANCEL), unless already finished.
    pub async fn reset(&self) {
        if !self.finished.swap(true, Ordering::Relaxed) {
            let _ = self
                .tx
                .send(Frame::RstStream {
                    id: self.id,
                    status: CANCEL,
                })
                .await;
        }
    }
}

impl Stream {
    /// The value of one of the stream's headers.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Accepts the stream (SYN_REPLY with no headers): needed before any data flows on it.
    pub async fn reply(&self) -> Result<(), SpdyError> {
        self.writer
            .tx
            .send(Frame::SynReply {
                id: self.id,
                fin: false,
                headers: Vec::new(),
            })
            .await
    }

    /// A sending half that can live beside this one.
    pub fn writer(&self) -> StreamWriter {
        self.writer.clone()
    }

    /// Refuses or abandons the stream (RST_STREAM CANCEL), unless already finished.
    pub async fn reset(&mut self) {
        self.writer.reset().await;
        self.data.close();
    }

    /// Sends `data` on the stream.
    pub async fn write(&self, data: &[u8]) -> Result<(), SpdyError> {
        self.writer.write(data).await
    }

    /// Half-closes our side, once.
    pub async fn finish(&self) {
        self.writer.finish().await;
    }

    /// The next data from the client; `None` once it half-closed, reset the stream or left.
    pub async fn read(&mut self) -> Option<Bytes> {
        self.data.recv().await
    }
}

/// A server session: the streams the client opens, and a way to end it.
pub struct Connection {
    pub incoming: mpsc::Receiver<Stream>,
    tx: Sender,
    last_stream: Arc<AtomicU32>,
    writer: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Ends the session: GOAWAY, then the writer drains and the connection closes. Everything
    /// sent before this is delivered first (a Go client stops reading at GOAWAY).
    pub async fn close(self) {
        let last_good = self.last_stream.load(Ordering::Relaxed);
        let _ = self
            .tx
            .send(Frame::GoAway {
                last_good,
                status: 0,
            })
            .await;
        drop(self.tx);
        drop(self.incoming);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.writer).await;
    }
}

/// Serves the SPDY session on `io` (an upgraded connection, or a byte stream tunnelled in a
/// WebSocket).
pub fn serve<IO>(io: IO) -> Connection
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    let (frames_tx, mut frames_rx) = mpsc::channel::<Frame>(64);
    let tx = Sender(frames_tx);
    let (streams_tx, incoming) = mpsc::channel(16);
    let last_stream = Arc::new(AtomicU32::new(0));
    let writer = tokio::spawn(async move {
        let mut enc = frame::Encoder::new();
        let mut out = Vec::with_capacity(CHUNK + 64);
        while let Some(f) = frames_rx.recv().await {
            out.clear();
            let goaway = matches!(f, Frame::GoAway { .. });
            if let Err(e) = enc.encode(&f, &mut out) {
                tracing::info!(error = %e, "SPDY: dropping a frame that does not encode");
                continue;
            }
            if wr.write_all(&out).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            if goaway {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(read_loop(rd, tx.clone(), streams_tx, last_stream.clone()));
    Connection {
        incoming,
        tx,
        last_stream,
        writer,
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    tx: Sender,
    streams_tx: mpsc::Sender<Stream>,
    last_stream: Arc<AtomicU32>,
) {
    let mut dec = frame::Decoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    'read: loop {
        loop {
            let f = match dec.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(error = %e, "SPDY: ending the session");
                    let _ = tx
                        .send(Frame::GoAway {
                            last_good: last_stream.load(Ordering::Relaxed),
                            status: 1,
                        })
                        .await;
                    break 'read;
                }
            };
            match f {
                Frame::SynStream {
                    id, fin, headers, ..
                } => {
                    if id == 0 || id % 2 == 0 || id <= last_stream.load(Ordering::Relaxed) {
                        let _ = tx
                            .send(Frame::RstStream {
                                id: id.max(1),
                                status: frame::PROTOCOL_ERROR,
                            })
                            .await;
                        continue;
                    }
                    last_stream.store(id, Ordering::Relaxed);
                    let (data_tx, data) = mpsc::channel(64);
                    if !fin {
                        open.insert(id, data_tx);
                    }
                    let stream = Stream {
                        id,
                        headers,
                        data,
                        writer: StreamWriter {
                            id,
                            tx: tx.clone(),
                            finished: Arc::new(AtomicBool::new(false)),
                        },
                    };
                    if streams_tx.send(stream).await.is_err() {
                        let _ = tx.send(Frame::RstStream { id, status: CANCEL }).await;
                    }
                }
                Frame::Data { id, fin, data } => {
                    if let Some(s) = open.get(&id) {
                        if !data.is_empty() && s.send(data).await.is_err() {
                            open.remove(&id);
                        }
                        if fin {
                            open.remove(&id);
                        }
                    }
                }
                Frame::RstStream { id, .. } => {
                    open.remove(&id);
                }
                Frame::Ping(id) if id % 2 == 1 => {
                    let _ = tx.send(Frame::Ping(id)).await;
                }
                Frame::GoAway { .. } => break 'read,
                // Replies to our pings, settings, window updates and headers change nothing.
                _ => {}
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // Every open stream sees its end; no more streams are accepted.
    open.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client speaking through the codec to a served session over an in-memory pipe.
    #[tokio::test]
    async fn a_session_accepts_streams_echoes_pings_and_says_goodbye() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut conn = serve(server);
        let (mut crd, mut cwr) = tokio::io::split(client);
        let mut enc = frame::Encoder::new();
        let mut dec = frame::Decoder::new();
        let mut wire = Vec::new();
        let syn = |id, fin| Frame::SynStream {
            id,
            associated: 0,
            priority: 0,
            fin,
            unidirectional: false,
            headers: vec![("streamtype".into(), "data".into())],
        };
        for f in [
            syn(1, false),
            Frame::Data {
                id: 1,
                fin: false,
                data: Bytes::from_static(b"ping?"),
            },
            Frame::Data {
                id: 1,
                fin: true,
                data: Bytes::new(),
            },
            Frame::Ping(1),
            syn(1, false),
        ] {
            enc.encode(&f, &mut wire).unwrap();
        }
        cwr.write_all(&wire).await.unwrap();
        let mut s = conn.incoming.recv().await.unwrap();
        assert_eq!((s.id, s.header("StreamType")), (1, Some("data")));
        s.reply().await.unwrap();
        assert_eq!(s.read().await.as_deref(), Some(&b"ping?"[..]));
        assert_eq!(s.read().await, None, "FIN ends the client's side");
        s.write(b"pong").await.unwrap();
        s.finish().await;
        conn.close().await;
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        while crd.read_buf(&mut buf).await.unwrap() > 0 {
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(
            got,
            vec![
                Frame::Ping(1),
                Frame::RstStream {
                    id: 1,
                    status: frame::PROTOCOL_ERROR
                },
                Frame::SynReply {
                    id: 1,
                    fin: false,
                    headers: vec![]
                },
                Frame::Data {
                    id: 1,
                    fin: false,
                    data: Bytes::from_static(b"pong")
                },
                Frame::Data {
                    id: 1,
                    fin: true,
                    data: Bytes::new()
                },
                Frame::GoAway {
                    last_good: 1,
                    status: 0
                },
            ]
        );
    }
}
