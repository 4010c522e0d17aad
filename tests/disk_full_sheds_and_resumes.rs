//! A full disk: new work is answered 503 at once with a log line saying why, nothing
//! acknowledged is lost, nothing crashes, and serving resumes by itself when space returns.
//!
//! The data directory is a small ext4 filesystem on a loop device (this test needs root and
//! `mount`, as CI has; it fails, never skips, when it cannot mount one).
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Unmounts on drop (after the server it holds has been killed).
struct Mounted {
    point: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.point).status();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed (this test needs root and loop mounts): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mount_small_fs(dir: &Path, mib: u64) -> Mounted {
    let img = dir.join("fs.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(mib << 20).unwrap();
    run(Command::new("mkfs.ext4").arg("-q").arg("-F").arg(&img));
    let point = dir.join("data");
    std::fs::create_dir_all(&point).unwrap();
    run(Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&img)
        .arg(&point));
    Mounted { point }
}

fn free_bytes(path: &Path) -> u64 {
    corepay::store::space::free_bytes(path).unwrap()
}

#[test]
fn a_full_disk_sheds_new_work_and_serving_resumes_when_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let mounted = mount_small_fs(tmp.path(), 128);
    let data = mounted.point.clone();
    let mut s = Server::start_in(
        tmp,
        1,
        "[state]\nmin_free_mb = 24\ncheckpoint_interval_ms = 100\n\
         [wal]\nsegment_bytes = 4194304\n",
    );
    create_account(&s, 1001, "EUR", "1000.00");
    create_account(&s, 2001, "EUR", "0.00");
    let number = card_number("424242424242424");
    create_card(&s, &number, 1001);
    let key = create_merchant(&s, "SHOP1", 2001);
    let mut m = Client::with_key(s.http, &key);
    let pay = |m: &mut Client, i: usize| {
        let body = payment_json("1.00", "EUR", &number, (12, 2030), true, &format!("d{i}"));
        m.post("/v1/payments", &body)
    };
    let mut approved = Vec::new();
    for i in 0..50 {
        let (status, p) = pay(&mut m, i);
        assert_eq!(status, 201, "{p}");
        approved.push(p["id"].as_str().unwrap().to_string());
    }

    // Fill the disk to below state.min_free_mb.
    let ballast = data.join("ballast");
    let fill = free_bytes(&data).saturating_sub(12 << 20);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![0xA5u8; 1 << 20];
        for _ in 0..(fill >> 20) {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    assert!(free_bytes(&data) < 24 << 20);
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let (status, body) = pay(&mut m, 1000);
        if status == 503 {
            break body;
        }
        assert_eq!(status, 201, "{body}");
        approved.push(body["id"].as_str().unwrap().to_string());
        assert!(
            Instant::now() < deadline,
            "never shed while the disk is full"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        refused["error"]["type"].is_string(),
        "an error object: {refused}"
    );
    assert!(
        s.log().contains("disk nearly full"),
        "the log says why: {}",
        s.log()
    );
    // Reads still work; every acknowledged payment is there.
    for id in approved.iter().step_by(7) {
        let (status, p) = m.get(&format!("/v1/payments/{id}"));
        assert_eq!(status, 200, "{p}");
    }

    // Space returns: serving resumes without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = pay(&mut m, 2000);
        if status == 201 {
            approved.push(body["id"].as_str().unwrap().to_string());
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "serving never resumed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(s.log().contains("disk has room again"));

    // And nothing acknowledged was lost across a crash.
    s.kill9();
    s.spawn();
    let mut m = Client::with_key(s.http, &key);
    for id in &approved {
        let (status, p) = m.get(&format!("/v1/payments/{id}"));
        assert_eq!(status, 200, "{id}: {p}");
        assert_eq!(p["status"], "captured");
    }
    let (balance, _) = balance_held(&s, 1001);
    assert_eq!(balance, format!("{}.00", 1000 - approved.len()));
    s.kill9();
    drop(s);
    drop(mounted);
}
