//! Any TFTP request datagram through the read-only handler: reads succeed only for regular
//! files inside the root, writes never succeed, nothing panics.
#![no_main]

use async_tftp::server::Handler;
use cerana_bootserver::config::TftpLimits;
use cerana_bootserver::events::EventLog;
use cerana_bootserver::tftp::{resolve, ReadOnlyDir};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    handler: Mutex<ReadOnlyDir>,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("efi")).unwrap();
        std::fs::write(root.join("undionly.kpxe"), b"loader").unwrap();
        std::fs::write(root.join("efi/snponly.efi"), b"efi").unwrap();
        std::fs::write(dir.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("/", root.join("slash")).unwrap();
        let root = root.canonicalize().unwrap();
        let handler = Mutex::new(ReadOnlyDir::new(&root, Arc::new(EventLog::new()), &TftpLimits::default()).unwrap());
        Fixture { _dir: dir, root, handler }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    // A request is opcode (2 bytes), file name, NUL, mode, NUL, options.
    if data.len() < 2 {
        return;
    }
    let opcode = u16::from_be_bytes([data[0], data[1]]);
    let name_bytes = data[2..].split(|b| *b == 0).next().unwrap_or_default();
    let Ok(name) = std::str::from_utf8(name_bytes) else { return };
    if let Ok(path) = resolve(&f.root, name) {
        assert!(path.starts_with(&f.root) && path.is_file(), "{name:?} resolved to {path:?}");
    }
    let client: SocketAddr = "10.5.0.77:1234".parse().unwrap();
    let mut handler = f.handler.lock().unwrap();
    match opcode {
        1 => {
            if futures_lite::future::block_on(handler.read_req_open(&client, Path::new(name))).is_ok() {
                assert!(resolve(&f.root, name).is_ok(), "{name:?} was opened but does not resolve inside the root");
            }
        }
        2 => {
            let refused = futures_lite::future::block_on(handler.write_req_open(&client, Path::new(name), None)).is_err();
            assert!(refused, "write request {name:?} accepted");
        }
        _ => {}
    }
});
