//! The dataset operations, each one `zfs` command with machine-readable output (`-Hp`).

use crate::error::ZfsError;
use crate::runner::{checked, Runner};
use cerana_protocol::tasks::zfs::{
    AnyName, CloneArgs, CreateArgs, Dataset, DatasetName, DatasetType, DestroyArgs, GetResult, Hold, ListArgs,
    MountArgs, NameResult, Property, RenameArgs, RollbackArgs, SnapshotArgs, SnapshotName, UnmountArgs, ZfsErrorReason,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The columns `zfs list` is asked for, in this order.
pub const LIST_COLUMNS: &str = "name,type,guid,creation,used,avail,refer,mountpoint,mounted,origin,volsize";

/// How long a new volume's /dev/zvol link may take to appear (udev makes it).
const ZVOL_LINK_WAIT: Duration = Duration::from_secs(10);

/// The operations, over a [`Runner`].
#[derive(Debug, Clone)]
pub struct Zfs {
    runner: Arc<dyn Runner>,
    /// Where volume links live (`/dev/zvol`).
    zvol_dir: PathBuf,
}

fn args<const N: usize>(fixed: [&str; N]) -> Vec<String> {
    fixed.iter().map(|s| (*s).to_owned()).collect()
}

/// `-o key=value` for each property; keys and values are checked so that nothing can smuggle
/// another option or a second assignment in.
fn property_args(properties: &BTreeMap<String, String>) -> Result<Vec<String>, ZfsError> {
    let mut out = Vec::new();
    for (key, value) in properties {
        let key_ok = !key.is_empty()
            && key.len() <= 256
            && key
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b':' | b'.' | b'-'))
            && key.as_bytes()[0].is_ascii_lowercase();
        if !key_ok {
            return Err(ZfsError::invalid(format!("invalid property name {key:?}")));
        }
        if value.is_empty() || value.len() > 8192 || value.bytes().any(|c| c.is_ascii_control()) {
            return Err(ZfsError::invalid(format!("invalid value for property {key}: {value:?}")));
        }
        out.push("-o".into());
        out.push(format!("{key}={value}"));
    }
    Ok(out)
}

fn number(field: &str, text: &str) -> Result<Option<u64>, ZfsError> {
    if text == "-" || text == "none" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| ZfsError::new(ZfsErrorReason::Failed, format!("zfs list: {field} is not a number: {text:?}")))
}

fn optional(text: &str) -> Option<String> {
    (text != "-" && !text.is_empty()).then(|| text.to_owned())
}

/// One line of `zfs list -Hp -o` [`LIST_COLUMNS`].
pub fn parse_list_line(line: &str) -> Result<Dataset, ZfsError> {
    let cols: Vec<&str> = line.split('\t').collect();
    let bad = || ZfsError::new(ZfsErrorReason::Failed, format!("unexpected zfs list line {line:?}"));
    let [name, kind, guid, creation, used, avail, refer, mountpoint, mounted, origin, volsize] = cols[..] else {
        return Err(bad());
    };
    let kind = match kind {
        "filesystem" => DatasetType::Filesystem,
        "volume" => DatasetType::Volume,
        "snapshot" => DatasetType::Snapshot,
        "bookmark" => DatasetType::Bookmark,
        _ => return Err(bad()),
    };
    let is_fs = kind == DatasetType::Filesystem;
    Ok(Dataset {
        name: name.to_owned(),
        kind,
        guid: number("guid", guid)?.unwrap_or(0),
        creation: number("creation", creation)?.unwrap_or(0),
        used: number("used", used)?.unwrap_or(0),
        available: number("avail", avail)?,
        referenced: number("refer", refer)?.unwrap_or(0),
        mountpoint: if is_fs { optional(mountpoint) } else { None },
        mounted: if is_fs { Some(mounted == "yes") } else { None },
        origin: optional(origin),
        volsize: if kind == DatasetType::Volume { number("volsize", volsize)? } else { None },
        device: None,
    })
}

/// `zfs get -Hp -o property,value,source all`.
pub fn parse_properties(text: &str) -> Result<BTreeMap<String, Property>, ZfsError> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| match line.split('\t').collect::<Vec<_>>()[..] {
            [property, value, source] => {
                Ok((property.to_owned(), Property { value: value.into(), source: source.into() }))
            }
            _ => Err(ZfsError::new(ZfsErrorReason::Failed, format!("unexpected zfs get line {line:?}"))),
        })
        .collect()
}

/// `zfs holds -H`: `name<TAB>tag<TAB>date`.
pub fn parse_holds(text: &str) -> Result<Vec<Hold>, ZfsError> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| match line.split('\t').collect::<Vec<_>>()[..] {
            [_, tag, created] => Ok(Hold { tag: tag.into(), created: created.into() }),
            _ => Err(ZfsError::new(ZfsErrorReason::Failed, format!("unexpected zfs holds line {line:?}"))),
        })
        .collect()
}

impl Zfs {
    pub fn new(runner: Arc<dyn Runner>) -> Self {
        Self { runner, zvol_dir: PathBuf::from("/dev/zvol") }
    }

    pub fn with_zvol_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.zvol_dir = dir.into();
        self
    }

    pub fn runner(&self) -> &dyn Runner {
        self.runner.as_ref()
    }

    async fn zfs(&self, args: &[String]) -> Result<String, ZfsError> {
        checked(self.runner.as_ref(), "zfs", args).await
    }

    /// Runs a changing command; a "does not exist" is told apart from a missing pool.
    async fn change(&self, pool: &str, args: &[String]) -> Result<(), ZfsError> {
        match self.zfs(args).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.refine(pool, e).await),
        }
    }

    /// A not-found whose pool is not imported becomes pool-missing.
    async fn refine(&self, pool: &str, e: ZfsError) -> ZfsError {
        if e.reason == ZfsErrorReason::NotFound && !self.pool_imported(pool).await {
            return ZfsError::new(
                ZfsErrorReason::PoolMissing,
                format!("pool {pool:?} is not imported on this node ({})", e.message),
            );
        }
        e
    }

    pub async fn pool_imported(&self, pool: &str) -> bool {
        checked(self.runner.as_ref(), "zpool", &args(["list", "-H", "-o", "name", pool])).await.is_ok()
    }

    pub async fn create(&self, a: &CreateArgs) -> Result<NameResult, ZfsError> {
        let name = DatasetName::new(&a.name)?;
        let mut cmd = args(["create"]);
        match (a.kind, a.volsize) {
            (DatasetType::Filesystem, None) => {}
            (DatasetType::Filesystem, Some(_)) => return Err(ZfsError::invalid("volsize is only for a volume")),
            (DatasetType::Volume, Some(size)) if size > 0 => cmd.extend(["-V".into(), size.to_string()]),
            (DatasetType::Volume, _) => return Err(ZfsError::invalid("a volume needs a volsize (bytes, more than 0)")),
            (other, _) => {
                return Err(ZfsError::invalid(format!(
                    "zfs-create makes a filesystem or a volume, not a {}",
                    other.as_str()
                )))
            }
        }
        cmd.extend(property_args(&a.properties)?);
        cmd.push(name.to_string());
        self.change(name.pool(), &cmd).await?;
        let device = match a.kind {
            DatasetType::Volume => self.wait_for_zvol(&name).await,
            _ => None,
        };
        Ok(NameResult { name: name.into(), device })
    }

    /// The /dev/zvol link of a volume, waiting briefly for udev to make it.
    async fn wait_for_zvol(&self, name: &DatasetName) -> Option<String> {
        let link = self.zvol_dir.join(name.as_str());
        let deadline = tokio::time::Instant::now() + ZVOL_LINK_WAIT;
        while tokio::time::Instant::now() < deadline {
            if link.exists() {
                return Some(link.display().to_string());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!("{} did not appear within {ZVOL_LINK_WAIT:?} (is udevd running?)", link.display());
        None
    }

    fn zvol_link(&self, name: &str) -> Option<String> {
        let link = self.zvol_dir.join(name);
        Path::new(&link).exists().then(|| link.display().to_string())
    }

    pub async fn clone_snapshot(&self, a: &CloneArgs) -> Result<NameResult, ZfsError> {
        let name = DatasetName::new(&a.name)?;
        let origin = SnapshotName::new(&a.origin)?;
        let mut cmd = args(["clone"]);
        cmd.extend(property_args(&a.properties)?);
        cmd.extend([origin.to_string(), name.to_string()]);
        self.change(name.pool(), &cmd).await?;
        Ok(NameResult { name: name.into(), device: None })
    }

    pub async fn destroy(&self, a: &DestroyArgs) -> Result<NameResult, ZfsError> {
        let name = AnyName::new(&a.name)?;
        if a.defer && !matches!(name, AnyName::Snapshot(_)) {
            return Err(ZfsError::invalid("defer applies to snapshots only"));
        }
        let mut cmd = args(["destroy"]);
        for (on, flag) in [(a.defer, "-d"), (a.recursive, "-r"), (a.recursive_clones, "-R"), (a.force_unmount, "-f")] {
            if on {
                cmd.push(flag.into());
            }
        }
        cmd.push(name.to_string());
        self.change(&name.pool(), &cmd).await?;
        Ok(NameResult { name: name.to_string(), device: None })
    }

    pub async fn exists(&self, name: &str) -> Result<bool, ZfsError> {
        let name = AnyName::new(name)?;
        match self.zfs(&args(["list", "-H", "-o", "name", "-t", "all", name.as_str()])).await {
            Ok(_) => Ok(true),
            Err(e) if e.reason == ZfsErrorReason::NotFound || e.reason == ZfsErrorReason::PoolMissing => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn list_rows(&self, pool: &str, extra: Vec<String>) -> Result<Vec<Dataset>, ZfsError> {
        let mut cmd = args(["list", "-Hp", "-o", LIST_COLUMNS]);
        cmd.extend(extra);
        let text = match self.zfs(&cmd).await {
            Ok(text) => text,
            Err(e) => return Err(self.refine(pool, e).await),
        };
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|line| {
                let mut d = parse_list_line(line)?;
                if d.kind == DatasetType::Volume {
                    d.device = self.zvol_link(&d.name);
                }
                Ok(d)
            })
            .collect()
    }

    pub async fn get(&self, name: &str) -> Result<GetResult, ZfsError> {
        let name = AnyName::new(name)?;
        let mut rows = self.list_rows(&name.pool(), args(["-t", "all", name.as_str()])).await?;
        let dataset =
            rows.pop().ok_or_else(|| ZfsError::new(ZfsErrorReason::NotFound, format!("{name} does not exist")))?;
        let props = self.zfs(&args(["get", "-Hp", "-o", "property,value,source", "all", name.as_str()])).await?;
        Ok(GetResult { dataset, properties: parse_properties(&props)? })
    }

    pub async fn holds(&self, name: &str) -> Result<Vec<Hold>, ZfsError> {
        let snap = SnapshotName::new(name).map_err(|e| match e {
            cerana_protocol::tasks::zfs::NameError::Invalid { .. } if !name.contains('@') => {
                ZfsError::invalid(format!("holds exist on snapshots only; {name:?} is not a snapshot"))
            }
            other => other.into(),
        })?;
        let text = match self.zfs(&args(["holds", "-H", snap.as_str()])).await {
            Ok(text) => text,
            Err(e) => return Err(self.refine(snap.dataset().pool(), e).await),
        };
        parse_holds(&text)
    }

    pub async fn list(&self, a: &ListArgs) -> Result<Vec<Dataset>, ZfsError> {
        let types: Vec<&str> = if a.types.is_empty() {
            vec!["filesystem", "volume"]
        } else {
            a.types.iter().map(|t| t.as_str()).collect()
        };
        let mut cmd = args(["-t"]);
        cmd.push(types.join(","));
        let pool = match &a.name {
            Some(name) => {
                let name = AnyName::new(name)?;
                match a.depth {
                    Some(depth) => cmd.extend(["-d".into(), depth.to_string()]),
                    None => cmd.push("-r".into()),
                }
                cmd.push(name.to_string());
                name.pool()
            }
            None if a.depth.is_some() => return Err(ZfsError::invalid("depth needs a name")),
            None => String::new(),
        };
        self.list_rows(&pool, cmd).await
    }

    pub async fn mount(&self, a: &MountArgs) -> Result<NameResult, ZfsError> {
        self.mount_command("mount", a.overlay.then_some("-O"), &a.name).await
    }

    pub async fn unmount(&self, a: &UnmountArgs) -> Result<NameResult, ZfsError> {
        self.mount_command("unmount", a.force.then_some("-f"), &a.name).await
    }

    async fn mount_command(&self, verb: &str, flag: Option<&str>, name: &str) -> Result<NameResult, ZfsError> {
        let name = DatasetName::new(name)?;
        let mut cmd = vec![verb.to_owned()];
        cmd.extend(flag.map(str::to_owned));
        cmd.push(name.to_string());
        self.change(name.pool(), &cmd).await?;
        Ok(NameResult { name: name.into(), device: None })
    }

    pub async fn rename(&self, a: &RenameArgs) -> Result<NameResult, ZfsError> {
        let origin = AnyName::new(&a.origin)?;
        let name = AnyName::new(&a.name)?;
        match (&origin, &name) {
            (AnyName::Snapshot(o), AnyName::Snapshot(n)) if o.dataset() != n.dataset() => {
                return Err(ZfsError::invalid("a snapshot is renamed within its dataset"));
            }
            (AnyName::Dataset(_), AnyName::Dataset(_)) if a.recursive => {
                return Err(ZfsError::invalid("recursive renames snapshots; a dataset's children always move with it"));
            }
            (AnyName::Snapshot(_), AnyName::Snapshot(_)) | (AnyName::Dataset(_), AnyName::Dataset(_)) => {}
            _ => return Err(ZfsError::invalid("origin and name must both be datasets or both snapshots")),
        }
        if origin.pool() != name.pool() {
            return Err(ZfsError::invalid("a dataset cannot be renamed into another pool"));
        }
        let mut cmd = args(["rename"]);
        if a.recursive {
            cmd.push("-r".into());
        }
        cmd.extend([origin.to_string(), name.to_string()]);
        self.change(&name.pool(), &cmd).await?;
        Ok(NameResult { name: name.to_string(), device: None })
    }

    pub async fn rollback(&self, a: &RollbackArgs) -> Result<NameResult, ZfsError> {
        let snap = SnapshotName::new(&a.name)?;
        let mut cmd = args(["rollback"]);
        if a.destroy_recent {
            cmd.push("-r".into());
        }
        cmd.push(snap.to_string());
        self.change(snap.dataset().pool(), &cmd).await?;
        Ok(NameResult { name: snap.into(), device: None })
    }

    pub async fn snapshot(&self, a: &SnapshotArgs) -> Result<NameResult, ZfsError> {
        let dataset = DatasetName::new(&a.name)?;
        let snap = SnapshotName::of(&dataset, &a.snapname)?;
        let mut cmd = args(["snapshot"]);
        if a.recursive {
            cmd.push("-r".into());
        }
        cmd.push(snap.to_string());
        self.change(dataset.pool(), &cmd).await?;
        Ok(NameResult { name: snap.into(), device: None })
    }

    /// Checks a send request and returns the `zfs send` arguments; the snapshots must exist, so
    /// that a bad request fails before a stream is promised.
    pub async fn send_command(&self, name: &str, from: Option<&str>) -> Result<Vec<String>, ZfsError> {
        let snap = SnapshotName::new(name)?;
        let mut cmd = args(["send"]);
        if let Some(from) = from {
            let base = AnyName::new(from)?;
            let same_dataset = match &base {
                AnyName::Snapshot(b) => b.dataset() == snap.dataset(),
                AnyName::Dataset(_) => false,
            };
            if !same_dataset {
                return Err(ZfsError::invalid(format!("{from} is not an earlier snapshot of {}", snap.dataset())));
            }
            if !self.exists(base.as_str()).await? {
                return Err(self
                    .refine(
                        snap.dataset().pool(),
                        ZfsError::new(ZfsErrorReason::NotFound, format!("{base} does not exist")),
                    )
                    .await);
            }
            cmd.extend(["-i".into(), base.to_string()]);
        }
        if !self.exists(snap.as_str()).await? {
            return Err(self
                .refine(
                    snap.dataset().pool(),
                    ZfsError::new(ZfsErrorReason::NotFound, format!("{snap} does not exist")),
                )
                .await);
        }
        cmd.push(snap.into());
        Ok(cmd)
    }

    /// Checks a receive request and returns the `zfs receive` arguments.
    pub async fn receive_command(&self, name: &str, force: bool) -> Result<(DatasetName, Vec<String>), ZfsError> {
        let target = DatasetName::new(name)?;
        if !self.pool_imported(target.pool()).await {
            return Err(ZfsError::new(
                ZfsErrorReason::PoolMissing,
                format!("pool {:?} is not imported on this node", target.pool()),
            ));
        }
        let mut cmd = args(["receive"]);
        if force {
            cmd.push("-F".into());
        }
        cmd.push(target.to_string());
        Ok((target, cmd))
    }

    /// Where `zfs-unpack` writes into `name` and how many decompressed bytes it may: a mounted
    /// filesystem's mountpoint, and its available space (within its quota), or `max_bytes` if
    /// less.
    pub async fn unpack_target(
        &self,
        name: &str,
        max_bytes: Option<u64>,
    ) -> Result<(DatasetName, std::path::PathBuf, u64), ZfsError> {
        let target = DatasetName::new(name)?;
        let row = self.dataset(target.as_str()).await?;
        let invalid = |why: String| ZfsError::new(ZfsErrorReason::InvalidArgument, why);
        if row.kind != DatasetType::Filesystem {
            return Err(invalid(format!("{target} is not a filesystem: an archive unpacks into one")));
        }
        let mountpoint = match (&row.mountpoint, row.mounted) {
            (Some(path), Some(true)) if path.starts_with('/') => std::path::PathBuf::from(path),
            _ => return Err(invalid(format!("{target} is not mounted (mountpoint {:?})", row.mountpoint))),
        };
        let available = row.available.unwrap_or(0);
        Ok((target, mountpoint, max_bytes.map_or(available, |m| m.min(available))))
    }

    /// The dataset row of one name.
    pub async fn dataset(&self, name: &str) -> Result<Dataset, ZfsError> {
        let name = AnyName::new(name)?;
        let mut rows = self.list_rows(&name.pool(), args(["-t", "all", name.as_str()])).await?;
        rows.pop().ok_or_else(|| ZfsError::new(ZfsErrorReason::NotFound, format!("{name} does not exist")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::ScriptedRunner;

    fn zfs(r: &ScriptedRunner) -> Zfs {
        Zfs::new(Arc::new(r.clone())).with_zvol_dir("/nonexistent/zvol")
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn list_lines_parse_for_each_type() {
        let fs =
            parse_list_line("data/x\tfilesystem\t123\t1700000000\t98304\t1000000\t98304\t/data/x\tyes\t-\t-").unwrap();
        assert_eq!(fs.kind, DatasetType::Filesystem);
        assert_eq!((fs.used, fs.available, fs.mounted), (98304, Some(1_000_000), Some(true)));
        assert_eq!(fs.mountpoint.as_deref(), Some("/data/x"));
        let snap = parse_list_line("data/x@s\tsnapshot\t7\t1700000001\t0\t-\t98304\t-\t-\t-\t-").unwrap();
        assert_eq!(
            (snap.kind, snap.available, snap.mounted, snap.mountpoint),
            (DatasetType::Snapshot, None, None, None)
        );
        let clone = parse_list_line("data/c\tfilesystem\t8\t1\t0\t5\t9\t/data/c\tno\tdata/x@s\t-").unwrap();
        assert_eq!(clone.origin.as_deref(), Some("data/x@s"));
        assert_eq!(clone.mounted, Some(false));
        let vol = parse_list_line("data/v\tvolume\t9\t1\t8192\t5\t8192\t-\t-\t-\t67108864").unwrap();
        assert_eq!((vol.kind, vol.volsize, vol.mountpoint), (DatasetType::Volume, Some(64 << 20), None));
        assert!(parse_list_line("data/x\tfilesystem").is_err());
        assert!(parse_list_line("data/x\tthing\t1\t1\t1\t1\t1\t-\t-\t-\t-").is_err());
        assert!(parse_list_line("data/x\tfilesystem\tlots\t1\t1\t1\t1\t-\t-\t-\t-").is_err());
    }

    #[test]
    fn properties_and_holds_parse() {
        let props = parse_properties("type\tfilesystem\t-\ncompression\tlz4\tlocal\nquota\t0\tdefault\n").unwrap();
        assert_eq!(props["compression"], Property { value: "lz4".into(), source: "local".into() });
        assert_eq!(props.len(), 3);
        assert!(parse_properties("broken line").is_err());
        let holds =
            parse_holds("data/x@s\tkeep\tSun Nov 22 08:25 2026\ndata/x@s\tbackup\tMon Nov 23 09:00 2026\n").unwrap();
        assert_eq!(holds[0], Hold { tag: "keep".into(), created: "Sun Nov 22 08:25 2026".into() });
        assert_eq!(holds.len(), 2);
        assert!(parse_holds("").unwrap().is_empty());
    }

    #[test]
    fn create_builds_the_command_line_and_checks_arguments() {
        let r = ScriptedRunner::new().reply("zfs create", true, "", "");
        let z = zfs(&r);
        let mut a = CreateArgs {
            name: "data/x".into(),
            kind: DatasetType::Filesystem,
            volsize: None,
            properties: BTreeMap::new(),
        };
        a.properties.insert("compression".into(), "lz4".into());
        assert_eq!(block_on(z.create(&a)).unwrap().name, "data/x");
        assert_eq!(r.calls(), ["zfs create -o compression=lz4 data/x"]);
        let bad = |a: CreateArgs| block_on(z.create(&a)).unwrap_err().reason;
        assert_eq!(bad(CreateArgs { volsize: Some(1), ..a.clone() }), ZfsErrorReason::InvalidArgument);
        assert_eq!(
            bad(CreateArgs { kind: DatasetType::Volume, volsize: None, ..a.clone() }),
            ZfsErrorReason::InvalidArgument
        );
        assert_eq!(bad(CreateArgs { kind: DatasetType::Snapshot, ..a.clone() }), ZfsErrorReason::InvalidArgument);
        assert_eq!(
            bad(CreateArgs { name: format!("data/{}", "x".repeat(252)), ..a.clone() }),
            ZfsErrorReason::NameTooLong
        );
        assert_eq!(bad(CreateArgs { name: "data/a$b".into(), ..a.clone() }), ZfsErrorReason::InvalidArgument);
        for (k, v) in [("Bad", "x"), ("a", "x\ny"), ("a", ""), ("-o", "x")] {
            let props = BTreeMap::from([(k.to_owned(), v.to_owned())]);
            assert_eq!(
                bad(CreateArgs { properties: props, ..a.clone() }),
                ZfsErrorReason::InvalidArgument,
                "{k}={v:?}"
            );
        }
        // Nothing invalid reached zfs.
        assert_eq!(r.calls().len(), 1);
    }

    #[test]
    fn a_missing_pool_is_told_apart_from_a_missing_dataset() {
        let r = ScriptedRunner::new()
            .reply("zfs create", false, "", "cannot create 'gone/x': parent does not exist")
            .reply("zpool list -H -o name gone", false, "", "cannot open 'gone': no such pool");
        let a = CreateArgs {
            name: "gone/x".into(),
            kind: DatasetType::Filesystem,
            volsize: None,
            properties: BTreeMap::new(),
        };
        assert_eq!(block_on(zfs(&r).create(&a)).unwrap_err().reason, ZfsErrorReason::PoolMissing);
        let r = ScriptedRunner::new()
            .reply("zfs create", false, "", "cannot create 'data/a/b': parent does not exist")
            .reply("zpool list -H -o name data", true, "data\n", "");
        let a = CreateArgs { name: "data/a/b".into(), ..a };
        assert_eq!(block_on(zfs(&r).create(&a)).unwrap_err().reason, ZfsErrorReason::NotFound);
    }

    #[test]
    fn destroy_flags_and_dependants() {
        let r = ScriptedRunner::new().reply(
            "zfs destroy data/p",
            false,
            "",
            "cannot destroy 'data/p': filesystem has children\nuse '-r' to destroy the following datasets:\ndata/p/c\n",
        )
        .reply("zfs destroy", true, "", "");
        let z = zfs(&r);
        let plain = DestroyArgs { name: "data/p".into(), ..Default::default() };
        assert_eq!(block_on(z.destroy(&plain)).unwrap_err().reason, ZfsErrorReason::HasDependants);
        let all = DestroyArgs {
            name: "data/p@s".into(),
            defer: true,
            recursive: true,
            recursive_clones: true,
            force_unmount: true,
        };
        block_on(z.destroy(&all)).unwrap();
        assert_eq!(r.calls().last().unwrap(), "zfs destroy -d -r -R -f data/p@s");
        let defer_fs = DestroyArgs { name: "data/p".into(), defer: true, ..Default::default() };
        assert_eq!(block_on(z.destroy(&defer_fs)).unwrap_err().reason, ZfsErrorReason::InvalidArgument);
    }

    #[test]
    fn exists_is_false_for_missing_datasets_only() {
        let r = ScriptedRunner::new()
            .reply("zfs list -H -o name -t all data/yes", true, "data/yes\n", "")
            .reply("zfs list -H -o name -t all data/no", false, "", "cannot open 'data/no': dataset does not exist")
            .reply("zfs list -H -o name -t all data/odd", false, "", "something odd");
        let z = zfs(&r);
        assert!(block_on(z.exists("data/yes")).unwrap());
        assert!(!block_on(z.exists("data/no")).unwrap());
        assert_eq!(block_on(z.exists("data/odd")).unwrap_err().reason, ZfsErrorReason::Failed);
        assert_eq!(block_on(z.exists("data/x@")).unwrap_err().reason, ZfsErrorReason::InvalidArgument);
    }

    #[test]
    fn list_types_depth_and_rename_rules() {
        let r = ScriptedRunner::new()
            .reply("zfs list", true, "data\tfilesystem\t1\t1\t1\t1\t1\t/data\tyes\t-\t-\n", "")
            .reply("zfs rename", true, "", "");
        let z = zfs(&r);
        let a = ListArgs {
            name: Some("data".into()),
            types: vec![DatasetType::Snapshot, DatasetType::Filesystem],
            depth: Some(1),
        };
        assert_eq!(block_on(z.list(&a)).unwrap().len(), 1);
        assert_eq!(r.calls()[0], format!("zfs list -Hp -o {LIST_COLUMNS} -t snapshot,filesystem -d 1 data"));
        block_on(z.list(&ListArgs::default())).unwrap();
        assert_eq!(r.calls()[1], format!("zfs list -Hp -o {LIST_COLUMNS} -t filesystem,volume"));
        let rename =
            |origin: &str, name: &str, recursive| RenameArgs { origin: origin.into(), name: name.into(), recursive };
        assert!(block_on(z.rename(&rename("data/a@x", "data/b@y", false))).is_err());
        assert!(block_on(z.rename(&rename("data/a", "data/b@y", false))).is_err());
        assert!(block_on(z.rename(&rename("data/a", "other/a", false))).is_err());
        assert!(block_on(z.rename(&rename("data/a", "data/b", true))).is_err());
        block_on(z.rename(&rename("data/a@x", "data/a@y", true))).unwrap();
        assert_eq!(r.calls().last().unwrap(), "zfs rename -r data/a@x data/a@y");
    }

    #[test]
    fn send_checks_snapshots_before_promising_a_stream() {
        let r = ScriptedRunner::new()
            .reply("zfs list -H -o name -t all data/x@b", true, "data/x@b\n", "")
            .reply("zfs list -H -o name -t all data/x@a", true, "data/x@a\n", "")
            .reply(
                "zfs list -H -o name -t all data/x@gone",
                false,
                "",
                "cannot open 'data/x@gone': dataset does not exist",
            )
            .reply("zpool list", true, "data\n", "");
        let z = zfs(&r);
        assert_eq!(
            block_on(z.send_command("data/x@b", Some("data/x@a"))).unwrap(),
            ["send", "-i", "data/x@a", "data/x@b"]
        );
        assert_eq!(block_on(z.send_command("data/x@gone", None)).unwrap_err().reason, ZfsErrorReason::NotFound);
        assert_eq!(
            block_on(z.send_command("data/x@b", Some("data/y@a"))).unwrap_err().reason,
            ZfsErrorReason::InvalidArgument
        );
        assert_eq!(block_on(z.send_command("data/x", None)).unwrap_err().reason, ZfsErrorReason::InvalidArgument);
    }

    #[test]
    fn an_archive_unpacks_into_a_mounted_filesystem_within_its_space() {
        let r = ScriptedRunner::new()
            .reply("zfs list -Hp -o name,type,guid,creation,used,avail,refer,mountpoint,mounted,origin,volsize -t all data/datasets/web", true,
                "data/datasets/web\tfilesystem\t1\t1700000000\t98304\t5000000\t98304\t/data/datasets/web\tyes\t-\t-\n", "")
            .reply("zfs list -Hp -o name,type,guid,creation,used,avail,refer,mountpoint,mounted,origin,volsize -t all data/off", true,
                "data/off\tfilesystem\t2\t1700000000\t98304\t5000000\t98304\t/data/off\tno\t-\t-\n", "")
            .reply("zfs list -Hp -o name,type,guid,creation,used,avail,refer,mountpoint,mounted,origin,volsize -t all data/vol", true,
                "data/vol\tvolume\t3\t1700000000\t98304\t5000000\t98304\t-\t-\t-\t1048576\n", "");
        let z = zfs(&r);
        let (name, root, budget) = block_on(z.unpack_target("data/datasets/web", None)).unwrap();
        assert_eq!(
            (name.as_str(), root.to_str(), budget),
            ("data/datasets/web", Some("/data/datasets/web"), 5_000_000)
        );
        assert_eq!(block_on(z.unpack_target("data/datasets/web", Some(1000))).unwrap().2, 1000);
        assert_eq!(block_on(z.unpack_target("data/datasets/web", Some(u64::MAX))).unwrap().2, 5_000_000);
        for (name, says) in [("data/off", "not mounted"), ("data/vol", "not a filesystem")] {
            let err = block_on(z.unpack_target(name, None)).unwrap_err();
            assert!(err.reason == ZfsErrorReason::InvalidArgument && err.to_string().contains(says), "{err}");
        }
        assert!(block_on(z.unpack_target("data/../etc", None)).is_err());
    }
}
