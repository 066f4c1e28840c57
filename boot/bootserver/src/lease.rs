//! Address leases: a store trait (memory, file; the cluster can add etcd) and the allocator.

use crate::config::PoolConfig;
use cerana_protocol::tasks::boot::MacAddr;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// How long an offered address stays reserved for the client it was offered to.
pub const OFFER_HOLD_SECS: u64 = 60;

/// A bound lease: a wire type (`GET /leases`), so it lives in the protocol crate.
pub use cerana_protocol::boot_wire::Lease;

#[derive(Debug, thiserror::Error)]
pub enum LeaseStoreError {
    #[error("lease file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("lease file {path} line {line}: {source}")]
    Corrupt { path: PathBuf, line: usize, source: serde_json::Error },
    #[error("cluster leases: {0}")]
    Unavailable(String),
    #[error("{ip} was given away by another server meanwhile")]
    Taken { ip: Ipv4Addr },
    #[error("this server no longer leads {election}: it does not answer")]
    NotResponder { election: String },
}

/// Where leases live. Fallible everywhere so a networked store (etcd) fits behind it.
pub trait LeaseStore: Send {
    fn by_mac(&self, mac: &MacAddr) -> Result<Option<Lease>, LeaseStoreError>;
    fn by_ip(&self, ip: Ipv4Addr) -> Result<Option<Lease>, LeaseStoreError>;
    /// Inserts or replaces the lease of `lease.mac` (and whatever lease held `lease.ip`).
    fn put(&mut self, lease: Lease) -> Result<(), LeaseStoreError>;
    fn remove(&mut self, mac: &MacAddr) -> Result<(), LeaseStoreError>;
    fn all(&self) -> Result<Vec<Lease>, LeaseStoreError>;
    /// Fails when this server may not answer now (a shared store's responder whose term ended).
    fn check_term(&self) -> Result<(), LeaseStoreError> {
        Ok(())
    }
    /// Records an offer of `ip` to `mac` until `until` where other servers see it; fails when
    /// another server holds `ip`.
    fn hold(&mut self, _mac: MacAddr, _ip: Ipv4Addr, _until: u64) -> Result<(), LeaseStoreError> {
        Ok(())
    }
    /// The offers the store holds (a lease whose `expires` ends the hold).
    fn held(&self) -> Vec<Lease> {
        Vec::new()
    }
}

/// Leases in memory, indexed both ways.
#[derive(Debug, Default)]
pub struct MemoryLeaseStore {
    by_mac: HashMap<MacAddr, Lease>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
}

impl MemoryLeaseStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, lease: Lease) {
        if let Some(old_mac) = self.by_ip.get(&lease.ip).copied() {
            if old_mac != lease.mac {
                self.by_mac.remove(&old_mac);
            }
        }
        if let Some(old) = self.by_mac.get(&lease.mac) {
            self.by_ip.remove(&old.ip);
        }
        self.by_ip.insert(lease.ip, lease.mac);
        self.by_mac.insert(lease.mac, lease);
    }

    fn delete(&mut self, mac: &MacAddr) {
        if let Some(old) = self.by_mac.remove(mac) {
            self.by_ip.remove(&old.ip);
        }
    }
}

impl LeaseStore for MemoryLeaseStore {
    fn by_mac(&self, mac: &MacAddr) -> Result<Option<Lease>, LeaseStoreError> {
        Ok(self.by_mac.get(mac).cloned())
    }
    fn by_ip(&self, ip: Ipv4Addr) -> Result<Option<Lease>, LeaseStoreError> {
        Ok(self.by_ip.get(&ip).and_then(|m| self.by_mac.get(m)).cloned())
    }
    fn put(&mut self, lease: Lease) -> Result<(), LeaseStoreError> {
        self.insert(lease);
        Ok(())
    }
    fn remove(&mut self, mac: &MacAddr) -> Result<(), LeaseStoreError> {
        self.delete(mac);
        Ok(())
    }
    fn all(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        let mut all: Vec<Lease> = self.by_mac.values().cloned().collect();
        all.sort_by_key(|l| l.ip);
        Ok(all)
    }
}

/// One line of the lease journal. A [`Lease`] in it ignores fields it does not know, so a journal
/// a newer version wrote still replays.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum JournalEntry {
    Put(Lease),
    Remove(MacAddr),
}

/// Leases in memory, every change appended to a JSON-lines journal; the journal is rewritten
/// (write to a temporary file, rename) when it grows past twice the live leases.
#[derive(Debug)]
pub struct FileLeaseStore {
    memory: MemoryLeaseStore,
    path: PathBuf,
    journal: File,
    lines: usize,
}

impl FileLeaseStore {
    /// Opens `dir/leases.jsonl`, replaying it. A torn last line (crash while writing) is skipped
    /// with a warning; any other corrupt line is an error, so no lease is silently lost.
    pub fn open(dir: &Path) -> Result<Self, LeaseStoreError> {
        let path = dir.join("leases.jsonl");
        let io = |source| LeaseStoreError::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let (memory, lines) = Self::replay(&path)?;
        let journal = OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        let mut store = FileLeaseStore { memory, path, journal, lines };
        store.compact()?;
        Ok(store)
    }

    /// The leases of the journal in `dir`, read without writing (none when there is none).
    pub fn read(dir: &Path) -> Result<Vec<Lease>, LeaseStoreError> {
        Self::replay(&dir.join("leases.jsonl"))?.0.all()
    }

    fn replay(path: &Path) -> Result<(MemoryLeaseStore, usize), LeaseStoreError> {
        let io = |source| LeaseStoreError::Io { path: path.to_path_buf(), source };
        let mut memory = MemoryLeaseStore::new();
        let mut lines = 0;
        match File::open(path) {
            Ok(f) => {
                let all: Vec<String> = BufReader::new(f).lines().collect::<Result<_, _>>().map_err(io)?;
                let count = all.len();
                for (i, line) in all.into_iter().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<JournalEntry>(&line) {
                        Ok(JournalEntry::Put(lease)) => memory.insert(lease),
                        Ok(JournalEntry::Remove(mac)) => memory.delete(&mac),
                        Err(e) if i + 1 == count => {
                            tracing::warn!(path = %path.display(), error = %e, "skipping torn last line of the lease journal");
                        }
                        Err(source) => {
                            return Err(LeaseStoreError::Corrupt { path: path.to_path_buf(), line: i + 1, source })
                        }
                    }
                    lines += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        Ok((memory, lines))
    }

    fn append(&mut self, entry: &JournalEntry) -> Result<(), LeaseStoreError> {
        let mut line = serde_json::to_vec(entry).expect("journal entries always serialize");
        line.push(b'\n');
        self.journal.write_all(&line).map_err(|source| LeaseStoreError::Io { path: self.path.clone(), source })?;
        self.lines += 1;
        if self.lines > 64 && self.lines > 2 * self.memory.by_mac.len() {
            self.compact()?;
        }
        Ok(())
    }

    fn compact(&mut self) -> Result<(), LeaseStoreError> {
        let io = |source| LeaseStoreError::Io { path: self.path.clone(), source };
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut out = Vec::new();
        for lease in self.memory.all()? {
            out.extend(serde_json::to_vec(&JournalEntry::Put(lease)).expect("leases serialize"));
            out.push(b'\n');
        }
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&out).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.journal = OpenOptions::new().append(true).open(&self.path).map_err(io)?;
        self.lines = self.memory.by_mac.len();
        Ok(())
    }
}

impl LeaseStore for FileLeaseStore {
    fn by_mac(&self, mac: &MacAddr) -> Result<Option<Lease>, LeaseStoreError> {
        self.memory.by_mac(mac)
    }
    fn by_ip(&self, ip: Ipv4Addr) -> Result<Option<Lease>, LeaseStoreError> {
        self.memory.by_ip(ip)
    }
    fn put(&mut self, lease: Lease) -> Result<(), LeaseStoreError> {
        self.append(&JournalEntry::Put(lease.clone()))?;
        self.memory.insert(lease);
        Ok(())
    }
    fn remove(&mut self, mac: &MacAddr) -> Result<(), LeaseStoreError> {
        if self.memory.by_mac.contains_key(mac) {
            self.append(&JournalEntry::Remove(*mac))?;
            self.memory.delete(mac);
        }
        Ok(())
    }
    fn all(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        self.memory.all()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("no free address left in {first}-{last}")]
    PoolExhausted { first: Ipv4Addr, last: Ipv4Addr },
    #[error("{ip} is not in the pool {first}-{last}")]
    NotInPool { ip: Ipv4Addr, first: Ipv4Addr, last: Ipv4Addr },
    #[error("{ip} is in use by {holder}")]
    InUse { ip: Ipv4Addr, holder: MacAddr },
    #[error("{ip} was declined by a client and is quarantined")]
    Declined { ip: Ipv4Addr },
    #[error("the cluster store is out of reach: only clients holding a lease are answered, and {mac} holds none here")]
    NotKnown { mac: MacAddr },
    #[error(transparent)]
    Store(#[from] LeaseStoreError),
}

/// Hands out addresses of one pool.
pub struct Allocator {
    pool: PoolConfig,
    store: Box<dyn LeaseStore>,
    /// MAC → (address, offer expiry).
    offers: HashMap<MacAddr, (Ipv4Addr, u64)>,
    offered_ips: HashMap<Ipv4Addr, MacAddr>,
    /// Addresses never handed out (the server's own, the gateway).
    reserved: Vec<Ipv4Addr>,
    /// Address → end of quarantine.
    declined: HashMap<Ipv4Addr, u64>,
    cursor: u32,
    /// Answer only clients holding an active lease, with that lease as it is (a cluster
    /// member that cannot reach the store: it may not give an address away, nor extend one).
    known_only: bool,
}

impl std::fmt::Debug for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocator").field("pool", &self.pool).field("offers", &self.offers.len()).finish()
    }
}

impl Allocator {
    pub fn new(pool: PoolConfig, store: Box<dyn LeaseStore>, reserved: Vec<Ipv4Addr>) -> Self {
        let mut reserved = reserved;
        reserved.extend(pool.gateway);
        reserved.push(pool.net.network());
        reserved.push(pool.net.broadcast());
        let cursor = u32::from(pool.range[0]);
        let mut allocator = Allocator {
            pool,
            store,
            offers: HashMap::new(),
            offered_ips: HashMap::new(),
            reserved,
            declined: HashMap::new(),
            cursor,
            known_only: false,
        };
        allocator.learn_held();
        allocator
    }

    /// Only clients holding an active lease are answered, with that lease unchanged.
    pub fn known_clients_only(mut self) -> Self {
        self.known_only = true;
        self
    }

    /// The lease `mac` holds, when only such clients are answered.
    fn known(&self, mac: MacAddr, now: u64) -> Result<Lease, AllocError> {
        match self.store.by_mac(&mac)? {
            Some(lease) if lease.is_active(now) => Ok(lease),
            _ => Err(AllocError::NotKnown { mac }),
        }
    }

    /// Takes on the offers the store holds (another server's, before this one's term).
    fn learn_held(&mut self) {
        for offer in self.store.held() {
            if let Some((old, _)) = self.offers.insert(offer.mac, (offer.ip, offer.expires)) {
                self.offered_ips.remove(&old);
            }
            self.offered_ips.insert(offer.ip, offer.mac);
        }
    }

    pub fn pool(&self) -> &PoolConfig {
        &self.pool
    }

    fn first(&self) -> u32 {
        u32::from(self.pool.range[0])
    }
    fn last(&self) -> u32 {
        u32::from(self.pool.range[1])
    }

    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        (self.first()..=self.last()).contains(&u32::from(ip))
    }

    fn offer_holder(&self, ip: Ipv4Addr, now: u64) -> Option<MacAddr> {
        let mac = *self.offered_ips.get(&ip)?;
        match self.offers.get(&mac) {
            Some((offered, until)) if *offered == ip && *until > now => Some(mac),
            _ => None,
        }
    }

    /// Whether `mac` may have `ip` now; the error says why not.
    fn check(&self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> Result<(), AllocError> {
        if !self.in_range(ip) || self.reserved.contains(&ip) {
            return Err(AllocError::NotInPool { ip, first: self.pool.range[0], last: self.pool.range[1] });
        }
        if self.declined.get(&ip).is_some_and(|until| *until > now) {
            return Err(AllocError::Declined { ip });
        }
        if let Some(lease) = self.store.by_ip(ip)? {
            if lease.mac != mac && lease.is_active(now) {
                return Err(AllocError::InUse { ip, holder: lease.mac });
            }
        }
        match self.offer_holder(ip, now) {
            Some(holder) if holder != mac => Err(AllocError::InUse { ip, holder }),
            _ => Ok(()),
        }
    }

    fn remember_offer(&mut self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> Result<(), AllocError> {
        if let Err(e) = self.store.hold(mac, ip, now + OFFER_HOLD_SECS) {
            self.learn_held();
            return Err(e.into());
        }
        if let Some((old, _)) = self.offers.insert(mac, (ip, now + OFFER_HOLD_SECS)) {
            self.offered_ips.remove(&old);
        }
        self.offered_ips.insert(ip, mac);
        // Keep the offer table from growing without bound under a flood of DISCOVERs.
        if self.offers.len() > 4 * (self.last() - self.first() + 1) as usize + 1024 {
            self.offers.retain(|_, (_, until)| *until > now);
            let offers = &self.offers;
            self.offered_ips.retain(|_, m| offers.contains_key(m));
        }
        Ok(())
    }

    /// Chooses an address for a DISCOVER: the MAC's own lease, else the requested address, else
    /// a never-used one, else one whose lease expired.
    pub fn offer(&mut self, mac: MacAddr, requested: Option<Ipv4Addr>, now: u64) -> Result<Ipv4Addr, AllocError> {
        if self.known_only {
            return self.known(mac, now).map(|l| l.ip);
        }
        self.store.check_term()?;
        let own = self.store.by_mac(&mac)?.map(|l| l.ip);
        let held = self.offers.get(&mac).filter(|(_, until)| *until > now).map(|(ip, _)| *ip);
        for candidate in [own, held, requested].into_iter().flatten() {
            if self.check(mac, candidate, now).is_ok() {
                self.remember_offer(mac, candidate, now)?;
                return Ok(candidate);
            }
        }
        let size = self.last() - self.first() + 1;
        let mut expired = None;
        for step in 0..size {
            let ip = Ipv4Addr::from(self.first() + (self.cursor - self.first() + step) % size);
            if self.reserved.contains(&ip)
                || self.declined.get(&ip).is_some_and(|u| *u > now)
                || self.offer_holder(ip, now).is_some()
            {
                continue;
            }
            match self.store.by_ip(ip)? {
                None => {
                    self.cursor = if u32::from(ip) >= self.last() { self.first() } else { u32::from(ip) + 1 };
                    self.remember_offer(mac, ip, now)?;
                    return Ok(ip);
                }
                Some(lease) if !lease.is_active(now) && expired.is_none() => expired = Some(ip),
                Some(_) => {}
            }
        }
        match expired {
            Some(ip) => {
                self.remember_offer(mac, ip, now)?;
                Ok(ip)
            }
            None => Err(AllocError::PoolExhausted { first: self.pool.range[0], last: self.pool.range[1] }),
        }
    }

    /// Binds `ip` to `mac` for the pool's lease time (a REQUEST being acknowledged).
    pub fn commit(&mut self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> Result<Lease, AllocError> {
        if self.known_only {
            return self
                .known(mac, now)
                .and_then(|l| if l.ip == ip { Ok(l) } else { Err(AllocError::NotKnown { mac }) });
        }
        self.store.check_term()?;
        self.check(mac, ip, now)?;
        let lease = Lease { mac, ip, expires: now + u64::from(self.pool.lease_secs) };
        self.store.put(lease.clone())?;
        if let Some((offered, _)) = self.offers.remove(&mac) {
            self.offered_ips.remove(&offered);
        }
        Ok(lease)
    }

    /// The client gave its address back: the lease ends now (the record stays, so the MAC gets
    /// the same address next time if it is still free).
    pub fn release(&mut self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> Result<bool, AllocError> {
        if self.known_only {
            return Ok(false);
        }
        match self.store.by_mac(&mac)? {
            Some(lease) if lease.ip == ip => {
                self.store.put(Lease { expires: now.min(lease.expires), ..lease })?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The client found `ip` in use: quarantine it for a lease time and forget the MAC's lease.
    pub fn decline(&mut self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> Result<(), AllocError> {
        if self.known_only {
            return Ok(());
        }
        if self.in_range(ip) {
            self.declined.insert(ip, now + u64::from(self.pool.lease_secs));
        }
        if self.store.by_mac(&mac)?.is_some_and(|l| l.ip == ip) {
            self.store.remove(&mac)?;
        }
        Ok(())
    }

    /// A REQUEST went to another server: drop our offer.
    pub fn forget_offer(&mut self, mac: MacAddr) {
        if let Some((ip, _)) = self.offers.remove(&mac) {
            self.offered_ips.remove(&ip);
        }
    }

    pub fn lease_of(&self, mac: MacAddr) -> Result<Option<Lease>, AllocError> {
        Ok(self.store.by_mac(&mac)?)
    }

    pub fn leases(&self) -> Result<Vec<Lease>, AllocError> {
        Ok(self.store.all()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(first: u8, last: u8) -> PoolConfig {
        PoolConfig {
            net: "10.0.0.0/24".parse().unwrap(),
            range: [Ipv4Addr::new(10, 0, 0, first), Ipv4Addr::new(10, 0, 0, last)],
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![],
            lease_secs: 100,
        }
    }
    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn same_mac_gets_same_address_and_pool_exhausts() {
        let mut a = Allocator::new(pool(10, 11), Box::new(MemoryLeaseStore::new()), vec![]);
        let ip1 = a.offer(mac(1), None, 0).unwrap();
        assert_eq!(a.commit(mac(1), ip1, 0).unwrap().ip, ip1);
        let ip2 = a.offer(mac(2), Some(ip1), 0).unwrap();
        assert_ne!(ip1, ip2, "an address in use is not offered to another MAC");
        assert!(matches!(a.offer(mac(3), None, 0), Err(AllocError::PoolExhausted { .. })));
        assert!(matches!(a.commit(mac(3), ip2, 0), Err(AllocError::InUse { .. })));
        // The offer to mac 2 times out, mac 3 can then have it.
        assert_eq!(a.offer(mac(3), None, OFFER_HOLD_SECS + 1).unwrap(), ip2);
        // mac 1 comes back much later: same address.
        assert_eq!(a.offer(mac(1), None, 50).unwrap(), ip1);
    }

    #[test]
    fn expired_lease_is_reused_only_when_needed() {
        let mut a = Allocator::new(pool(10, 10), Box::new(MemoryLeaseStore::new()), vec![]);
        let ip = a.offer(mac(1), None, 0).unwrap();
        a.commit(mac(1), ip, 0).unwrap();
        assert!(a.offer(mac(2), None, 50).is_err());
        assert_eq!(a.offer(mac(2), None, 101).unwrap(), ip);
        a.commit(mac(2), ip, 101).unwrap();
        assert!(a.lease_of(mac(1)).unwrap().is_none());
    }

    #[test]
    fn gateway_and_declined_are_skipped() {
        let mut a = Allocator::new(pool(1, 3), Box::new(MemoryLeaseStore::new()), vec![Ipv4Addr::new(10, 0, 0, 2)]);
        assert_eq!(a.offer(mac(1), None, 0).unwrap(), Ipv4Addr::new(10, 0, 0, 3));
        a.decline(mac(1), Ipv4Addr::new(10, 0, 0, 3), 0).unwrap();
        assert!(a.offer(mac(2), None, 0).is_err());
        assert!(matches!(a.commit(mac(2), Ipv4Addr::new(10, 0, 0, 3), 0), Err(AllocError::Declined { .. })));
    }

    #[test]
    fn file_store_survives_reopen_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut a = Allocator::new(pool(10, 250), Box::new(FileLeaseStore::open(dir.path()).unwrap()), vec![]);
            for n in 0..100 {
                let ip = a.offer(mac(n), None, 0).unwrap();
                a.commit(mac(n), ip, 0).unwrap();
                a.commit(mac(n), ip, 1).unwrap();
            }
        }
        let text = std::fs::read_to_string(dir.path().join("leases.jsonl")).unwrap();
        assert!(text.lines().count() <= 200, "journal compacted: {} lines", text.lines().count());
        // A torn last line is tolerated.
        std::fs::write(dir.path().join("leases.jsonl"), format!("{text}{{\"put\":{{\"ma")).unwrap();
        let store = FileLeaseStore::open(dir.path()).unwrap();
        assert_eq!(store.all().unwrap().len(), 100);
        assert_eq!(store.by_mac(&mac(7)).unwrap().unwrap().expires, 101);
        // A corrupt line in the middle is an error, not a silent loss.
        std::fs::write(dir.path().join("leases.jsonl"), format!("garbage\n{text}")).unwrap();
        assert!(matches!(FileLeaseStore::open(dir.path()), Err(LeaseStoreError::Corrupt { line: 1, .. })));
    }
}
