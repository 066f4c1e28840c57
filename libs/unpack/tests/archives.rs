//! Real archives unpacked into a temporary directory (as root, so ownership is kept): a root
//! filesystem in every compression, and each hostile archive the issue names refused with its
//! entry, nothing outside the target touched.

use cerana_unpack::{unpack, Compression, Limits, UnpackError};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tar::{Builder, EntryType};

use cerana_testbed::archive::{entry, MTIME};

fn file(b: &mut Builder<Vec<u8>>, name: &str, mode: u32, data: &[u8]) {
    entry(b, name, EntryType::Regular, mode, (0, 0), data, "");
}

fn dir(b: &mut Builder<Vec<u8>>, name: &str, mode: u32) {
    entry(b, name, EntryType::Directory, mode, (0, 0), b"", "");
}

fn symlink(b: &mut Builder<Vec<u8>>, name: &str, to: &str) {
    entry(b, name, EntryType::Symlink, 0o777, (0, 0), b"", to);
}

fn archive(build: impl FnOnce(&mut Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn compress(tar: &[u8], how: Compression) -> Vec<u8> {
    match how {
        Compression::Plain => tar.to_vec(),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).unwrap();
            gz.finish().unwrap()
        }
        Compression::Zstd => ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest),
    }
}

/// A target directory beside an `outside` one holding a `victim` file.
struct Scene {
    _dir: tempfile::TempDir,
    target: PathBuf,
    outside: PathBuf,
}

impl Scene {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (target, outside) = (dir.path().join("target"), dir.path().join("outside"));
        std::fs::create_dir(&target).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(outside.join("victim"), b"original").unwrap();
        Scene { _dir: dir, target, outside }
    }

    fn unpack(&self, bytes: &[u8]) -> Result<cerana_unpack::Unpacked, UnpackError> {
        unpack(bytes, &self.target, &Limits::new(64 << 20))
    }

    /// Nothing outside the target changed.
    fn outside_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(&self.outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["victim"], "outside: {names:?}");
        assert_eq!(std::fs::read(self.outside.join("victim")).unwrap(), b"original");
        assert_eq!(std::fs::metadata(&self.outside).unwrap().mode() & 0o7777, 0o755);
        let parent = self.target.parent().unwrap();
        let beside: Vec<_> = std::fs::read_dir(parent).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(beside.len(), 2, "beside the target: {beside:?}");
    }
}

fn meta(path: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_root_filesystem_unpacks_with_owners_modes_times_and_links_in_every_compression() {
    let tar = archive(|b| {
        dir(b, "./", 0o755);
        dir(b, "bin/", 0o755);
        file(b, "bin/busybox", 0o755, b"\x7fELF busybox");
        file(b, "bin/su", 0o4755, b"setuid");
        symlink(b, "bin/sh", "busybox");
        entry(b, "bin/ln", EntryType::Link, 0o755, (0, 0), b"", "bin/busybox");
        symlink(b, "lib64", "/lib");
        entry(b, "home/u/", EntryType::Directory, 0o700, (1000, 100), b"", "");
        entry(b, "home/u/notes", EntryType::Regular, 0o640, (1000, 100), b"mine", "");
        dir(b, "etc/ro/", 0o555);
        file(b, "etc/ro/hostname", 0o444, b"cerana\n");
        entry(b, "run/fifo", EntryType::Fifo, 0o620, (1000, 100), b"", "");
    });
    for how in [Compression::Plain, Compression::Gzip, Compression::Zstd] {
        let scene = Scene::new();
        let t = &scene.target;
        let done = scene.unpack(&compress(&tar, how)).unwrap_or_else(|e| panic!("{how:?}: {e}"));
        assert_eq!(done.compression, Some(how));
        assert_eq!((done.files, done.symlinks, done.hard_links, done.fifos), (4, 2, 1, 1), "{done:?}");
        assert!(done.bytes >= tar.len() as u64 - 1024, "{done:?}");
        assert_eq!(std::fs::read(t.join("bin/busybox")).unwrap(), b"\x7fELF busybox");
        assert_eq!(meta(&t.join("bin/su")).mode() & 0o7777, 0o4755, "set-uid kept");
        assert_eq!(std::fs::read_link(t.join("bin/sh")).unwrap(), Path::new("busybox"));
        assert_eq!(std::fs::read_link(t.join("lib64")).unwrap(), Path::new("/lib"), "a link's target is data");
        assert_eq!(meta(&t.join("bin/ln")).ino(), meta(&t.join("bin/busybox")).ino());
        let home = meta(&t.join("home/u"));
        assert_eq!((home.uid(), home.gid(), home.mode() & 0o7777), (1000, 100, 0o700));
        let notes = meta(&t.join("home/u/notes"));
        assert_eq!((notes.uid(), notes.gid(), notes.mode() & 0o7777, notes.mtime()), (1000, 100, 0o640, MTIME as i64));
        assert_eq!(meta(&t.join("etc/ro")).mode() & 0o7777, 0o555, "read-only, and its file still unpacked");
        assert_eq!(std::fs::read(t.join("etc/ro/hostname")).unwrap(), b"cerana\n");
        let fifo = meta(&t.join("run/fifo"));
        assert!(fifo.file_type().is_fifo() && fifo.mode() & 0o7777 == 0o620 && fifo.uid() == 1000, "{fifo:?}");
        assert_eq!(meta(t).mode() & 0o7777, 0o755);
        assert_eq!(meta(&t.join("bin")).mtime(), MTIME as i64, "directory times set last");
        scene.outside_untouched();
    }
}

#[test]
fn entries_that_would_land_outside_are_refused_with_their_name() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a .. component", archive(|b| file(b, "../outside/evil", 0o644, b"x")), "../outside/evil"),
        ("deeper ..", archive(|b| file(b, "a/../../outside/evil", 0o644, b"x")), "a/../../outside/evil"),
        ("an absolute path", archive(|b| file(b, "/tmp/cerana-unpack-evil", 0o644, b"x")), "/tmp/cerana-unpack-evil"),
        (
            "through an absolute symlink",
            archive(|b| {
                symlink(b, "lnk", "/tmp");
                file(b, "lnk/cerana-unpack-evil", 0o644, b"x");
            }),
            "lnk/cerana-unpack-evil",
        ),
        (
            "through a relative symlink that climbs out",
            archive(|b| {
                symlink(b, "up", "../outside");
                file(b, "up/evil", 0o644, b"x");
            }),
            "up/evil",
        ),
        (
            "a directory through a symlink",
            archive(|b| {
                symlink(b, "up", "../outside");
                dir(b, "up/sub/", 0o755);
            }),
            "up/sub/",
        ),
        (
            "a hard link to outside",
            archive(|b| entry(b, "h", EntryType::Link, 0o644, (0, 0), b"", "../outside/victim")),
            "h",
        ),
        (
            "a hard link through a symlink",
            archive(|b| {
                symlink(b, "up", "../outside");
                entry(b, "h", EntryType::Link, 0o644, (0, 0), b"", "up/victim");
            }),
            "h",
        ),
        ("a . entry that is a symlink", archive(|b| symlink(b, ".", "/")), "."),
    ];
    for (what, tar, named) in cases {
        let scene = Scene::new();
        let err = scene.unpack(&tar).expect_err(what);
        assert!(matches!(err, UnpackError::Escapes { .. }), "{what}: {err}");
        assert!(err.to_string().contains(&format!("{named:?}")), "{what}: the entry is named: {err}");
        scene.outside_untouched();
        assert!(!Path::new("/tmp/cerana-unpack-evil").exists(), "{what}");
    }
}

#[test]
fn links_are_replaced_never_written_through() {
    let scene = Scene::new();
    let victim = scene.outside.join("victim");
    let tar = archive(|b| {
        // A symlink to a file outside, then a file of that name: the link goes, the victim stays.
        symlink(b, "s", victim.to_str().unwrap());
        file(b, "s", 0o644, b"pwned");
        // A symlink to a directory outside, then a directory of that name with mode 0777 (the
        // tar crate's chmod through a symlink, RUSTSEC-2026-0067).
        symlink(b, "d", scene.outside.to_str().unwrap());
        dir(b, "d/", 0o777);
        // A hard link inside, then a file of its name: the linked file keeps its content.
        file(b, "a", 0o644, b"orig");
        entry(b, "b", EntryType::Link, 0o644, (0, 0), b"", "a");
        file(b, "b", 0o644, b"new");
        // A fifo outside linked to, then written: the same.
        symlink(b, "f", "/dev/null");
        file(b, "f", 0o600, b"not into /dev/null");
    });
    scene.unpack(&tar).unwrap();
    let t = &scene.target;
    assert_eq!(std::fs::read(t.join("s")).unwrap(), b"pwned");
    assert!(meta(&t.join("s")).file_type().is_file());
    assert!(meta(&t.join("d")).is_dir() && meta(&t.join("d")).mode() & 0o7777 == 0o777);
    assert_eq!(std::fs::read(t.join("a")).unwrap(), b"orig");
    assert_eq!(std::fs::read(t.join("b")).unwrap(), b"new");
    assert!(meta(Path::new("/dev/null")).file_type().is_char_device());
    scene.outside_untouched();
}

#[test]
fn device_nodes_are_refused() {
    for (kind, name) in [(EntryType::Char, "dev/null"), (EntryType::Block, "dev/sda")] {
        let scene = Scene::new();
        let tar = archive(|b| entry(b, name, kind, 0o600, (0, 0), b"", ""));
        let err = scene.unpack(&tar).unwrap_err();
        assert!(matches!(&err, UnpackError::Device { entry } if entry == name), "{err}");
        assert!(!scene.target.join(name).exists());
    }
}

#[test]
fn the_budget_counts_decompressed_bytes() {
    // 32 MiB of zeros: a gzip of about 32 KiB, against a budget of 1 MiB.
    let zeros = vec![0u8; 32 << 20];
    let bomb = archive(|b| file(b, "zeros", 0o644, &zeros));
    let gz = compress(&bomb, Compression::Gzip);
    assert!(gz.len() < 1 << 20, "{}", gz.len());
    let scene = Scene::new();
    let err = unpack(&gz[..], &scene.target, &Limits::new(1 << 20)).unwrap_err();
    assert!(matches!(&err, UnpackError::TooLarge { entry, limit: 1048576 } if entry == "zeros"), "{err}");
    // Many small files add up the same way, in zstd too.
    let many = archive(|b| {
        for i in 0..64 {
            file(b, &format!("f{i}"), 0o644, &[7u8; 32 << 10]);
        }
    });
    let err = unpack(&compress(&many, Compression::Zstd)[..], &scene.target, &Limits::new(1 << 20)).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    let err = unpack(&many[..], &scene.target, &Limits { max_bytes: 64 << 20, max_entries: 10 }).unwrap_err();
    assert!(matches!(err, UnpackError::TooManyEntries { limit: 10 }), "{err}");

    // A PAX header claiming a huge size (RUSTSEC-2026-0068): refused, nothing that size written.
    let mut pax = Builder::new(Vec::new());
    pax.append_pax_extensions([("size", b"1099511627776".as_slice())]).unwrap();
    file(&mut pax, "huge", 0o644, b"small");
    let pax = pax.into_inner().unwrap();
    let scene = Scene::new();
    let err = unpack(&pax[..], &scene.target, &Limits::new(1 << 20)).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. } | UnpackError::Malformed { .. }), "{err}");
    assert!(std::fs::metadata(scene.target.join("huge")).map_or(true, |m| m.len() <= 5));
}

#[test]
fn malformed_archives_are_refused() {
    let scene = Scene::new();
    let good = archive(|b| {
        file(b, "one", 0o644, &[1u8; 4000]);
        file(b, "two", 0o644, b"2");
    });
    // Cut inside the first file's data.
    let err = scene.unpack(&good[..1500]).unwrap_err();
    assert!(
        matches!(&err, UnpackError::Io { entry, .. } if entry == "one") || matches!(err, UnpackError::Malformed { .. }),
        "{err}"
    );
    // A corrupt checksum.
    let mut bad = good.clone();
    bad[148] ^= 0x55;
    let err = Scene::new().unpack(&bad).unwrap_err();
    assert!(matches!(err, UnpackError::Malformed { .. }), "{err}");
    // A gzip stream that is not one.
    let err = Scene::new().unpack(&[0x1f, 0x8b, 0, 1, 2, 3, 4, 5]).unwrap_err();
    assert!(matches!(err, UnpackError::Malformed { .. }), "{err}");
    let err = Scene::new().unpack(&[0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff]).unwrap_err();
    assert!(matches!(err, UnpackError::Malformed { .. }), "{err}");
    // A missing target is the target's error, not the archive's.
    let err = unpack(&good[..], Path::new("/nonexistent/cerana-unpack"), &Limits::new(1 << 20)).unwrap_err();
    assert!(matches!(err, UnpackError::Target { .. }), "{err}");
}
