//! Criterion benchmarks of the ISO 8583 codec: decode and encode of a typical 0100
//! authorization request (fields 2, 3, 4, 7, 11, 12, 13, 14, 18, 22, 25, 32, 35, 37, 41,
//! 42, 43, 49), with each bitmap encoding.
//!
//! Figures are machine-relative: compare runs made side by side on the same machine.

use corepay::iso8583::{decode, encode, BitmapEncoding};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

mod common;
use common::authorization;

fn codec(c: &mut Criterion) {
    let msg = authorization();
    for (name, encoding) in [
        ("binary", BitmapEncoding::Binary),
        ("hex", BitmapEncoding::HexAscii),
    ] {
        let mut frame = Vec::new();
        encode(&msg, encoding, &mut frame).expect("valid");
        assert_eq!(decode(&frame, encoding).as_ref(), Ok(&msg));

        let mut group = c.benchmark_group(format!("iso8583/{name}"));
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function("decode_0100", |b| {
            b.iter(|| decode(black_box(&frame), encoding).expect("valid"))
        });
        let mut out = Vec::with_capacity(frame.len());
        group.bench_function("encode_0100", |b| {
            b.iter(|| {
                out.clear();
                encode(black_box(&msg), encoding, &mut out).expect("valid");
                black_box(out.len())
            })
        });
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
