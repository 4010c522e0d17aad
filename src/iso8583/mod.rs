//! ISO 8583:1987 for acquirers, the corepay profile of DESIGN.md §6, at the protocol
//! level: the field table (`spec`), the message codec (`codec`) and the length-header
//! framing (`framing`).
//!
//! Data flow: connection bytes → `FrameReader::next_frame` → `decode` → `Message` → (the
//! flows, elsewhere) → `encode` → `write_frame` → connection bytes.
//!
//! Never: does I/O, names the runtime, or decides what a message means: MTIs, response
//! codes and the mapping to payments belong to the flow layer. Nothing a peer sends can
//! make this module panic or read outside its input (`fuzz/fuzz_targets/decode.rs`).

pub mod codec;
pub mod flows;
pub mod framing;
pub mod spec;

pub use codec::{
    decode, decode_partial, encode, BitmapEncoding, DecodeError, EncodeError, Message, Partial,
};
pub use framing::{write_frame, FrameError, FrameReader, Framing, DEFAULT_MAX_FRAME};
pub use spec::{spec, Class, FieldSpec, Len, FIELDS, MAX_MESSAGE_LEN};
