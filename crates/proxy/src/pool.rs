//! A pool of server connections for one (node, fencing token, user, database).
//!
//! Generic over the connection type so the bookkeeping is tested without
//! sockets. The size limit is a semaphore: a client holds a permit for as long
//! as it holds a connection, and waits (bounded by `query_wait_timeout`) when
//! none is left. Idle connections are reused last-in first-out, so the
//! connections that stay idle are the ones `server_idle_timeout` closes.
//! A closed pool (its node lost the leader key, or is no longer a target)
//! hands out nothing and drops every connection given back to it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limits of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    pub size: usize,
    pub min_size: usize,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
}

/// Why no connection could be handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("no server connection became free within query_wait_timeout")]
    WaitTimeout,
    #[error("the pool was closed (its server is no longer a routing target)")]
    Closed,
}

/// A server connection with its age.
#[derive(Debug)]
pub struct Pooled<C> {
    pub conn: C,
    pub created: Instant,
    pub last_used: Instant,
    /// Permit of the database-wide limit, released when the connection closes.
    pub db_permit: Option<OwnedSemaphorePermit>,
}

impl<C> Pooled<C> {
    pub fn new(conn: C, now: Instant, db_permit: Option<OwnedSemaphorePermit>) -> Pooled<C> {
        Pooled {
            conn,
            created: now,
            last_used: now,
            db_permit,
        }
    }
}

/// The right to use one connection slot; the connection itself when an idle
/// one was available, else the caller opens one.
#[derive(Debug)]
pub struct Slot<C> {
    pub permit: OwnedSemaphorePermit,
    pub idle: Option<Pooled<C>>,
    /// The caller had to wait for the slot (else no time passed worth measuring).
    pub waited: bool,
}

/// Counters shown by `SHOW POOLS` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Connections handed out.
    pub active: usize,
    pub idle: usize,
    /// Clients waiting for a connection.
    pub waiting: usize,
    /// Longest current wait, in microseconds.
    pub max_wait_us: u64,
    /// Connections ever opened.
    pub opened: u64,
}

/// See the module header.
#[derive(Debug)]
pub struct Pool<C> {
    limits: PoolLimits,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Pooled<C>>>,
    waiting: AtomicUsize,
    opened: AtomicU64,
    wait_started: Mutex<Vec<Instant>>,
}

impl<C> Pool<C> {
    pub fn new(limits: PoolLimits) -> Pool<C> {
        Pool {
            limits,
            permits: Arc::new(Semaphore::new(limits.size)),
            idle: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            wait_started: Mutex::new(Vec::new()),
        }
    }

    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// Waits up to `wait` for a slot. A slot without an idle connection means
    /// the caller must open one (and count it with [`Pool::note_opened`]).
    pub async fn acquire(&self, wait: Duration, now: Instant) -> Result<Slot<C>, PoolError> {
        let (permit, waited) = match self.permits.clone().try_acquire_owned() {
            Ok(p) => (p, false),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(PoolError::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                self.lock_waits().push(now);
                let got = tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await;
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                {
                    let mut waits = self.lock_waits();
                    if let Some(i) = waits.iter().position(|t| *t == now) {
                        waits.swap_remove(i);
                    }
                }
                match got {
                    Err(_) => return Err(PoolError::WaitTimeout),
                    Ok(Err(_)) => return Err(PoolError::Closed),
                    Ok(Ok(p)) => (p, true),
                }
            }
        };
        let idle = self.take_idle(if waited { Instant::now() } else { now });
        Ok(Slot {
            permit,
            idle,
            waited,
        })
    }

    /// A slot and an idle connection at once, if both are there: no waiting,
    /// no timer. `None` when the caller must wait or connect
    /// ([`Pool::acquire`]); a permit is never held on to then.
    pub fn try_take_idle(&self, now: Instant) -> Option<(OwnedSemaphorePermit, Pooled<C>)> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let idle = self.take_idle(now)?;
        Some((permit, idle))
    }

    /// The most recently used idle connection still within its lifetime;
    /// expired ones met on the way are dropped.
    fn take_idle(&self, now: Instant) -> Option<Pooled<C>> {
        let mut idle = self.lock_idle();
        while let Some(c) = idle.pop() {
            if now.duration_since(c.created) < self.limits.lifetime {
                return Some(c);
            }
        }
        None
    }

    pub fn note_opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    /// Gives a healthy connection back; it is dropped instead when the pool is
    /// closed or the connection outlived `server_lifetime`. The permit is
    /// released either way (by the caller dropping it after this call).
    /// Returns the connection when it must be closed by the caller.
    pub fn release(&self, mut conn: Pooled<C>, now: Instant) -> Option<Pooled<C>> {
        if self.is_closed() || now.duration_since(conn.created) >= self.limits.lifetime {
            return Some(conn);
        }
        conn.last_used = now;
        self.lock_idle().push(conn);
        None
    }

    /// Idle connections past `server_idle_timeout` (keeping `min_pool_size`
    /// connections open) or past `server_lifetime`, taken out for closing.
    pub fn reap(&self, now: Instant) -> Vec<Pooled<C>> {
        let mut idle = self.lock_idle();
        let active = self.limits.size - self.permits.available_permits();
        let (mut out, alive): (Vec<_>, Vec<_>) = idle
            .drain(..)
            .partition(|c| now.duration_since(c.created) >= self.limits.lifetime);
        // The front of the vector was used least recently: stale ones go
        // first, as long as more than min_pool_size stay open.
        let mut open = active + alive.len();
        for c in alive {
            let stale = now.duration_since(c.last_used) >= self.limits.idle_timeout;
            if stale && open > self.limits.min_size {
                open -= 1;
                out.push(c);
            } else {
                idle.push(c);
            }
        }
        out
    }

    /// Connections to open so that `min_pool_size` are open (idle + active).
    pub fn missing_for_min(&self) -> usize {
        let open = self.limits.size - self.permits.available_permits() + self.lock_idle().len();
        self.limits.min_size.saturating_sub(open)
    }

    /// A slot for a connection opened in the background (min_pool_size), if free.
    pub fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Takes one idle connection out for closing (to free a database-wide slot).
    pub fn evict_one(&self) -> Option<Pooled<C>> {
        let mut idle = self.lock_idle();
        if idle.is_empty() {
            None
        } else {
            Some(idle.remove(0))
        }
    }

    /// Closes the pool: waiting clients fail, idle connections are returned
    /// for closing, connections given back later are dropped.
    pub fn close(&self) -> Vec<Pooled<C>> {
        self.permits.close();
        std::mem::take(&mut *self.lock_idle())
    }

    pub fn is_closed(&self) -> bool {
        self.permits.is_closed()
    }

    pub fn stats(&self, now: Instant) -> PoolStats {
        let idle = self.lock_idle().len();
        let max_wait_us = self
            .lock_waits()
            .iter()
            .map(|t| now.saturating_duration_since(*t).as_micros() as u64)
            .max()
            .unwrap_or(0);
        PoolStats {
            active: self.limits.size - self.permits.available_permits(),
            idle,
            waiting: self.waiting.load(Ordering::Relaxed),
            max_wait_us,
            opened: self.opened.load(Ordering::Relaxed),
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Pooled<C>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_waits(&self) -> std::sync::MutexGuard<'_, Vec<Instant>> {
        self.wait_started.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(size: usize, min: usize) -> PoolLimits {
        PoolLimits {
            size,
            min_size: min,
            idle_timeout: Duration::from_secs(10),
            lifetime: Duration::from_secs(100),
        }
    }

    #[tokio::test]
    async fn hands_out_at_most_size_slots_and_reuses_the_newest_idle() {
        let pool: Pool<u32> = Pool::new(limits(2, 0));
        let t0 = Instant::now();
        let a = pool.acquire(Duration::from_millis(10), t0).await.unwrap();
        let b = pool.acquire(Duration::from_millis(10), t0).await.unwrap();
        assert!(a.idle.is_none() && b.idle.is_none());
        assert_eq!(
            pool.acquire(Duration::from_millis(20), t0)
                .await
                .unwrap_err(),
            PoolError::WaitTimeout
        );
        assert_eq!(pool.stats(t0).active, 2);
        assert!(pool.release(Pooled::new(1, t0, None), t0).is_none());
        drop(a.permit);
        assert!(pool.release(Pooled::new(2, t0, None), t0).is_none());
        drop(b.permit);
        let s = pool.stats(t0);
        assert_eq!((s.active, s.idle), (0, 2));
        let c = pool.acquire(Duration::from_millis(10), t0).await.unwrap();
        assert_eq!(c.idle.map(|p| p.conn), Some(2), "last in, first out");
    }

    #[tokio::test]
    async fn a_waiting_client_gets_the_released_slot() {
        let pool: Arc<Pool<u32>> = Arc::new(Pool::new(limits(1, 0)));
        let t0 = Instant::now();
        let held = pool.acquire(Duration::from_millis(10), t0).await.unwrap();
        let p = pool.clone();
        let waiter =
            tokio::spawn(async move { p.acquire(Duration::from_secs(5), Instant::now()).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.stats(Instant::now()).waiting, 1);
        pool.release(Pooled::new(7, t0, None), t0);
        drop(held.permit);
        let got = waiter.await.unwrap().unwrap();
        assert_eq!(got.idle.map(|p| p.conn), Some(7));
        assert_eq!(pool.stats(Instant::now()).waiting, 0);
    }

    #[tokio::test]
    async fn a_closed_pool_fails_waiters_and_drops_returned_connections() {
        let pool: Arc<Pool<u32>> = Arc::new(Pool::new(limits(1, 0)));
        let t0 = Instant::now();
        let held = pool.acquire(Duration::from_millis(10), t0).await.unwrap();
        let p = pool.clone();
        let waiter =
            tokio::spawn(async move { p.acquire(Duration::from_secs(5), Instant::now()).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(pool.close().is_empty());
        assert_eq!(waiter.await.unwrap().unwrap_err(), PoolError::Closed);
        assert_eq!(
            pool.release(Pooled::new(3, t0, None), t0).map(|c| c.conn),
            Some(3)
        );
        drop(held.permit);
        assert_eq!(
            pool.acquire(Duration::from_millis(10), t0)
                .await
                .unwrap_err(),
            PoolError::Closed
        );
    }

    #[tokio::test]
    async fn lifetime_and_idle_timeout_close_connections_but_keep_min_size() {
        let pool: Pool<u32> = Pool::new(limits(4, 1));
        let t0 = Instant::now();
        for id in 0..3 {
            pool.release(Pooled::new(id, t0, None), t0);
        }
        // Not stale yet.
        assert!(pool.reap(t0 + Duration::from_secs(5)).is_empty());
        // Stale: two go, one stays for min_pool_size.
        let reaped = pool.reap(t0 + Duration::from_secs(11));
        assert_eq!(reaped.len(), 2);
        assert_eq!(pool.stats(t0).idle, 1);
        // Past server_lifetime even the minimum goes (and will be reopened).
        let reaped = pool.reap(t0 + Duration::from_secs(101));
        assert_eq!(reaped.len(), 1);
        assert_eq!(pool.missing_for_min(), 1);
        // A connection given back after its lifetime is closed, not kept.
        let old = Pooled::new(9, t0, None);
        assert!(pool.release(old, t0 + Duration::from_secs(100)).is_some());
    }

    #[tokio::test]
    async fn expired_idle_connections_are_skipped_on_acquire() {
        let pool: Pool<u32> = Pool::new(PoolLimits {
            lifetime: Duration::from_millis(1),
            ..limits(2, 0)
        });
        let t0 = Instant::now();
        pool.release(Pooled::new(1, t0, None), t0);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let slot = pool
            .acquire(Duration::from_millis(10), Instant::now())
            .await
            .unwrap();
        assert!(slot.idle.is_none());
    }
}
