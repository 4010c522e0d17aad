//! corepay-perf: the open-loop load harness. It is built out in its own issue; until then it
//! only says so, so that nobody mistakes it for a measurement tool.
fn main() {
    eprintln!("corepay-perf: not built yet; use `cargo bench` for the primitive benchmarks");
    std::process::exit(2);
}
