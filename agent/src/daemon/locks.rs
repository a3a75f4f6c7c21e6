//! The daemon's one policy for poisoned locks. What its locks guard (the status snapshot, the auth
//! token, the ingest endpoint's handle, a set of names) stays usable when a holder panicked half-way
//! through an update: at worst a field is one update behind. So a poisoned lock is taken as it is,
//! with an error logged, instead of turning one panic into a panic in every later reader (every
//! HTTP request). Every lock in `daemon` goes through these three functions.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A read guard, poisoned or not.
pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| {
        tracing::error!("a lock was poisoned by a panic; using its last value");
        p.into_inner()
    })
}

/// See [`read`].
pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| {
        tracing::error!("a lock was poisoned by a panic; using its last value");
        p.into_inner()
    })
}

/// See [`read`].
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| {
        tracing::error!("a lock was poisoned by a panic; using its last value");
        p.into_inner()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_keeps_its_last_value() {
        let l = std::sync::Arc::new(RwLock::new(1));
        let l2 = l.clone();
        let _ = std::thread::spawn(move || {
            let mut g = l2.write().unwrap();
            *g = 2;
            panic!("a holder panics");
        })
        .join();
        assert!(l.is_poisoned());
        assert_eq!(*read(&l), 2);
        *write(&l) = 3;
        assert_eq!(*read(&l), 3);
        let m = Mutex::new(5);
        assert_eq!(*lock(&m), 5);
    }
}
