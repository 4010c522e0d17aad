//! The corepay ISO 8583 message flows: what each MTI means, in terms of the gateway's
//! operations, and how its response is built.
//!
//! Never: touches the ledger or the WAL, or keeps DE2/DE35 beyond the call that hashes them.

use crate::gateway::{Gateway, Peers};
use crate::iso8583::codec::{decode, decode_partial, encode, BitmapEncoding, Message};
use crate::wal::SegmentDir;
use std::rc::Rc;

/// Fields every response echoes from its request (DESIGN.md §6).
pub const ECHOED: [u8; 11] = [3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49];

/// The ISO 8583 side of one shard.
pub struct IsoApi<D: SegmentDir, P: Peers> {
    pub gateway: Rc<Gateway<D, P>>,
    pub bitmap: BitmapEncoding,
}

impl<D: SegmentDir + 'static, P: Peers + 'static> IsoApi<D, P> {
    pub fn new(gateway: Rc<Gateway<D, P>>, bitmap: BitmapEncoding) -> IsoApi<D, P> {
        IsoApi { gateway, bitmap }
    }

    /// Answers one frame body. Returns the encoded response body, or `None` when nothing
    /// can be answered (the MTI is unreadable): the caller then closes the connection.
    pub async fn handle(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let request = match decode(frame, self.bitmap) {
            Ok(m) => m,
            Err(_) => return self.format_error(frame),
        };
        let response = self.respond(&request).await;
        let mut out = Vec::with_capacity(256);
        encode(&response, self.bitmap, &mut out).expect("responses are built from valid fields");
        Some(out)
    }

    /// A 30 (format error) answer for a frame whose MTI (and maybe STAN) could be read.
    fn format_error(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let partial = decode_partial(frame, self.bitmap);
        let mti = response_mti(partial.mti?)?;
        let mut m = Message::new(mti);
        if let Some(stan) = partial.stan {
            m.set(11, &stan);
        }
        m.set(39, b"30");
        let mut out = Vec::with_capacity(64);
        encode(&m, self.bitmap, &mut out).ok()?;
        Some(out)
    }

    async fn respond(&self, request: &Message) -> Message {
        let Some(mti) = response_mti(request.mti()) else {
            // A response sent to us: say so with a format error under its own MTI.
            return answer(request, request.mti(), b"30");
        };
        match &request.mti() {
            b"0800" => {
                let mut r = answer(request, mti, b"00");
                if let Some(code) = request.get(70) {
                    r.set(70, code);
                }
                r
            }
            _ => answer(request, mti, b"30"),
        }
    }
}

/// The response MTI of a request MTI: the function digit + 1 and the origin digit 0
/// (0100 → 0110, 0101 repeat → 0110, 0420 → 0430, 0300 → 0310). None for an MTI that is
/// itself a response (odd function digit) or not four digits.
pub fn response_mti(mti: [u8; 4]) -> Option<[u8; 4]> {
    if !mti.iter().all(u8::is_ascii_digit) || (mti[2] - b'0') % 2 == 1 {
        return None;
    }
    Some([mti[0], mti[1], mti[2] + 1, b'0'])
}

/// A response with the echoed fields of `request` and response code `code`.
pub fn answer(request: &Message, mti: [u8; 4], code: &[u8; 2]) -> Message {
    let mut r = Message::new(mti);
    for f in ECHOED {
        if let Some(v) = request.get(f) {
            r.set(f, v);
        }
    }
    r.set(39, code);
    r
}
