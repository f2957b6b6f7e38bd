//! The protobuf wire format: varints, fixed-width values and length-delimited fields, with
//! offsets for error messages and a bound on every length.

use crate::DecodeError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    pub fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn err(&self, problem: &str) -> DecodeError {
        DecodeError::Malformed {
            offset: self.base + self.pos,
            problem: problem.into(),
        }
    }

    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(self.err("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| self.err("a length runs past the end of the message"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next field: its number and value.
    pub fn field(&mut self) -> Result<(u32, Value<'a>, usize), DecodeError> {
        let at = self.base + self.pos;
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| self.err("field number out of range"))?;
        if tag == 0 {
            return Err(self.err("field number 0"));
        }
        let v = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let len =
                    usize::try_from(self.varint()?).map_err(|_| self.err("length out of range"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            other => return Err(self.err(&format!("unsupported wire type {other}"))),
        };
        Ok((tag, v, at))
    }
}

/// The fields of one message, in order.
pub struct Fields<'a> {
    r: Reader<'a>,
    failed: bool,
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8], base: usize) -> Self {
        Self {
            r: Reader::new(buf, base),
            failed: false,
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), DecodeError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.r.done() {
            return None;
        }
        match self.r.field() {
            Ok((tag, v, _)) => Some(Ok((tag, v))),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
