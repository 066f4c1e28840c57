//! Tar archives for the unpacking tests, written header by header so that what a careful
//! writer refuses (`..`, absolute names, links anywhere) goes in as it is.

use tar::{Builder, EntryType, Header};

/// The modification time every entry gets.
pub const MTIME: u64 = 1_700_000_000;

/// Appends one entry: `name` and `link` raw, owner `(uid, gid)`.
pub fn entry(
    b: &mut Builder<Vec<u8>>,
    name: &str,
    kind: EntryType,
    mode: u32,
    owner: (u64, u64),
    data: &[u8],
    link: &str,
) {
    let mut h = Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(owner.0);
    h.set_gid(owner.1);
    h.set_mtime(MTIME);
    h.set_cksum();
    b.append(&h, data).expect("appending to memory");
}

/// An archive of regular files owned by root: `(name, mode, contents)`.
pub fn files(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut b = Builder::new(Vec::new());
    for (name, mode, data) in files {
        entry(&mut b, name, EntryType::Regular, *mode, (0, 0), data, "");
    }
    b.into_inner().expect("finishing in memory")
}
