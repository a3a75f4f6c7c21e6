//! When is a file in the inbox finished? Users `cp` and `scp` files straight into the inbox, and a
//! file claimed while its writer is still at work decodes as truncated. So a file is claimed only
//! once its writer is done:
//!
//! - with inotify (`method = "notify"`), when the kernel reports that the last writer closed it
//!   (`IN_CLOSE_WRITE`) or that it was renamed into the inbox (`IN_MOVED_TO`, the `.tmp` + rename
//!   convention), whatever the pauses in between;
//! - for a file no event was seen for (there before the agent started, an inotify queue overflow, a
//!   network file system where other hosts' writes raise no event; and always with
//!   `method = "poll"`), once its size and modification time have not changed for `settle_ms`;
//! - a file reported written but never closed (a writer that keeps it open without writing, a hard
//!   link) is taken after `OPEN_WRITER_SETTLES × settle_ms` without change, so it cannot stay
//!   forever.

use std::collections::HashMap;
use std::fs::Metadata;
use std::time::{Duration, Instant, SystemTime};

use notify::EventKind;
use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};

/// How many settle periods a file reported open for writing may stay unchanged before it is read
/// without its close event.
pub const OPEN_WRITER_SETTLES: u32 = 10;

/// What is known about one inbox file's writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// No event seen: judge by size and mtime.
    Unknown,
    /// Created or written, not yet closed.
    Open,
    /// Closed after writing, or renamed in: complete.
    Done,
}

#[derive(Debug, Clone)]
struct Seen {
    size: u64,
    mtime: Option<SystemTime>,
    /// When `size` and `mtime` last changed (or were first seen).
    since: Instant,
    writer: Writer,
}

/// The inbox files seen but not yet claimed, by name.
#[derive(Debug, Default)]
pub struct Readiness {
    files: HashMap<String, Seen>,
}

impl Readiness {
    /// Takes in one watcher event (paths are inbox files; other names are ignored by `ready`).
    pub fn event(&mut self, ev: &notify::Event) {
        if ev.need_rescan() {
            // Events were lost: nothing known about any writer any more.
            for s in self.files.values_mut() {
                s.writer = Writer::Unknown;
            }
        }
        let writer = match ev.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Writer::Done,
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => Writer::Done,
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => Writer::Open,
            _ => return,
        };
        // A `Both` rename lists the old name first; only the new one is an inbox file now.
        let paths = match ev.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                &ev.paths[ev.paths.len().saturating_sub(1)..]
            }
            _ => &ev.paths[..],
        };
        for p in paths {
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else { continue };
            let s = self.files.entry(name.to_string()).or_insert(Seen {
                size: u64::MAX,
                mtime: None,
                since: Instant::now(),
                writer,
            });
            s.writer = writer;
        }
    }

    /// Whether the file `name` with metadata `meta` (read now) may be claimed.
    pub fn ready(&mut self, name: &str, meta: &Metadata, settle: Duration) -> bool {
        self.ready_at(name, stamp(meta), settle, Instant::now())
    }

    fn ready_at(
        &mut self,
        name: &str,
        (size, mtime): (u64, Option<SystemTime>),
        settle: Duration,
        now: Instant,
    ) -> bool {
        let s = self.files.entry(name.to_string()).or_insert(Seen {
            size,
            mtime,
            since: now,
            writer: Writer::Unknown,
        });
        if (s.size, s.mtime) != (size, mtime) {
            s.size = size;
            s.mtime = mtime;
            s.since = now;
        }
        let unchanged = now.duration_since(s.since);
        match s.writer {
            Writer::Done => true,
            Writer::Unknown => unchanged >= settle,
            Writer::Open => unchanged >= settle * OPEN_WRITER_SETTLES,
        }
    }

    /// Forgets a file (claimed, or gone from the inbox).
    pub fn forget(&mut self, name: &str) {
        self.files.remove(name);
    }

    /// Forgets every file not in `present` (deleted or renamed away by someone else).
    pub fn retain(&mut self, present: &[String]) {
        self.files.retain(|n, _| present.iter().any(|p| p == n));
    }

    /// Files seen and still waiting.
    pub fn waiting(&self) -> usize {
        self.files.len()
    }
}

/// Size and modification time: what a growing file changes.
pub fn stamp(meta: &Metadata) -> (u64, Option<SystemTime>) {
    (meta.len(), meta.modified().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::CreateKind;

    fn ev(kind: EventKind, path: &std::path::Path) -> notify::Event {
        notify::Event::new(kind).add_path(path.to_path_buf())
    }

    #[test]
    fn unknown_files_wait_for_an_unchanged_settle_period() {
        let mut r = Readiness::default();
        let settle = Duration::from_millis(150);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mtime = Some(SystemTime::UNIX_EPOCH);
        assert!(!r.ready_at("a.npy", (3, mtime), settle, at(0)));
        // Grown: the period starts again.
        assert!(!r.ready_at("a.npy", (6, mtime), settle, at(100)));
        assert!(!r.ready_at("a.npy", (6, mtime), settle, at(200)));
        assert!(r.ready_at("a.npy", (6, mtime), settle, at(250)));
        // A new mtime alone (rewritten in place, same size) counts as a change.
        let touched = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1));
        assert!(!r.ready_at("a.npy", (6, touched), settle, at(300)));
        assert!(!r.ready_at("a.npy", (6, touched), settle, at(449)));
        assert!(r.ready_at("a.npy", (6, touched), settle, at(450)));
        // Open writers get OPEN_WRITER_SETTLES periods.
        let p = std::path::PathBuf::from("/inbox/b.npy");
        r.event(&ev(EventKind::Create(CreateKind::File), &p));
        assert!(!r.ready_at("b.npy", (1, mtime), settle, at(0)));
        assert!(!r.ready_at("b.npy", (1, mtime), settle, at(150 * u64::from(OPEN_WRITER_SETTLES) - 1)));
        assert!(r.ready_at("b.npy", (1, mtime), settle, at(150 * u64::from(OPEN_WRITER_SETTLES))));
    }

    #[test]
    fn events_decide_before_the_settle_time() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("b.npy");
        std::fs::write(&p, b"x").unwrap();
        let meta = p.metadata().unwrap();
        let long = Duration::from_secs(3600);
        let mut r = Readiness::default();
        r.event(&ev(EventKind::Create(CreateKind::File), &p));
        assert!(!r.ready("b.npy", &meta, long));
        r.event(&ev(EventKind::Access(AccessKind::Close(AccessMode::Write)), &p));
        assert!(r.ready("b.npy", &meta, long));
        // Written again: open until closed again.
        r.event(&ev(EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any)), &p));
        assert!(!r.ready("b.npy", &meta, long));
        // A lost-events rescan falls back to the settle time.
        r.event(&notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan));
        assert!(!r.ready("b.npy", &meta, long));
        assert!(r.ready("b.npy", &meta, Duration::ZERO));
        // Renamed in (both names reported): the new name is complete.
        let q = d.path().join("c.npy");
        let both = notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path(d.path().join("c.npy.tmp"))
            .add_path(q.clone());
        r.event(&both);
        assert!(r.ready("c.npy", &meta, long));
        assert!(!r.ready("c.npy.tmp", &meta, long));
        r.retain(&["c.npy".to_string()]);
        assert_eq!(r.waiting(), 1);
        r.forget("c.npy");
        assert_eq!(r.waiting(), 0);
    }
}
