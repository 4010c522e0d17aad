//! Length-header framing of ISO 8583 messages on a byte stream: finding whole frames in
//! what a connection has received so far, and writing a header before a body.
//!
//! A frame is a length header (2-byte big-endian binary, or 4 ASCII decimal digits) and
//! then that many bytes of message body. A zero length is a keep-alive. A header that is
//! not a length, or a length over the limit, means the stream can no longer be split
//! reliably: the caller closes that connection (DESIGN.md §6).
//!
//! Never: reads sockets, owns or grows a buffer (the caller's buffer is looked at, never
//! kept), or decodes a body.

/// The length header in front of every message, per listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// A 2-byte big-endian binary length (the default).
    #[default]
    Binary2,
    /// A 4-byte ASCII decimal length, zero padded (`0042`).
    Ascii4,
}

impl Framing {
    /// Bytes of the header.
    pub const fn header_len(self) -> usize {
        match self {
            Framing::Binary2 => 2,
            Framing::Ascii4 => 4,
        }
    }

    /// The longest body the header can express.
    pub const fn max_body(self) -> usize {
        match self {
            Framing::Binary2 => u16::MAX as usize,
            Framing::Ascii4 => 9999,
        }
    }
}

/// The default maximum body size of a frame (DESIGN.md §6: 8 KiB).
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024;

const _: () = assert!(super::spec::MAX_MESSAGE_LEN <= DEFAULT_MAX_FRAME);
const _: () = assert!(super::spec::MAX_MESSAGE_LEN <= Framing::Ascii4.max_body());

/// Why a byte stream cannot be split into frames. The connection must be closed: after
/// a bad header there is no way to find the next frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The header announces a body longer than the configured maximum.
    TooLarge {
        /// The announced body length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// An ASCII header that is not four decimal digits.
    BadHeader {
        /// The header as received.
        header: [u8; 4],
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(
                    f,
                    "ISO 8583 frame of {len} bytes is over the maximum of {max}"
                )
            }
            FrameError::BadHeader { header } => write!(
                f,
                "ISO 8583 length header \"{}\" is not four decimal digits",
                header.escape_ascii()
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Finds whole frames at the start of a connection's receive buffer.
///
/// Stateless: call `next_frame` on the unconsumed bytes after every read, consume
/// `header_len + body_len` bytes per frame returned, and keep reading while it returns
/// `Ok(None)`. The caller's buffer never needs to hold more than
/// `header_len + max_frame` bytes before a frame is returned or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameReader {
    framing: Framing,
    max_frame: usize,
}

impl FrameReader {
    /// A reader of `framing` frames whose bodies are at most `max_frame` bytes
    /// (`max_frame` over what the header can express is taken as that maximum).
    pub fn new(framing: Framing, max_frame: usize) -> FrameReader {
        FrameReader {
            framing,
            max_frame: max_frame.min(framing.max_body()),
        }
    }

    /// The header kind.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The largest body accepted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Looks at `buf`, the unconsumed received bytes. `Ok(None)`: a frame is not complete
    /// yet, read more. `Ok(Some((header_len, body_len)))`: the body of the first frame is
    /// `buf[header_len..header_len + body_len]`; a `body_len` of 0 is a keep-alive the
    /// caller skips. `Err`: close the connection. A too-large length is refused as soon
    /// as its header has arrived, before its body.
    pub fn next_frame(&self, buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
        let header_len = self.framing.header_len();
        let len = match self.framing {
            Framing::Binary2 => match buf.first_chunk::<2>() {
                Some(&header) => usize::from(u16::from_be_bytes(header)),
                None => return Ok(None),
            },
            Framing::Ascii4 => match buf.first_chunk::<4>() {
                Some(&header) => ascii_len(header).ok_or(FrameError::BadHeader { header })?,
                None => return Ok(None),
            },
        };
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        debug_assert!(buf.len() >= header_len);
        if buf.len() - header_len < len {
            return Ok(None);
        }
        Ok(Some((header_len, len)))
    }
}

/// Appends `framing`'s header for `body`, then `body`, to `out`.
///
/// Panics if `body` is longer than the header can express: a caller bug, since every
/// message `encode` produces fits (`MAX_MESSAGE_LEN` is checked at compile time).
pub fn write_frame(framing: Framing, body: &[u8], out: &mut Vec<u8>) {
    assert!(
        body.len() <= framing.max_body(),
        "ISO 8583 body of {} bytes does not fit a {framing:?} header",
        body.len()
    );
    out.reserve(framing.header_len() + body.len());
    match framing {
        Framing::Binary2 => out.extend_from_slice(&(body.len() as u16).to_be_bytes()),
        Framing::Ascii4 => {
            let len = body.len();
            out.extend_from_slice(&[
                b'0' + (len / 1000) as u8,
                b'0' + (len / 100 % 10) as u8,
                b'0' + (len / 10 % 10) as u8,
                b'0' + (len % 10) as u8,
            ]);
        }
    }
    out.extend_from_slice(body);
}

fn ascii_len(header: [u8; 4]) -> Option<usize> {
    header.iter().try_fold(0usize, |len, &b| {
        b.is_ascii_digit().then(|| len * 10 + usize::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    const BOTH: [Framing; 2] = [Framing::Binary2, Framing::Ascii4];

    fn stream(framing: Framing, bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for body in bodies {
            write_frame(framing, body, &mut out);
        }
        out
    }

    /// Drives a reader the way a connection does: append what arrived, take every whole
    /// frame from the front, keep the rest.
    fn split(reader: &FrameReader, reads: &[&[u8]]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        for read in reads {
            buf.extend_from_slice(read);
            while let Some((header, body)) = reader.next_frame(&buf)? {
                frames.push(buf[header..header + body].to_vec());
                buf.drain(..header + body);
            }
        }
        assert!(buf.is_empty(), "bytes left over: {buf:?}");
        Ok(frames)
    }

    #[test]
    fn iso8583_framing_headers_by_hand() {
        let mut out = Vec::new();
        write_frame(Framing::Binary2, b"0800", &mut out);
        assert_eq!(out, b"\x00\x040800");
        out.clear();
        write_frame(Framing::Ascii4, b"0800", &mut out);
        assert_eq!(out, b"00040800");
        out.clear();
        write_frame(Framing::Binary2, &[b'x'; 300], &mut out);
        assert_eq!(&out[..2], &[0x01, 0x2C]);
        out.clear();
        write_frame(Framing::Ascii4, &[b'x'; 9999], &mut out);
        assert_eq!(&out[..4], b"9999");

        let binary = FrameReader::new(Framing::Binary2, DEFAULT_MAX_FRAME);
        assert_eq!(binary.next_frame(b"\x00\x040800"), Ok(Some((2, 4))));
        assert_eq!(binary.next_frame(b"\x00\x040800rest"), Ok(Some((2, 4))));
        let ascii = FrameReader::new(Framing::Ascii4, DEFAULT_MAX_FRAME);
        assert_eq!(ascii.next_frame(b"00040800"), Ok(Some((4, 4))));
        assert_eq!(ascii.next_frame(b"0004080"), Ok(None));
    }

    #[test]
    fn iso8583_framing_incomplete_needs_more() {
        let binary = FrameReader::new(Framing::Binary2, DEFAULT_MAX_FRAME);
        assert_eq!(binary.next_frame(b""), Ok(None));
        assert_eq!(binary.next_frame(b"\x00"), Ok(None));
        assert_eq!(binary.next_frame(b"\x00\x05abcd"), Ok(None));
        let ascii = FrameReader::new(Framing::Ascii4, DEFAULT_MAX_FRAME);
        assert_eq!(ascii.next_frame(b""), Ok(None));
        assert_eq!(ascii.next_frame(b"000"), Ok(None));
        assert_eq!(ascii.next_frame(b"0005abcd"), Ok(None));
    }

    #[test]
    fn iso8583_framing_split_at_every_byte_boundary() {
        let bodies: [&[u8]; 4] = [b"0800first", b"", b"0100second-frame", b"x"];
        for framing in BOTH {
            let reader = FrameReader::new(framing, DEFAULT_MAX_FRAME);
            let bytes = stream(framing, &bodies);
            let want: Vec<Vec<u8>> = bodies.iter().map(|b| b.to_vec()).collect();
            for at in 0..=bytes.len() {
                let (a, b) = bytes.split_at(at);
                assert_eq!(
                    split(&reader, &[a, b]),
                    Ok(want.clone()),
                    "{framing:?} at {at}"
                );
            }
            let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(split(&reader, &one_by_one), Ok(want.clone()));
            for i in 0..bytes.len() {
                for j in i..=bytes.len() {
                    let reads = [&bytes[..i], &bytes[i..j], &bytes[j..]];
                    assert_eq!(split(&reader, &reads), Ok(want.clone()), "{i} {j}");
                }
            }
        }
    }

    #[test]
    fn iso8583_framing_zero_length_keep_alive() {
        let binary = FrameReader::new(Framing::Binary2, DEFAULT_MAX_FRAME);
        assert_eq!(binary.next_frame(b"\x00\x00"), Ok(Some((2, 0))));
        assert_eq!(binary.next_frame(b"\x00\x00\x00"), Ok(Some((2, 0))));
        let ascii = FrameReader::new(Framing::Ascii4, DEFAULT_MAX_FRAME);
        assert_eq!(ascii.next_frame(b"0000"), Ok(Some((4, 0))));
        let mut out = Vec::new();
        write_frame(Framing::Ascii4, b"", &mut out);
        assert_eq!(out, b"0000");
    }

    #[test]
    fn iso8583_framing_too_large() {
        let binary = FrameReader::new(Framing::Binary2, 8192);
        assert_eq!(
            binary.next_frame(&[0x20, 0x01]),
            Err(FrameError::TooLarge {
                len: 8193,
                max: 8192
            })
        );
        assert_eq!(
            binary.next_frame(&[0xFF, 0xFF]),
            Err(FrameError::TooLarge {
                len: 65535,
                max: 8192
            })
        );
        // Exactly the maximum is allowed: wait for it, then return it.
        assert_eq!(binary.next_frame(&[0x20, 0x00]), Ok(None));
        let mut full = vec![0x20, 0x00];
        full.resize(2 + 8192, b'0');
        assert_eq!(binary.next_frame(&full), Ok(Some((2, 8192))));

        let ascii = FrameReader::new(Framing::Ascii4, 8192);
        assert_eq!(
            ascii.next_frame(b"8193"),
            Err(FrameError::TooLarge {
                len: 8193,
                max: 8192
            })
        );
        assert_eq!(
            ascii.next_frame(b"9999"),
            Err(FrameError::TooLarge {
                len: 9999,
                max: 8192
            })
        );
        assert_eq!(ascii.next_frame(b"8192"), Ok(None));

        // A configured maximum over what the header can say is that header's maximum.
        assert_eq!(FrameReader::new(Framing::Ascii4, 1 << 20).max_frame(), 9999);
        assert_eq!(
            FrameReader::new(Framing::Binary2, 1 << 20).max_frame(),
            65535
        );
        let tiny = FrameReader::new(Framing::Binary2, 0);
        assert_eq!(tiny.next_frame(b"\x00\x00"), Ok(Some((2, 0))));
        assert_eq!(
            tiny.next_frame(b"\x00\x01x"),
            Err(FrameError::TooLarge { len: 1, max: 0 })
        );
    }

    #[test]
    fn iso8583_framing_ascii_header_not_digits() {
        let ascii = FrameReader::new(Framing::Ascii4, DEFAULT_MAX_FRAME);
        for header in [
            *b"00a1",
            *b" 123",
            *b"-001",
            *b"+001",
            *b"12 3",
            *b"\x00\x00\x00\x04",
        ] {
            let mut buf = header.to_vec();
            buf.extend_from_slice(b"0800");
            assert_eq!(
                ascii.next_frame(&buf),
                Err(FrameError::BadHeader { header }),
                "{header:?}"
            );
        }
        // Refused as soon as the header is complete, whatever follows.
        assert_eq!(
            ascii.next_frame(b"00x0"),
            Err(FrameError::BadHeader { header: *b"00x0" })
        );
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn iso8583_framing_write_refuses_unexpressible_length() {
        write_frame(Framing::Ascii4, &[b'x'; 10_000], &mut Vec::new());
    }

    #[test]
    fn iso8583_framing_random_bytes_never_panic() {
        let mut rng = SmallRng::seed_from_u64(0x8583_f2a3);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..12);
            let buf: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            for framing in BOTH {
                let reader = FrameReader::new(framing, rng.gen_range(0..70_000));
                if let Ok(Some((header, body))) = reader.next_frame(&buf) {
                    assert_eq!(header, framing.header_len());
                    assert!(header + body <= buf.len());
                    assert!(body <= reader.max_frame());
                }
            }
        }
    }
}
