//! The zfs provider against real OpenZFS in CeranaOS guests (`make test-zfs`; without
//! `CERANA_IMAGE_DIR` it fails under `make test`, skips elsewhere). Boots are shared between checks (TCG is slow):
//!
//! 1. one disk, `auto`: stripe pool and layout; every task and each bad input; a zvol under
//!    /dev/zvol; a 256 MiB send/receive with matching checksums, an incremental one; truncated,
//!    corrupt and garbage streams; `zfs-unpack` of a gzipped tar, and an escaping entry, a gzip
//!    bomb past the dataset's quota and garbage refused; a file in data/config. Powered off.
//! 2. that disk plus a blank one on ANOTHER machine (other UUID, so other hostid): the pool
//!    belongs to someone else, so nothing is imported or created; `pool-missing`.
//! 3. the first machine again with its disk: the pool is re-imported with data and data/config.
//!
//! And three blank disks with `auto`: raidz1.

mod common;

use cerana_testbed::{image_dir, require_ok};
use common::{disk_file, Node};
use serde_json::{json, Value};
use std::time::Instant;

const MIB: u64 = 1 << 20;
const LAYOUT: [&str; 6] = ["datasets", "running-clones", "config", "services", "logs", "platform"];

fn names(list: &Value) -> Vec<String> {
    list["datasets"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap().to_owned()).collect()
}

fn check_layout(node: &Node, layout: &str, disks: usize) {
    let status = node.ok("zfs-pool-status", json!({}));
    assert_eq!(status["imported"], true, "{status}");
    assert_eq!(status["layout"], layout, "{status}");
    assert_eq!(status["disks"].as_array().unwrap().len(), disks, "{status}");
    assert_eq!(status["health"], "ONLINE", "{status}");
    let listed = names(&node.ok("zfs-list", json!({ "name": "data", "depth": 1 })));
    for child in LAYOUT {
        assert!(listed.contains(&format!("data/{child}")), "data/{child} missing: {listed:?}");
    }
}

fn every_task_and_bad_input(n: &Node) {
    // Names: checked before ZFS sees them.
    let long = format!("data/{}", "a".repeat(252));
    assert_eq!(long.len(), 257);
    n.fails("zfs-create", json!({ "name": long }), "name_too_long", Some("name-too-long"));
    n.fails("zfs-create", json!({ "name": "data/bad*name" }), "invalid_argument", Some("invalid-argument"));
    n.fails("zfs-snapshot", json!({ "name": "data", "snapname": "a@b" }), "invalid_argument", Some("invalid-argument"));
    n.fails("zfs-create", json!({ "name": "data/x", "bogus": 1 }), "invalid_args", None);
    // create / exists / get
    n.fails("zfs-create", json!({ "name": "data/t/deep" }), "not_found", Some("not-found"));
    n.fails("zfs-create", json!({ "name": "nopool/x" }), "not_found", Some("pool-missing"));
    let made =
        n.ok("zfs-create", json!({ "name": "data/t", "properties": { "compression": "lz4", "quota": "104857600" } }));
    assert_eq!(made["name"], "data/t");
    n.fails("zfs-create", json!({ "name": "data/t" }), "already_exists", Some("exists"));
    n.fails(
        "zfs-create",
        json!({ "name": "data/p", "properties": { "bogus": "1" } }),
        "invalid_argument",
        Some("invalid-argument"),
    );
    assert!(!n.exists("data/p"));
    assert!(n.exists("data/t"));
    assert!(!n.exists("data/nope"));
    let got = n.ok("zfs-get", json!({ "name": "data/t" }));
    assert_eq!(got["properties"]["compression"], json!({ "value": "lz4", "source": "local" }));
    assert_eq!(got["properties"]["quota"]["value"], "104857600");
    assert_eq!(got["dataset"]["mountpoint"], "/data/t");
    assert_eq!(got["dataset"]["mounted"], true);
    n.fails("zfs-get", json!({ "name": "data/nope" }), "not_found", Some("not-found"));
    // snapshot (recursive), holds, list by type
    n.ok("zfs-create", json!({ "name": "data/t/child" }));
    n.ok("zfs-test-write", json!({ "dataset": "data/t", "file": "one", "bytes": MIB, "seed": 1 }));
    assert_eq!(
        n.ok("zfs-snapshot", json!({ "name": "data/t", "snapname": "s1", "recursive": true }))["name"],
        "data/t@s1"
    );
    assert!(n.exists("data/t/child@s1"));
    n.fails("zfs-snapshot", json!({ "name": "data/t", "snapname": "s1" }), "already_exists", Some("exists"));
    assert_eq!(n.ok("zfs-holds", json!({ "name": "data/t@s1" }))["holds"], json!([]));
    n.fails("zfs-holds", json!({ "name": "data/t" }), "invalid_argument", Some("invalid-argument"));
    n.fails("zfs-holds", json!({ "name": "data/t@nope" }), "not_found", Some("not-found"));
    let mut snaps = names(&n.ok("zfs-list", json!({ "name": "data/t", "types": ["snapshot"] })));
    snaps.sort();
    assert_eq!(snaps, ["data/t/child@s1", "data/t@s1"]);
    // clone, and destroying what has dependants
    n.ok("zfs-clone", json!({ "name": "data/tclone", "origin": "data/t@s1" }));
    assert_eq!(n.ok("zfs-get", json!({ "name": "data/tclone" }))["dataset"]["origin"], "data/t@s1");
    n.fails("zfs-clone", json!({ "name": "data/c2", "origin": "data/t@nope" }), "not_found", Some("not-found"));
    n.fails("zfs-destroy", json!({ "name": "data/t" }), "busy", Some("has-dependants"));
    n.fails("zfs-destroy", json!({ "name": "data/t@s1" }), "busy", Some("has-dependants"));
    n.fails("zfs-destroy", json!({ "name": "data/t", "defer": true }), "invalid_argument", Some("invalid-argument"));
    n.fails("zfs-destroy", json!({ "name": "data/gone" }), "not_found", Some("not-found"));
    assert!(n.exists("data/t@s1") && n.exists("data/t/child"), "a refused destroy lost data");
    // rename: a dataset; snapshots recursively
    n.ok("zfs-rename", json!({ "origin": "data/tclone", "name": "data/tclone2" }));
    assert!(n.exists("data/tclone2") && !n.exists("data/tclone"));
    n.ok("zfs-rename", json!({ "origin": "data/t@s1", "name": "data/t@r1", "recursive": true }));
    assert!(n.exists("data/t/child@r1"));
    n.fails("zfs-rename", json!({ "origin": "data/t", "name": "data/tclone2" }), "already_exists", Some("exists"));
    n.fails(
        "zfs-rename",
        json!({ "origin": "data/t@r1", "name": "data/x@r1" }),
        "invalid_argument",
        Some("invalid-argument"),
    );
    // rollback, refused while later snapshots exist
    n.ok("zfs-snapshot", json!({ "name": "data/t", "snapname": "s2" }));
    n.ok("zfs-test-write", json!({ "dataset": "data/t", "file": "two", "bytes": MIB, "seed": 2 }));
    n.ok("zfs-snapshot", json!({ "name": "data/t", "snapname": "s3" }));
    n.fails("zfs-rollback", json!({ "name": "data/t@s2" }), "busy", Some("has-dependants"));
    assert!(n.exists("data/t@s3"));
    n.ok("zfs-rollback", json!({ "name": "data/t@s2", "destroy_recent": true }));
    assert!(!n.exists("data/t@s3"));
    n.fails("zfs-test-read", json!({ "dataset": "data/t", "file": "two" }), "not_found", Some("not-found"));
    n.ok("zfs-test-read", json!({ "dataset": "data/t", "file": "one" }));
    n.fails("zfs-rollback", json!({ "name": "data/t" }), "invalid_argument", Some("invalid-argument"));
    // unmount, mount (with overlay)
    n.ok("zfs-unmount", json!({ "name": "data/t/child" }));
    assert_eq!(n.ok("zfs-get", json!({ "name": "data/t/child" }))["dataset"]["mounted"], false);
    n.fails("zfs-unmount", json!({ "name": "data/t/child" }), "invalid_argument", Some("invalid-argument"));
    n.ok("zfs-mount", json!({ "name": "data/t/child", "overlay": true }));
    assert_eq!(n.ok("zfs-get", json!({ "name": "data/t/child" }))["dataset"]["mounted"], true);
    n.ok("zfs-unmount", json!({ "name": "data/t/child", "force": true }));
    n.ok("zfs-mount", json!({ "name": "data/t/child" }));
    n.fails("zfs-mount", json!({ "name": "data/nope" }), "not_found", Some("not-found"));
    // a volume, with its /dev/zvol link from udev
    n.fails(
        "zfs-create",
        json!({ "name": "data/vol", "type": "volume" }),
        "invalid_argument",
        Some("invalid-argument"),
    );
    let vol = n.ok("zfs-create", json!({ "name": "data/vol", "type": "volume", "volsize": 64 * MIB }));
    assert_eq!(vol["device"], "/dev/zvol/data/vol", "{vol}");
    let listed = n.ok("zfs-list", json!({ "name": "data/vol", "types": ["volume"] }));
    assert_eq!(listed["datasets"][0]["volsize"], 64 * MIB);
    assert_eq!(listed["datasets"][0]["device"], "/dev/zvol/data/vol");
    // destroy, everything at once
    n.ok(
        "zfs-destroy",
        json!({ "name": "data/t", "recursive": true, "recursive_clones": true, "force_unmount": true }),
    );
    assert!(!n.exists("data/t") && !n.exists("data/tclone2"));
    // udev may still be probing the new volume (blkid holds it open for a moment): that is busy.
    for attempt in 1..=10 {
        match n.request("zfs-destroy", json!({ "name": "data/vol" }), None) {
            Ok(_) => break,
            Err(e) if e.reason.as_deref() == Some("busy") && attempt < 10 => {
                std::thread::sleep(std::time::Duration::from_secs(1))
            }
            Err(e) => panic!("destroying data/vol: {e:?}"),
        }
    }
}

/// 256 MiB through zfs-send and zfs-receive, paired by the coordinator inside the guest.
fn send_receive(n: &Node) -> String {
    n.ok("zfs-create", json!({ "name": "data/big" }));
    let started = Instant::now();
    let written =
        n.ok("zfs-test-write", json!({ "dataset": "data/big", "file": "blob", "bytes": 256 * MIB, "seed": 7 }));
    eprintln!("wrote 256 MiB in {:.1} s", started.elapsed().as_secs_f64());
    n.ok("zfs-snapshot", json!({ "name": "data/big", "snapname": "s" }));
    let started = Instant::now();
    let sent = n.request("zfs-send", json!({ "name": "data/big@s" }), None).unwrap();
    let stream = sent["stream"]["id"].as_str().expect("zfs-send returns a stream").to_owned();
    let received = n.request("zfs-receive", json!({ "name": "data/big-copy" }), Some(&stream)).unwrap();
    let secs = started.elapsed().as_secs_f64();
    let bytes = received["result"]["bytes"].as_u64().unwrap();
    eprintln!(
        "send|receive through the coordinator: {bytes} bytes in {secs:.1} s ({:.1} MiB/s)",
        bytes as f64 / MIB as f64 / secs
    );
    assert!(bytes > 256 * MIB, "{received}");
    let copy = n.ok("zfs-test-read", json!({ "dataset": "data/big-copy", "file": "blob" }));
    assert_eq!(copy, written, "the received copy differs");
    // Incremental: only the change travels.
    let small = n.ok("zfs-test-write", json!({ "dataset": "data/big", "file": "extra", "bytes": 2 * MIB, "seed": 8 }));
    n.ok("zfs-snapshot", json!({ "name": "data/big", "snapname": "s2" }));
    let sent = n.request("zfs-send", json!({ "name": "data/big@s2", "from": "data/big@s" }), None).unwrap();
    let stream = sent["stream"]["id"].as_str().unwrap().to_owned();
    let received = n.request("zfs-receive", json!({ "name": "data/big-copy" }), Some(&stream)).unwrap();
    assert!(received["result"]["bytes"].as_u64().unwrap() < 8 * MIB, "{received}");
    assert_eq!(n.ok("zfs-test-read", json!({ "dataset": "data/big-copy", "file": "extra" })), small);
    n.fails("zfs-send", json!({ "name": "data/big@nope" }), "not_found", Some("not-found"));
    n.fails(
        "zfs-send",
        json!({ "name": "data/big@s2", "from": "data/other@s" }),
        "invalid_argument",
        Some("invalid-argument"),
    );
    n.fails("zfs-receive", json!({ "name": "nopool/x" }), "not_found", Some("pool-missing"));
    written["sha256"].as_str().unwrap().to_owned()
}

/// Truncated, corrupt and garbage streams from the host: typed errors, nothing received,
/// nothing lost.
fn bad_streams(n: &Node) {
    n.ok("zfs-create", json!({ "name": "data/small" }));
    let original = n.ok("zfs-test-write", json!({ "dataset": "data/small", "file": "f", "bytes": 4 * MIB, "seed": 3 }));
    n.ok("zfs-snapshot", json!({ "name": "data/small", "snapname": "s" }));
    let sent = n.request("zfs-send", json!({ "name": "data/small@s" }), None).unwrap();
    let stream = n.read_stream(sent["stream"]["id"].as_str().unwrap());
    assert!(stream.len() as u64 > 4 * MIB, "{} bytes", stream.len());
    let good = n.request_with_upload("zfs-receive", json!({ "name": "data/small-good" }), stream.clone()).unwrap();
    assert_eq!(good["result"]["dataset"]["name"], "data/small-good");
    assert_eq!(n.ok("zfs-test-read", json!({ "dataset": "data/small-good", "file": "f" })), original);
    let again = n.request_with_upload("zfs-receive", json!({ "name": "data/small-good" }), stream.clone()).unwrap_err();
    assert_eq!((again.code.as_str(), again.reason.as_deref()), ("already_exists", Some("exists")), "{again:?}");
    let truncated = stream[..stream.len() / 2].to_vec();
    let mut corrupt = stream.clone();
    for b in &mut corrupt[stream.len() / 2..stream.len() / 2 + 4096] {
        *b ^= 0x5a;
    }
    let garbage = b"this is not a ZFS stream at all".repeat(1000);
    for (what, bytes) in [("truncated", truncated), ("corrupt", corrupt), ("garbage", garbage)] {
        let target = format!("data/small-{what}");
        let e = n.request_with_upload("zfs-receive", json!({ "name": target }), bytes).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.reason.as_deref()),
            ("invalid_argument", Some("stream-corrupt")),
            "{what}: {e:?}"
        );
        assert!(!n.exists(&target), "a {what} stream left {target} behind");
    }
    assert_eq!(n.ok("zfs-test-read", json!({ "dataset": "data/small", "file": "f" })), original);
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// `zfs-unpack` (issue #18's import-dataset): a gzipped archive from the host lands in a
/// dataset with its contents; an entry that would land outside, an archive past the dataset's
/// quota and garbage are refused with typed errors naming the cause.
fn archives(n: &Node) {
    n.ok("zfs-create", json!({ "name": "data/datasets/site", "properties": { "quota": "16777216" } }));
    let hello = b"hello from an archive\n".repeat(1000);
    let archive = gzip(&cerana_testbed::archive::files(&[
        ("index.html", 0o644, &hello),
        ("run.sh", 0o4755, b"#!/bin/sh\necho hi\n"),
    ]));
    let unpacked = n.request_with_upload("zfs-unpack", json!({ "name": "data/datasets/site" }), archive).unwrap();
    assert_eq!(unpacked["result"]["files"], 2, "{unpacked}");
    let sum = n.ok("zfs-test-read", json!({ "dataset": "data/datasets/site", "file": "index.html" }));
    use sha2::Digest;
    let expected: String = sha2::Sha256::digest(&hello).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!((sum["bytes"].as_u64(), sum["sha256"].as_str()), (Some(hello.len() as u64), Some(expected.as_str())));

    let escape = cerana_testbed::archive::files(&[("../../../etc/cerana-escape", 0o644, b"x")]);
    let e = n.request_with_upload("zfs-unpack", json!({ "name": "data/datasets/site" }), escape).unwrap_err();
    assert_eq!((e.code.as_str(), e.reason.as_deref()), ("invalid_argument", Some("invalid-argument")), "{e:?}");
    assert!(e.message.contains("../../../etc/cerana-escape"), "the entry is named: {e:?}");
    // 32 MiB of zeros (a gzip of some 32 KiB) into a dataset with a 16 MiB quota.
    let bomb = gzip(&cerana_testbed::archive::files(&[("zeros", 0o644, &vec![0u8; 32 * MIB as usize])]));
    let e = n.request_with_upload("zfs-unpack", json!({ "name": "data/datasets/site" }), bomb).unwrap_err();
    assert_eq!(e.reason.as_deref(), Some("invalid-argument"), "{e:?}");
    assert!(e.message.contains("\"zeros\"") && e.message.contains("budget"), "{e:?}");
    let garbage = b"not an archive".repeat(100);
    let e = n.request_with_upload("zfs-unpack", json!({ "name": "data/datasets/site" }), garbage).unwrap_err();
    assert_eq!(e.reason.as_deref(), Some("stream-corrupt"), "{e:?}");
    n.fails("zfs-unpack", json!({ "name": "data/no-such" }), "not_found", Some("not-found"));
    n.fails("zfs-unpack", json!({ "name": "data/datasets/site", "extra": 1 }), "invalid_args", None);
    eprintln!("zfs-unpack: an archive unpacked, an escape, a gzip bomb past the quota and garbage refused");
}

#[test]
fn one_disk_auto_every_task_streams_foreign_pool_and_reboot() {
    let image = require_ok!(image_dir());
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("node1-disk0.raw");
    disk_file(&disk, 2048 * MIB);
    const NODE1: &str = "6f1e0c3a-2b4d-4e5f-8a9b-0c1d2e3f4a5b";
    const NODE2: &str = "0a0b0c0d-1111-4222-8333-444455556666";

    let n = Node::boot(&image, "zfs-1disk", &[], std::slice::from_ref(&disk), NODE1, "cerana.zfs_config=auto");
    check_layout(&n, "stripe", 1);
    assert_eq!(n.ok("zfs-pool-status", json!({}))["bootstrap"]["action"], "created");
    every_task_and_bad_input(&n);
    let big_sum = send_receive(&n);
    bad_streams(&n);
    archives(&n);
    let config =
        n.ok("zfs-test-write", json!({ "dataset": "data/config", "file": "node.json", "bytes": 4096, "seed": 11 }));
    n.powerdown();

    // Another machine finds the disk: someone else's pool is neither imported nor overwritten.
    let other =
        Node::boot(&image, "zfs-foreign", &[1024 * MIB], std::slice::from_ref(&disk), NODE2, "cerana.zfs_config=auto");
    let status = other.ok("zfs-pool-status", json!({}));
    assert_eq!(status["imported"], false, "{status}");
    let report = &status["bootstrap"];
    assert_eq!(report["action"], "none", "{status}");
    assert!(report["problems"][0].as_str().unwrap().contains("not imported"), "{status}");
    let in_use: Vec<&Value> = report["disks"].as_array().unwrap().iter().filter(|d| !d["in_use"].is_null()).collect();
    assert_eq!(in_use.len(), 1, "{status}");
    assert!(in_use[0]["in_use"].as_str().unwrap().contains("\"data\""), "{status}");
    other.fails("zfs-create", json!({ "name": "data/x" }), "not_found", Some("pool-missing"));
    other.fails("zfs-list", json!({ "name": "data" }), "not_found", Some("pool-missing"));
    other.powerdown();

    // The same machine again: its pool comes back with the data and data/config.
    let n = Node::boot(&image, "zfs-reboot", &[], std::slice::from_ref(&disk), NODE1, "cerana.zfs_config=auto");
    let status = n.ok("zfs-pool-status", json!({}));
    assert_eq!(status["bootstrap"]["action"], "imported", "{status}");
    check_layout(&n, "stripe", 1);
    assert_eq!(n.ok("zfs-test-read", json!({ "dataset": "data/config", "file": "node.json" })), config);
    assert_eq!(n.ok("zfs-test-read", json!({ "dataset": "data/big-copy", "file": "blob" }))["sha256"], big_sum);
    assert!(n.exists("data/big@s2") && n.exists("data/small@s"));
    n.powerdown();
    eprintln!("one-disk scenario: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn three_disks_auto_make_raidz() {
    let image = require_ok!(image_dir());
    let started = Instant::now();
    let n = Node::boot(
        &image,
        "zfs-3disks",
        &[1024 * MIB; 3],
        &[],
        "3a3a3a3a-0000-4000-8000-000000000003",
        "cerana.zfs_config=auto",
    );
    check_layout(&n, "raidz1", 3);
    n.ok("zfs-create", json!({ "name": "data/datasets/x" }));
    assert!(n.exists("data/datasets/x"));
    n.powerdown();
    eprintln!("three-disk scenario: {:.1} s", started.elapsed().as_secs_f64());
}
