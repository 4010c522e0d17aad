//! The corepay ISO 8583 message flows: what each MTI means, in terms of the gateway's
//! operations, and how its response is built.
//!
//! Never: touches the ledger or the WAL, or keeps DE2/DE35 beyond the call that hashes them.

use crate::admission::Priority;
use crate::domain::{Currency, AMOUNT_MAX_MINOR};
use crate::gateway::service::{transfer_key, Answer, NewPayment};
use crate::gateway::{Admitted, Gateway, Peers, ServiceError};
use crate::iso8583::codec::{decode, decode_partial, encode, BitmapEncoding, Message};
use crate::ledger::state::card_expired;
use crate::ledger::*;
use crate::wal::SegmentDir;
use std::rc::Rc;

/// Fields every response echoes from its request (DESIGN.md §6).
pub const ECHOED: [u8; 11] = [3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49];

/// Who sends a connection's messages: the subject of its client certificate (mutual TLS),
/// and the acquiring institution ids (DE32) that `[[iso8583.acquirers]]` binds it to.
#[derive(Debug, Default)]
pub struct Peer {
    pub subject: Option<String>,
    /// `None`: any DE32 (no binding is configured).
    pub institutions: Option<Vec<Vec<u8>>>,
}

/// The ISO 8583 side of one shard.
pub struct IsoApi<D: SegmentDir, P: Peers> {
    pub gateway: Rc<Gateway<D, P>>,
    pub bitmap: BitmapEncoding,
    /// (certificate subject, the DE32 values it may send); empty: no binding.
    acquirers: Vec<(String, Vec<Vec<u8>>)>,
}

impl<D: SegmentDir + 'static, P: Peers + 'static> IsoApi<D, P> {
    pub fn new(gateway: Rc<Gateway<D, P>>, bitmap: BitmapEncoding) -> IsoApi<D, P> {
        IsoApi {
            gateway,
            bitmap,
            acquirers: Vec::new(),
        }
    }

    /// Binds client-certificate subjects to the institution ids they may send; once any is
    /// bound, a financial message whose DE32 is not bound to its connection's certificate
    /// is answered 58 (not permitted) and logged.
    pub fn with_acquirers(mut self, bindings: &[crate::config::AcquirerBinding]) -> Self {
        self.acquirers = bindings
            .iter()
            .map(|b| {
                let ids = b
                    .institution_ids
                    .iter()
                    .map(|id| strip_zeros(id.as_bytes()).to_vec())
                    .collect();
                (b.subject.clone(), ids)
            })
            .collect();
        self
    }

    /// The identity of a new connection whose client certificate has `subject`.
    pub fn peer(&self, subject: Option<String>) -> Peer {
        let institutions = (!self.acquirers.is_empty()).then(|| {
            self.acquirers
                .iter()
                .find(|(s, _)| Some(s) == subject.as_ref())
                .map(|(_, ids)| ids.clone())
                .unwrap_or_default()
        });
        Peer {
            subject,
            institutions,
        }
    }

    /// Answers one frame body. Returns the encoded response body, or `None` when nothing
    /// can be answered (the MTI is unreadable): the caller then closes the connection.
    pub async fn handle(&self, frame: &[u8], peer: &Peer) -> Option<Vec<u8>> {
        let request = match decode(frame, self.bitmap) {
            Ok(m) => m,
            Err(_) => return self.format_error(frame),
        };
        let response = self.respond(&request, peer).await;
        let mut out = Vec::with_capacity(256);
        encode(&response, self.bitmap, &mut out).expect("responses are built from valid fields");
        Some(out)
    }

    /// Admission for a frame as it is read (see `crate::admission`): `Ok` to handle it,
    /// holding its place until answered, or `Err` with a 91 answer to send at once.
    /// Authorizations and financial requests are new work; advices and reversals finish
    /// admitted work (an acquirer must get its reversals through); network management, and
    /// frames that are not requests, are not subject.
    pub fn admit(&self, frame: &[u8]) -> Result<Option<Admitted>, Option<Vec<u8>>> {
        let priority = match frame.get(..4) {
            Some(b"0100" | b"0101" | b"0200" | b"0201") => Priority::New,
            Some([b'0', b'2', b'2', b'0' | b'1'] | [b'0', b'4', b'0' | b'2', b'0' | b'1']) => {
                Priority::FollowUp
            }
            _ => return Ok(None),
        };
        match self.gateway.admit(priority) {
            Ok(place) => Ok(Some(place)),
            Err(_) => Err(self.refuse(frame)),
        }
    }

    /// The 91 answer to a frame that was shed (a 30 when it does not decode).
    pub fn refuse(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let Ok(request) = decode(frame, self.bitmap) else {
            return self.format_error(frame);
        };
        let mti = response_mti(request.mti())?;
        let mut out = Vec::with_capacity(128);
        encode(&answer(&request, mti, b"91"), self.bitmap, &mut out).ok()?;
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

    async fn respond(&self, request: &Message, peer: &Peer) -> Message {
        let Some(mti) = response_mti(request.mti()) else {
            // A response sent to us: say so with a format error under its own MTI.
            return answer(request, request.mti(), b"30");
        };
        let class = [request.mti()[0], request.mti()[1], request.mti()[2]];
        if let Some(allowed) = &peer.institutions {
            let de32 = strip_zeros(request.get(32).unwrap_or_default());
            if class != *b"080" && !allowed.iter().any(|id| id.as_slice() == de32) {
                crate::warn!("iso8583.acquirer_not_permitted":
                    "{}: DE32 {:?} is not bound to this client certificate; answered 58",
                    peer.subject.as_deref().unwrap_or("(no certificate)"),
                    String::from_utf8_lossy(de32)
                );
                return answer(request, mti, b"58");
            }
        }
        let result = match &class {
            b"080" => Ok(Verdict::code(b"00")),
            b"010" => self.authorization(request).await,
            b"020" => self.financial(request).await,
            b"022" => self.completion(request).await,
            b"040" => self.reversal(request, false).await,
            b"042" => self.reversal(request, true).await,
            _ => Err(FORMAT_ERROR),
        };
        let verdict = result.unwrap_or_else(Verdict::code);
        let mut r = answer(request, mti, &verdict.code);
        if class == *b"080" {
            if let Some(code) = request.get(70) {
                r.set(70, code);
            }
        }
        if let Some(approval) = &verdict.approval {
            r.set(38, approval.as_bytes());
        }
        if let Some(amounts) = &verdict.additional_amounts {
            r.set(54, amounts.as_bytes());
        }
        r
    }

    /// 0100: a hold (processing code 00xxxx) or a balance inquiry (31xxxx).
    async fn authorization(&self, m: &Message) -> Result<Verdict, Code> {
        match processing(m)? {
            b"00" => self.pay(m, false).await,
            b"31" => self.balance_inquiry(m).await,
            _ => Err(b"12"),
        }
    }

    /// 0200: a sale (00xxxx) or a refund to the card (20xxxx).
    async fn financial(&self, m: &Message) -> Result<Verdict, Code> {
        match processing(m)? {
            b"00" => self.pay(m, true).await,
            b"20" => self.refund_to_card(m).await,
            _ => Err(b"12"),
        }
    }

    async fn pay(&self, m: &Message, capture: bool) -> Result<Verdict, Code> {
        let (tag, merchant) = (self.dedup(m)?, self.merchant(m).await?);
        let (amount, currency) = (amount(m)?, currency(m)?);
        let card = card(m)?;
        let reference = m
            .get_str(37)
            .map(|s| CompactString::from(s.trim()))
            .unwrap_or_default();
        let gw = &self.gateway;
        let answer = repeat_after_in_flight(gw, tag.key, || {
            let p = NewPayment {
                amount,
                currency,
                pan: crate::secrets::Pan::from(&*card.pan),
                exp_month: card.exp.map_or(0, |e| e.0),
                exp_year: card.exp.map_or(0, |e| e.1),
                capture,
                reference: reference.clone(),
            };
            let merchant = merchant.clone();
            async move { gw.create_payment(&merchant, p, Some(tag)).await }
        })
        .await?;
        Ok(Verdict::of(&answer.outcome))
    }

    async fn balance_inquiry(&self, m: &Message) -> Result<Verdict, Code> {
        self.merchant(m).await?;
        let card = card(m)?;
        let Some((facts, account)) = self
            .gateway
            .card_account(&card.pan)
            .await
            .map_err(unavailable)?
        else {
            return Err(b"14");
        };
        let now = self.gateway.now();
        if facts.status != Status::Active {
            return Err(b"62");
        }
        let mismatch = card
            .exp
            .is_some_and(|(mm, yy)| (mm, yy) != (facts.exp_month, facts.exp_year));
        if mismatch || card_expired(facts.exp_month, facts.exp_year, now) {
            return Err(b"54");
        }
        match account.status {
            Status::Active => {}
            Status::Blocked => return Err(b"57"),
            Status::Closed => return Err(b"05"),
        }
        let c = account.currency.numeric();
        let signed = |v: i64| format!("{}{:012}", if v < 0 { 'D' } else { 'C' }, v.unsigned_abs());
        // DE54: account type 00, amount type 01 ledger balance / 02 available, currency, sign, amount.
        let amounts = format!(
            "0001{c:03}{}0002{c:03}{}",
            signed(account.balance),
            signed(account.balance - account.held)
        );
        Ok(Verdict {
            code: *b"00",
            approval: None,
            additional_amounts: Some(amounts),
        })
    }

    /// 0200 with processing code 20: money from the merchant's settlement account back to
    /// the card's account, as a transfer whose id is the message's duplicate key.
    async fn refund_to_card(&self, m: &Message) -> Result<Verdict, Code> {
        let (tag, merchant) = (self.dedup(m)?, self.merchant(m).await?);
        let (amount, currency) = (amount(m)?, currency(m)?);
        let card = card(m)?;
        let gw = &self.gateway;
        let Some((facts, _)) = gw.card_account(&card.pan).await.map_err(unavailable)? else {
            return Err(b"14");
        };
        if facts.status != Status::Active {
            return Err(b"62");
        }
        let id = format!("iso-{}", hex::encode(tag.key));
        let key = transfer_key(&id);
        let answer = repeat_after_in_flight(gw, key, || {
            let id = id.clone();
            gw.transfer(
                id,
                merchant.settlement,
                facts.account,
                amount,
                currency,
                tag.body,
            )
        })
        .await?;
        match answer.outcome {
            Outcome::Transfer(_) => Ok(Verdict {
                code: *b"00",
                approval: Some(hex::encode_upper(&tag.key[..3]).into()),
                additional_amounts: None,
            }),
            other => Ok(Verdict::of(&other)),
        }
    }

    /// 0220: captures the authorization named by DE90 for the amount in DE4.
    async fn completion(&self, m: &Message) -> Result<Verdict, Code> {
        let (tag, merchant) = (self.dedup(m)?, self.merchant(m).await?);
        let amount = amount(m)?;
        let gw = &self.gateway;
        let Some(original) = gw
            .payment_by_key(self.original_key(m)?)
            .await
            .map_err(unavailable)?
        else {
            return Err(b"25");
        };
        let answer = repeat_after_in_flight(gw, tag.key, || {
            gw.capture(&merchant, original.id, Some(amount), Some(tag))
        })
        .await?;
        Ok(Verdict::of(&answer.outcome))
    }

    /// 0400 / 0420: undoes the transaction named by DE90, fully or (with DE95) down to the
    /// replacement amount. Reversing twice releases once.
    async fn reversal(&self, m: &Message, advice: bool) -> Result<Verdict, Code> {
        let (tag, merchant) = (self.dedup(m)?, self.merchant(m).await?);
        let replacement = match m.get_str(95) {
            Some(text) => Some(parse_digits(&text[..12.min(text.len())]).ok_or(FORMAT_ERROR)?),
            None => None,
        };
        let gw = &self.gateway;
        let Some(original) = gw
            .payment_by_key(self.original_key(m)?)
            .await
            .map_err(unavailable)?
        else {
            // An advice of an unknown original is acknowledged and changes nothing.
            return if advice {
                Ok(Verdict::code(b"00"))
            } else {
                Err(b"25")
            };
        };
        if original.merchant != merchant.id {
            return Err(b"25");
        }
        let answer = match original.status {
            PaymentStatus::Authorized => match replacement {
                Some(r) if r > 0 && r < original.amount => {
                    repeat_after_in_flight(gw, tag.key, || {
                        gw.reduce_authorization(&merchant, original.id, r, Some(tag))
                    })
                    .await?
                }
                Some(r) if r >= original.amount => return Ok(Verdict::code(b"00")),
                _ => {
                    repeat_after_in_flight(gw, tag.key, || {
                        gw.void(&merchant, original.id, Some(tag))
                    })
                    .await?
                }
            },
            PaymentStatus::Captured
            | PaymentStatus::PartiallyCaptured
            | PaymentStatus::PartiallyRefunded => {
                let keep = replacement.unwrap_or(0);
                let undo = original.amount_captured - original.amount_refunded - keep;
                if undo <= 0 {
                    return Ok(Verdict::code(b"00"));
                }
                repeat_after_in_flight(gw, tag.key, || {
                    gw.refund(&merchant, original.id, Some(undo), Some(tag))
                })
                .await?
            }
            // Already reversed, expired, refunded or declined: nothing left to undo.
            _ => return Ok(Verdict::code(b"00")),
        };
        match answer.outcome {
            // A reversal racing another reversal of the same original finds it undone.
            Outcome::Rejected(Reject::InvalidState) => Ok(Verdict::code(b"00")),
            other => Ok(Verdict {
                approval: None,
                ..Verdict::of(&other)
            }),
        }
    }

    async fn merchant(&self, m: &Message) -> Result<MerchantFacts, Code> {
        let id = m
            .get_str(42)
            .map(str::trim_end)
            .and_then(MerchantId::parse)
            .ok_or(FORMAT_ERROR)?;
        match self.gateway.merchant(id).await.map_err(unavailable)? {
            Some(facts) => Ok(facts),
            None => Err(b"58"),
        }
    }

    /// The duplicate key (DE32, DE41, DE11, DE7) and a keyed fingerprint of what the
    /// message asks for: the same key with another request is not a retransmission.
    fn dedup(&self, m: &Message) -> Result<IdemTag, Code> {
        let key = duplicate_key(
            m.get(32).unwrap_or_default(),
            m.get(41).unwrap_or_default(),
            m.get(11).ok_or(FORMAT_ERROR)?,
            m.get(7).ok_or(FORMAT_ERROR)?,
        );
        let mti = m.mti();
        let mut parts: Vec<&[u8]> = vec![&mti[..3]];
        for f in [2u8, 3, 4, 14, 35, 42, 49, 90, 95] {
            parts.push(m.get(f).unwrap_or_default());
        }
        Ok(IdemTag {
            key,
            body: self.gateway.config.pan_key.mac16(&parts),
        })
    }

    /// The duplicate key of the original named by DE90 (original MTI 4, STAN 6, DE7 10,
    /// acquirer id 11, forwarding institution 11), at this message's terminal.
    fn original_key(&self, m: &Message) -> Result<Hash16, Code> {
        let de90 = m.get(90).ok_or(FORMAT_ERROR)?;
        if de90.len() != 42 {
            return Err(FORMAT_ERROR);
        }
        Ok(duplicate_key(
            &de90[20..31],
            m.get(41).unwrap_or_default(),
            &de90[4..10],
            &de90[10..20],
        ))
    }
}

type Code = &'static [u8; 2];
const FORMAT_ERROR: Code = b"30";

fn unavailable(_: ServiceError) -> Code {
    b"91"
}

/// What a flow decided: the response code and the fields that go with it.
struct Verdict {
    code: [u8; 2],
    approval: Option<CompactString>,
    additional_amounts: Option<String>,
}

impl Verdict {
    fn code(code: Code) -> Verdict {
        Verdict {
            code: *code,
            approval: None,
            additional_amounts: None,
        }
    }

    fn of(outcome: &Outcome) -> Verdict {
        match outcome {
            Outcome::Payment(view) => match view.decline {
                None => Verdict {
                    code: *b"00",
                    approval: view.approval_code.clone(),
                    additional_amounts: None,
                },
                Some(d) => Verdict::code(iso(d)),
            },
            Outcome::Rejected(r) => Verdict::code(iso(r.decline())),
            Outcome::Transfer(_) | Outcome::Done => Verdict::code(b"00"),
            _ => Verdict::code(b"96"),
        }
    }
}

fn iso(d: Decline) -> Code {
    d.iso_code()
        .as_bytes()
        .try_into()
        .expect("ISO codes are two characters")
}

/// Runs `op`; if another request with the same key is still running, waits for it and
/// runs `op` again, which then answers that request's stored result (a repeat).
async fn repeat_after_in_flight<D, P, F, Fut>(
    gw: &Rc<Gateway<D, P>>,
    key: Hash16,
    op: F,
) -> Result<Answer, Code>
where
    D: SegmentDir + 'static,
    P: Peers + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Answer, ServiceError>>,
{
    /// Waits for at most this many earlier attempts with the same key.
    const REPEATS_MAX: usize = 3;
    for _ in 0..REPEATS_MAX {
        match op().await {
            Ok(answer) => return Ok(answer),
            Err(ServiceError::IdempotencyInFlight) => {
                gw.await_idempotent(key).await.map_err(unavailable)?
            }
            Err(ServiceError::IdempotencyMismatch) => return Err(b"94"),
            Err(ServiceError::Unavailable) => return Err(b"91"),
        }
    }
    Err(b"91")
}

/// An institution id without its zero padding (DE90 and some hosts pad DE32).
fn strip_zeros(id: &[u8]) -> &[u8] {
    let first = id.iter().position(|&b| b != b'0').unwrap_or(id.len());
    &id[first..]
}

/// The key that makes two messages the same transaction: (DE32, DE41, DE11, DE7), with
/// DE32's leading zeros dropped (DE90 carries it zero-padded to 11 digits).
pub fn duplicate_key(acquirer: &[u8], terminal: &[u8], stan: &[u8], transmitted: &[u8]) -> Hash16 {
    let acquirer = strip_zeros(acquirer);
    let terminal = terminal.trim_ascii_end();
    crate::secrets::hash16(&[b"iso8583", acquirer, terminal, stan, transmitted])
}

fn processing(m: &Message) -> Result<&[u8], Code> {
    m.get(3).map(|p| &p[..2]).ok_or(FORMAT_ERROR)
}

fn parse_digits(text: &str) -> Option<i64> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

fn amount(m: &Message) -> Result<i64, Code> {
    let a = m.get_str(4).and_then(parse_digits).ok_or(FORMAT_ERROR)?;
    if a == 0 || a > AMOUNT_MAX_MINOR {
        return Err(b"13");
    }
    Ok(a)
}

fn currency(m: &Message) -> Result<Currency, Code> {
    let numeric = m.get_str(49).and_then(parse_digits).ok_or(FORMAT_ERROR)?;
    u16::try_from(numeric)
        .ok()
        .and_then(Currency::from_numeric)
        .ok_or(b"12")
}

/// The card as presented: DE2, or the PAN in DE35; expiry from DE14, or from DE35.
/// Track data stays in this value, in memory, and is dropped with it.
struct PresentedPan {
    pan: crate::secrets::Pan,
    exp: Option<(u8, u16)>,
}

fn card(m: &Message) -> Result<PresentedPan, Code> {
    let track = m.get_str(35);
    let (track_pan, track_exp) = match track {
        Some(t) => {
            let sep = t.find(['=', 'D']).ok_or(FORMAT_ERROR)?;
            (Some(&t[..sep]), t.get(sep + 1..sep + 5))
        }
        None => (None, None),
    };
    let pan = m.get_str(2).or(track_pan).ok_or(FORMAT_ERROR)?;
    if pan.len() < crate::secrets::PAN_MIN || !pan.bytes().all(|b| b.is_ascii_digit()) {
        return Err(b"14");
    }
    let yymm = m.get_str(14).or(track_exp);
    let exp = match yymm {
        Some(t) if t.len() == 4 => {
            let (yy, mm) = (
                parse_digits(&t[..2]).ok_or(FORMAT_ERROR)?,
                parse_digits(&t[2..]).ok_or(FORMAT_ERROR)?,
            );
            if !(1..=12).contains(&mm) {
                return Err(b"54");
            }
            Some((mm as u8, 2000 + yy as u16))
        }
        Some(_) => return Err(FORMAT_ERROR),
        None => None,
    };
    Ok(PresentedPan {
        pan: crate::secrets::Pan::from(pan),
        exp,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The exchange shown in README.md ("A worked exchange"), byte for byte.
    const README_0800: &str =
        "0027303830308220000000000000040000000000000031313231313230303030303030303031303031";
    const README_0810: &str =
        "00293038313082200000020000000400000000000000313132313132303030303030303030313030303031";
    const README_0100: &str = "0066303130307224000100c08000313634323432343234323432343234323432303030303030303030303030303031303030313132313132303030303030303030323330313230363132333435365445524d3030303153484f503120202020202020202020393738";

    fn framed(m: &Message) -> String {
        let mut body = Vec::new();
        encode(m, BitmapEncoding::Binary, &mut body).unwrap();
        let mut out = Vec::new();
        crate::iso8583::write_frame(crate::iso8583::Framing::Binary2, &body, &mut out);
        hex::encode(out)
    }

    #[test]
    fn the_readme_exchange_is_what_the_code_sends() {
        let readme = include_str!("../../README.md");
        let mut sign_on = Message::new(*b"0800");
        sign_on.set(7, b"1121120000");
        sign_on.set(11, b"000001");
        sign_on.set(70, b"001");
        assert_eq!(framed(&sign_on), README_0800);
        // The 0810 as `respond` builds it for an 0800.
        let mut reply = answer(&sign_on, response_mti(sign_on.mti()).unwrap(), b"00");
        reply.set(70, b"001");
        assert_eq!(framed(&reply), README_0810);
        let mut auth = Message::new(*b"0100");
        for (f, v) in [
            (2u8, &b"4242424242424242"[..]),
            (3, b"000000"),
            (4, b"000000001000"),
            (7, b"1121120000"),
            (11, b"000002"),
            (14, b"3012"),
            (32, b"123456"),
            (41, b"TERM0001"),
            (42, b"SHOP1          "),
            (49, b"978"),
        ] {
            auth.set(f, v);
        }
        assert_eq!(framed(&auth), README_0100);
        for hex in [README_0800, README_0810, README_0100] {
            assert!(readme.contains(hex), "README.md shows {hex}");
        }
    }

    #[test]
    fn response_mtis() {
        assert_eq!(response_mti(*b"0100"), Some(*b"0110"));
        assert_eq!(response_mti(*b"0101"), Some(*b"0110"));
        assert_eq!(response_mti(*b"0421"), Some(*b"0430"));
        assert_eq!(response_mti(*b"0300"), Some(*b"0310"));
        assert_eq!(response_mti(*b"0110"), None);
        assert_eq!(response_mti(*b"01a0"), None);
    }

    #[test]
    fn duplicate_keys_ignore_the_zero_padding_of_de90() {
        let direct = duplicate_key(b"123456", b"TERM0001", b"000002", b"1121120000");
        let from_de90 = duplicate_key(b"00000123456", b"TERM0001", b"000002", b"1121120000");
        assert_eq!(direct, from_de90);
        assert_ne!(
            direct,
            duplicate_key(b"123456", b"TERM0002", b"000002", b"1121120000")
        );
    }
}
