//! Fixtures shared by the criterion benches.

use corepay::iso8583::Message;

/// A typical 0100 authorization request (fields 2, 3, 4, 7, 11, 12, 13, 14, 18, 22, 25, 32,
/// 35, 37, 41, 42, 43, 49).
pub fn authorization() -> Message {
    let mut msg = Message::new(*b"0100");
    let fields: [(u8, &[u8]); 18] = [
        (2, b"4111111111111111"),
        (3, b"000000"),
        (4, b"000000012550"),
        (7, b"0615120000"),
        (11, b"000001"),
        (12, b"120000"),
        (13, b"0615"),
        (14, b"2712"),
        (18, b"5411"),
        (22, b"051"),
        (25, b"00"),
        (32, b"12345678901"),
        (35, b"4111111111111111=27121010000012300000"),
        (37, b"000000000001"),
        (41, b"TERM0001"),
        (42, b"MERCHANT0000001"),
        (43, b"CORNER SHOP            LONDON         GB"),
        (49, b"978"),
    ];
    for (field, value) in fields {
        msg.set(field, value);
    }
    msg
}
