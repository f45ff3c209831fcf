//! Stamps: what a hit compares for each recorded part (device and inode, size, mtime and ctime in
//! ns; on Windows volume serial number and file index, size and mtime: see [`crate::os::fs`];
//! exact equality, never "newer than"), and the racy rule (a part changed within the filesystem's
//! timestamp granularity before the stamp was taken is not trusted: a later change in the same
//! tick would leave its stamp unchanged, as git's "racy clean" entries).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::os;

/// The window used where the filesystem's timestamp granularity cannot be measured (FAT).
pub const COARSE_RACY_WINDOW_NS: i64 = 2_000_000_000;

/// The build-size cache's racy window (see `size`): FAT's granularity, the coarsest there is. A
/// racy size only costs one more walk, so it is not measured as the penv's window is.
pub const RACY_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// Stored as an array, `[dev, ino, size, mtime_ns, ctime_ns]`: a hit reads dozens, and field
/// names would be most of what it reads.
/// Equal when the part is unchanged: inode or file index, size and both times, and the volume
/// on Windows. A Unix device number is not compared, only recorded (it groups stamps by
/// filesystem for the racy window): overlayfs hands each mount a device number of its own, so a
/// penv baked into a Docker image would show another device in every container.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(from = "StampArray", into = "StampArray")]
pub struct Stamp {
    /// The device (Unix) or volume serial number (Windows).
    pub dev: u64,
    /// The inode (Unix) or file index (Windows).
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl PartialEq for Stamp {
    fn eq(&self, other: &Stamp) -> bool {
        (!crate::os::fs::DEVICE_IDENTIFIES_FILES || self.dev == other.dev)
            && (self.ino, self.size, self.mtime_ns, self.ctime_ns)
                == (other.ino, other.size, other.mtime_ns, other.ctime_ns)
    }
}

impl Eq for Stamp {}

#[derive(Serialize, Deserialize)]
struct StampArray(u64, u64, u64, i64, i64);

impl From<StampArray> for Stamp {
    fn from(StampArray(dev, ino, size, mtime_ns, ctime_ns): StampArray) -> Stamp {
        Stamp {
            dev,
            ino,
            size,
            mtime_ns,
            ctime_ns,
        }
    }
}

impl From<Stamp> for StampArray {
    fn from(s: Stamp) -> StampArray {
        StampArray(s.dev, s.ino, s.size, s.mtime_ns, s.ctime_ns)
    }
}

impl Stamp {
    /// The stamp of what `path` names, following symlinks (an interpreter link is stamped by the
    /// binary it points to).
    pub fn of(path: &Path) -> Option<Stamp> {
        os::fs::stamp(path)
    }
}

/// A directory whose parts are stamped by their path relative to it. On Linux it is opened once
/// (`O_PATH`) and each part is stat'ed relative to it, which spares joining and walking the
/// directory's own path for each of a hit's dozens of parts; elsewhere, or where it cannot be
/// opened, paths are joined. Either way a stamp is what [`Stamp::of`] gives for the joined path.
pub struct StampRoot<'a> {
    path: &'a Path,
    dir: Option<os::fs::DirHandle>,
}

impl<'a> StampRoot<'a> {
    pub fn open(path: &'a Path) -> StampRoot<'a> {
        StampRoot {
            path,
            dir: os::fs::open_dir(path),
        }
    }

    /// The stamp of `relative` (following symlinks, as [`Stamp::of`] does).
    pub fn stamp(&self, relative: &str) -> Option<Stamp> {
        if let Some(dir) = &self.dir
            && !relative.is_empty()
        {
            return os::fs::stamp_at(dir, relative);
        }
        Stamp::of(&self.path.join(relative))
    }
}

/// The stamped parts, by name: a path relative to the penv (`pyvenv.cfg`, `bin/python`,
/// `lib/python3.11/site-packages/yaml`), or `esptool-dir:<file>` for the editable esptool
/// project's files. `None` records that the part did not exist.
pub type Stamps = BTreeMap<String, Option<Stamp>>;

pub const ESPTOOL_PREFIX: &str = "esptool-dir:";

/// Parts whose mtime or ctime lies within `window_ns` of `at_ns`, before or after it: a later
/// change in the same timestamp tick would leave their stamp unchanged (git's "racy clean"
/// entries). A time further in the future than that (a CI cache or image built where the clock
/// was ahead, an SMB/NFS server ahead, FAT after a time-zone change) is not racy: a later write
/// stamps the writer's clock, which lies behind it, so it changes the stamp. Such a part is a
/// change once (its stamp differs from the one recorded before), and hits after the miss that
/// recorded it. Each time is judged alone: a future mtime (set by `tar` or `touch`) must not
/// hide a ctime that is racy.
pub fn racy_parts<'a>(
    stamps: impl IntoIterator<Item = (&'a str, &'a Option<Stamp>)>,
    at_ns: i64,
    window_ns: i64,
) -> Vec<String> {
    let near = |t: i64| is_racy(t, at_ns, window_ns) && t <= at_ns.saturating_add(window_ns);
    stamps
        .into_iter()
        .filter(|(_, stamp)| stamp.is_some_and(|s| near(s.mtime_ns) || near(s.ctime_ns)))
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// Whether a timestamp `changed_ns` lies within `window_ns` before `at_ns` (or after it): the
/// one racy rule, for the penv's stamps and the build-size keys alike.
pub fn is_racy(changed_ns: i64, at_ns: i64, window_ns: i64) -> bool {
    changed_ns > at_ns.saturating_sub(window_ns)
}

/// The racy window for these stamps: twice the coarser of the kernel's timestamp tick and the
/// granularity each filesystem showed in the timestamps just read (all whole seconds on FAT,
/// ext3 or `mkfs.ext4 -I 128`, nanoseconds on ext4, btrfs, xfs, tmpfs, APFS). The granularity is
/// measured per filesystem (each stamp's own device or volume) and the coarsest wins: a
/// whole-second penv is never given the fine window its base interpreter's filesystem shows.
pub fn racy_window_ns(stamps: &Stamps) -> i64 {
    let mut by_device: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for s in stamps.values().flatten() {
        by_device
            .entry(s.dev)
            .or_default()
            .extend([s.mtime_ns, s.ctime_ns]);
    }
    by_device
        .values()
        .map(|times| window_of(times))
        .max()
        .unwrap_or(COARSE_RACY_WINDOW_NS)
}

/// The racy window for timestamps of one filesystem.
fn window_of(times: &[i64]) -> i64 {
    let mut granularity: i64 = 1;
    while granularity < 1_000_000_000 && times.iter().all(|t| t % (granularity * 10) == 0) {
        granularity *= 10;
    }
    if granularity >= 1_000_000_000 {
        return COARSE_RACY_WINDOW_NS;
    }
    2 * granularity.max(crate::os::fs::timestamp_tick_ns().clamp(1, COARSE_RACY_WINDOW_NS))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

    /// A recorded part's stamp (which may be None) with both times at `mtime_ns`.
    #[allow(clippy::unnecessary_wraps)]
    pub(crate) fn stamp(mtime_ns: i64) -> Option<Stamp> {
        Some(Stamp {
            dev: 1,
            ino: 1,
            size: 2,
            mtime_ns,
            ctime_ns: mtime_ns,
        })
    }

    #[test]
    fn a_stamp_relative_to_a_stamp_root_is_the_stamp_of_the_joined_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("lib/site")).unwrap();
        fs::write(root.join("lib/site/mod.py"), b"x = 1").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("site/mod.py", root.join("lib/link")).unwrap();
        let stamps = StampRoot::open(root);
        for relative in [
            "lib/site/mod.py",
            "lib/site",
            "lib/link",
            "lib/../lib/site",
            "gone",
            "",
        ] {
            assert_eq!(
                stamps.stamp(relative),
                Stamp::of(&root.join(relative)),
                "{relative:?}"
            );
        }
        #[cfg(unix)]
        assert!(stamps.stamp("lib/link").is_some_and(|s| s.size == 5));
        let missing = StampRoot::open(Path::new("/nonexistent/penv-guard"));
        assert_eq!(missing.stamp("pyvenv.cfg"), None);
    }

    fn parts(stamps: &Stamps) -> impl Iterator<Item = (&str, &Option<Stamp>)> {
        stamps.iter().map(|(key, stamp)| (key.as_str(), stamp))
    }

    #[test]
    fn the_device_number_counts_only_where_it_identifies_a_file() {
        let a = stamp(5).unwrap();
        let other_mount = Stamp { dev: 99, ..a };
        // overlayfs gives each container's mount its own st_dev: the same part on Unix.
        assert_eq!(a == other_mount, !crate::os::fs::DEVICE_IDENTIFIES_FILES);
        assert_ne!(a, Stamp { ino: 2, ..a });
        assert_ne!(a, Stamp { ctime_ns: 6, ..a });
    }

    #[test]
    fn racy_parts_are_those_changed_within_the_window() {
        let stamps = Stamps::from([("pyvenv.cfg".to_owned(), stamp(3_123_456_789))]);
        assert_eq!(
            racy_parts(parts(&stamps), 3_130_000_000, 8_000_000),
            ["pyvenv.cfg"]
        );
        assert!(racy_parts(parts(&stamps), 3_200_000_000, 8_000_000).is_empty());
    }

    #[test]
    fn a_stamp_beyond_the_window_in_the_future_is_not_racy_but_one_just_ahead_is() {
        let at = 3_000_000_000;
        let ahead = |mtime_ns, ctime_ns| {
            Stamps::from([(
                "p".to_owned(),
                Some(Stamp {
                    dev: 1,
                    ino: 1,
                    size: 2,
                    mtime_ns,
                    ctime_ns,
                }),
            )])
        };
        let hour = 3_600_000_000_000;
        assert!(racy_parts(parts(&ahead(at + hour, at + hour)), at, 8_000_000).is_empty());
        assert_eq!(
            racy_parts(parts(&ahead(at + 5_000_000, 0)), at, 8_000_000),
            ["p"]
        );
        // A future mtime does not hide a ctime changed just before the stamp was taken.
        assert_eq!(
            racy_parts(parts(&ahead(at + hour, at - 1_000)), at, 8_000_000),
            ["p"]
        );
    }

    #[test]
    fn racy_window_follows_the_filesystems_granularity() {
        let fine: Stamps = [
            ("a", 1_700_000_000_123_456_789),
            ("b", 1_700_000_001_987_654_321),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_owned(), stamp(t)))
        .collect();
        let window = racy_window_ns(&fine);
        assert!(
            window < 100_000_000,
            "ns timestamps: a tick-sized window, got {window}"
        );
        let whole_seconds: Stamps = [
            ("a", 1_700_000_000_000_000_000),
            ("b", 1_700_000_002_000_000_000),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_owned(), stamp(t)))
        .collect();
        assert_eq!(racy_window_ns(&whole_seconds), COARSE_RACY_WINDOW_NS);
        assert_eq!(racy_window_ns(&Stamps::new()), COARSE_RACY_WINDOW_NS);
        // One part on a whole-second filesystem among many on a fine one: the window is that
        // filesystem's, never borrowed from the other.
        let whole_second = stamp(1_700_000_005_000_000_000).unwrap();
        let mut mixed = fine.clone();
        mixed.insert(
            "c".to_owned(),
            Some(Stamp {
                dev: 2,
                ..whole_second
            }),
        );
        assert_eq!(racy_window_ns(&mixed), COARSE_RACY_WINDOW_NS);
        // The same time on the fine filesystem is just a round number there.
        mixed.insert("c".to_owned(), Some(whole_second));
        assert!(racy_window_ns(&mixed) < 100_000_000);
    }
}
