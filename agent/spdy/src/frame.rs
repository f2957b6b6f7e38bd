//! SPDY/3.1 frames: the 8-byte header, the control frames and data frames, and the
//! name/value header blocks, compressed with one zlib stream per direction for the life of the
//! connection (primed with [`DICTIONARY`], sync-flushed after each block).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::SpdyError;
use crate::dictionary::DICTIONARY;

/// Largest frame payload accepted (the field is 24 bits; nothing we serve needs more).
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;
/// Largest decompressed header block accepted.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const SETTINGS: u16 = 4;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
pub const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status: the stream is cancelled (what Kubernetes sends to refuse one).
pub const CANCEL: u32 = 5;
pub const PROTOCOL_ERROR: u32 = 1;

/// Header names (lowercase) and values; a name with several values carries them joined by NUL.
pub type Headers = Vec<(String, String)>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        id: u32,
        associated: u32,
        priority: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    Settings(Vec<(u32, u32)>),
    Ping(u32),
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        id: u32,
        delta: u32,
    },
    Data {
        id: u32,
        fin: bool,
        data: Bytes,
    },
}

/// Encodes frames: owns the sending direction's zlib stream.
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        let mut deflate = Compress::new(Compression::new(9), true);
        // Only the zlib-rs/zlib backends can fail here, and only for a stream already started.
        let _ = deflate.set_dictionary(DICTIONARY);
        Self { deflate }
    }

    fn header_block(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = Vec::new();
        raw.put_u32(headers.len() as u32);
        for (name, value) in headers {
            raw.put_u32(name.len() as u32);
            raw.put_slice(name.to_ascii_lowercase().as_bytes());
            raw.put_u32(value.len() as u32);
            raw.put_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            let used = (self.deflate.total_in() - before) as usize;
            input = &input[used..];
            // Done once all input is in and the flush fit (room left in the output).
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    /// Appends `frame`'s bytes to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let control = |out: &mut Vec<u8>, ty: u16, flags: u8, payload: &[u8]| {
            out.put_u16(0x8003);
            out.put_u16(ty);
            out.put_u32((u32::from(flags) << 24) | payload.len() as u32);
            out.put_slice(payload);
        };
        let mut p = Vec::new();
        match frame {
            Frame::SynStream {
                id,
                associated,
                priority,
                fin,
                unidirectional,
                headers,
            } => {
                p.put_u32(*id & 0x7fff_ffff);
                p.put_u32(*associated & 0x7fff_ffff);
                p.put_u8(priority << 5);
                p.put_u8(0);
                p.extend(self.header_block(headers)?);
                let flags =
                    (u8::from(*fin) * FLAG_FIN) | (u8::from(*unidirectional) * FLAG_UNIDIRECTIONAL);
                control(out, SYN_STREAM, flags, &p);
            }
            Frame::SynReply { id, fin, headers } => {
                p.put_u32(*id & 0x7fff_ffff);
                p.extend(self.header_block(headers)?);
                control(out, SYN_REPLY, u8::from(*fin) * FLAG_FIN, &p);
            }
            Frame::Headers { id, fin, headers } => {
                p.put_u32(*id & 0x7fff_ffff);
                p.extend(self.header_block(headers)?);
                control(out, HEADERS, u8::from(*fin) * FLAG_FIN, &p);
            }
            Frame::RstStream { id, status } => {
                p.put_u32(*id & 0x7fff_ffff);
                p.put_u32(*status);
                control(out, RST_STREAM, 0, &p);
            }
            Frame::Settings(entries) => {
                p.put_u32(entries.len() as u32);
                for (flags_id, value) in entries {
                    p.put_u32(*flags_id);
                    p.put_u32(*value);
                }
                control(out, SETTINGS, 0, &p);
            }
            Frame::Ping(id) => {
                p.put_u32(*id);
                control(out, PING, 0, &p);
            }
            Frame::GoAway { last_good, status } => {
                p.put_u32(*last_good & 0x7fff_ffff);
                p.put_u32(*status);
                control(out, GOAWAY, 0, &p);
            }
            Frame::WindowUpdate { id, delta } => {
                p.put_u32(*id & 0x7fff_ffff);
                p.put_u32(*delta & 0x7fff_ffff);
                control(out, WINDOW_UPDATE, 0, &p);
            }
            Frame::Data { id, fin, data } => {
                if data.len() > MAX_PAYLOAD {
                    return Err(SpdyError::TooLarge(data.len()));
                }
                out.put_u32(*id & 0x7fff_ffff);
                out.put_u32((u32::from(u8::from(*fin) * FLAG_FIN) << 24) | data.len() as u32);
                out.put_slice(data);
            }
        }
        Ok(())
    }
}

/// Decodes frames: owns the receiving direction's zlib stream.
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self {
            inflate: Decompress::new(true),
        }
    }

    fn header_block(&mut self, mut input: &[u8]) -> Result<Headers, SpdyError> {
        let mut raw: Vec<u8> = Vec::with_capacity(input.len() * 4 + 64);
        loop {
            raw.reserve(1024);
            let before = self.inflate.total_in();
            let r = self
                .inflate
                .decompress_vec(input, &mut raw, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before) as usize;
            input = &input[used..];
            match r {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    if input.is_empty() && raw.len() < raw.capacity() {
                        break;
                    }
                }
                // The peer's stream names the dictionary (FDICT): prime and go on.
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| SpdyError::Compression(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Compression(e.to_string())),
            }
            if raw.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::Protocol("header block too large".into()));
            }
        }
        parse_headers(&raw)
    }

    /// Takes one frame off the front of `buf`; `None` until a whole frame is there.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let word = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if buf.len() < 8 + len {
            buf.reserve(8 + len - buf.len());
            return Ok(None);
        }
        buf.advance(8);
        let mut p = buf.split_to(len).freeze();
        let fin = flags & FLAG_FIN != 0;
        if word & 0x8000_0000 == 0 {
            let id = word & 0x7fff_ffff;
            if id == 0 {
                return Err(SpdyError::Protocol("data frame for stream 0".into()));
            }
            return Ok(Some(Frame::Data { id, fin, data: p }));
        }
        let ty = (word & 0xffff) as u16;
        let need = |p: &Bytes, n: usize, what: &str| {
            if p.len() < n {
                Err(SpdyError::Protocol(format!("{what} frame too short")))
            } else {
                Ok(())
            }
        };
        let frame = match ty {
            SYN_STREAM => {
                need(&p, 10, "SYN_STREAM")?;
                let id = p.get_u32() & 0x7fff_ffff;
                let associated = p.get_u32() & 0x7fff_ffff;
                let priority = p.get_u8() >> 5;
                p.advance(1);
                Frame::SynStream {
                    id,
                    associated,
                    priority,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers: self.header_block(&p)?,
                }
            }
            SYN_REPLY => {
                need(&p, 4, "SYN_REPLY")?;
                let id = p.get_u32() & 0x7fff_ffff;
                Frame::SynReply {
                    id,
                    fin,
                    headers: self.header_block(&p)?,
                }
            }
            HEADERS => {
                need(&p, 4, "HEADERS")?;
                let id = p.get_u32() & 0x7fff_ffff;
                Frame::Headers {
                    id,
                    fin,
                    headers: self.header_block(&p)?,
                }
            }
            RST_STREAM => {
                need(&p, 8, "RST_STREAM")?;
                Frame::RstStream {
                    id: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                }
            }
            SETTINGS => {
                need(&p, 4, "SETTINGS")?;
                let n = p.get_u32() as usize;
                need(&p, n.saturating_mul(8), "SETTINGS")?;
                Frame::Settings((0..n).map(|_| (p.get_u32(), p.get_u32())).collect())
            }
            PING => {
                need(&p, 4, "PING")?;
                Frame::Ping(p.get_u32())
            }
            GOAWAY => {
                need(&p, 8, "GOAWAY")?;
                Frame::GoAway {
                    last_good: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                }
            }
            WINDOW_UPDATE => {
                need(&p, 8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    id: p.get_u32() & 0x7fff_ffff,
                    delta: p.get_u32() & 0x7fff_ffff,
                }
            }
            other => {
                return Err(SpdyError::Protocol(format!(
                    "unknown control frame type {other}"
                )));
            }
        };
        Ok(Some(frame))
    }
}

fn parse_headers(raw: &[u8]) -> Result<Headers, SpdyError> {
    let mut b = raw;
    let short = || SpdyError::Protocol("truncated header block".into());
    let take_u32 = |b: &mut &[u8]| -> Result<usize, SpdyError> {
        if b.len() < 4 {
            return Err(short());
        }
        Ok(b.get_u32() as usize)
    };
    let take_str = |b: &mut &[u8], n: usize| -> Result<String, SpdyError> {
        if b.len() < n {
            return Err(short());
        }
        let s = String::from_utf8_lossy(&b[..n]).into_owned();
        b.advance(n);
        Ok(s)
    };
    let n = take_u32(&mut b)?;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let nl = take_u32(&mut b)?;
        let name = take_str(&mut b, nl)?.to_ascii_lowercase();
        let vl = take_u32(&mut b)?;
        let value = take_str(&mut b, vl)?;
        out.push((name, value));
    }
    Ok(out)
}

/// The value of header `name` (case-insensitive), if present.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn frames_round_trip_through_one_zlib_stream() {
        let mut enc = Encoder::new();
        let mut dec = Decoder::new();
        let frames = vec![
            Frame::SynStream {
                id: 1,
                associated: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: h(&[
                    ("streamtype", "error"),
                    ("port", "8080"),
                    ("requestid", "0"),
                ]),
            },
            Frame::SynReply {
                id: 1,
                fin: false,
                headers: vec![],
            },
            Frame::SynStream {
                id: 3,
                associated: 0,
                priority: 2,
                fin: true,
                unidirectional: false,
                headers: h(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]),
            },
            Frame::Data {
                id: 3,
                fin: false,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                id: 3,
                fin: true,
                data: Bytes::new(),
            },
            Frame::RstStream {
                id: 5,
                status: CANCEL,
            },
            Frame::Ping(7),
            Frame::Settings(vec![(4, 100)]),
            Frame::WindowUpdate { id: 3, delta: 1000 },
            Frame::GoAway {
                last_good: 3,
                status: 0,
            },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            enc.encode(f, &mut wire).unwrap();
        }
        // Delivered a byte at a time: frames come out only once whole.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire {
            buf.put_u8(b);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn a_go_style_stream_with_the_dictionary_flag_decodes() {
        // An empty header block as the first of its direction, compressed by zlib at level 9
        // with the SPDY dictionary and a sync flush (so it starts 78 F9 + the DICTID).
        let block = [
            0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0xa6, 0x23, 0x06, 0x00, 0x00, 0x00, 0x00,
            0xff, 0xff,
        ];
        let mut wire = vec![0x80, 0x03, 0x00, 0x02, 0x00, 0x00, 0x00, 0x14, 0, 0, 0, 1];
        wire.extend(block);
        let mut buf = BytesMut::from(&wire[..]);
        let f = Decoder::new().decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::SynReply {
                id: 1,
                fin: false,
                headers: vec![]
            }
        );
    }

    #[test]
    fn bad_frames_are_named() {
        let mut dec = Decoder::new();
        let mut unknown = BytesMut::from(&[0x80, 0x03, 0x00, 0x05, 0, 0, 0, 0][..]);
        assert!(
            dec.decode(&mut unknown)
                .unwrap_err()
                .to_string()
                .contains("unknown control frame type 5")
        );
        let mut short = BytesMut::from(&[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 2, 0, 0][..]);
        assert!(
            dec.decode(&mut short)
                .unwrap_err()
                .to_string()
                .contains("PING")
        );
        let mut zero = BytesMut::from(&[0, 0, 0, 0, 0, 0, 0, 0][..]);
        assert!(dec.decode(&mut zero).is_err());
    }

    #[test]
    fn the_dictionary_is_the_specs() {
        assert_eq!(DICTIONARY.len(), 1423);
        let (mut a, mut b) = (1u32, 0u32);
        for &x in DICTIONARY {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }
}
