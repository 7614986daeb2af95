//! Hot standbys that serve searches. A standby serves while it answers and
//! its replay is within `max_lag` of the primary; otherwise searches go to
//! the primary until a later check finds it healthy again. Checks run at
//! most once a second per standby, on the search that finds the last one
//! stale.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::PgError;
use super::pool::{Conn, Pool};

/// How long a standby's health is trusted.
const RECHECK: Duration = Duration::from_secs(1);

pub(super) struct Replicas {
    standbys: Vec<Standby>,
    max_lag: Duration,
}

struct Standby {
    pool: Pool,
    health: Mutex<Health>,
}

#[derive(Clone, Default)]
struct Health {
    checked: Option<Instant>,
    serving: bool,
    lag: Option<Duration>,
    error: String,
}

/// What Status shows of one standby.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaState {
    /// `user@host:port/db` (no password).
    pub target: String,
    /// Whether it serves searches now.
    pub serving: bool,
    /// Replay lag behind the primary, when known.
    pub lag: Option<Duration>,
    /// Why it does not serve; empty when it does.
    pub error: String,
}

impl Replicas {
    pub(super) fn new(urls: &[String], max_lag: Duration, init: &str) -> Result<Self, PgError> {
        Ok(Self {
            standbys: urls
                .iter()
                .map(|u| {
                    Ok(Standby {
                        pool: Pool::new(u, init)?,
                        health: Mutex::new(Health::default()),
                    })
                })
                .collect::<Result<_, PgError>>()?,
            max_lag,
        })
    }

    /// A connection to a healthy standby, first configured first; `None`
    /// sends the search to the primary.
    pub(super) fn pick(&self, primary: &Pool) -> Option<Conn<'_>> {
        for s in &self.standbys {
            let health = s.health();
            let fresh = health.checked.is_some_and(|t| t.elapsed() < RECHECK);
            if fresh && !health.serving {
                continue;
            }
            if !fresh {
                self.check(s, primary);
                if !s.health().serving {
                    continue;
                }
            }
            match s.pool.get() {
                Ok(c) => return Some(c),
                Err(e) => s.failed(&e.to_string()),
            }
        }
        None
    }

    /// Marks the standby a connection came from as failed (a query on it
    /// broke): searches go elsewhere until its next check.
    pub(super) fn failed_on(&self, target: &str, why: &str) {
        if let Some(s) = self.standbys.iter().find(|s| s.pool.target() == target) {
            s.failed(why);
        }
    }

    pub(super) fn states(&self) -> Vec<ReplicaState> {
        self.standbys
            .iter()
            .map(|s| {
                let h = s.health();
                ReplicaState {
                    target: s.pool.target().to_owned(),
                    serving: h.serving,
                    lag: h.lag,
                    error: if h.checked.is_none() {
                        "not checked yet".into()
                    } else {
                        h.error
                    },
                }
            })
            .collect()
    }

    fn check(&self, s: &Standby, primary: &Pool) {
        let result = (|| -> Result<Duration, String> {
            // The primary's position first: a standby that has replayed it
            // holds all the primary had when asked, so WAL written after
            // (a checkpoint on an idle primary) does not count as lag.
            let written: String = primary
                .get()
                .map_err(|e| e.to_string())?
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .map_err(|e| format!("asking the primary for its position: {e}"))?
                .get(0);
            let mut c = s.pool.get().map_err(|e| e.to_string())?;
            let row = c
                .query_one(
                    "SELECT pg_is_in_recovery(),
                            coalesce(pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn()), 0)::float8,
                            extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
                    &[&written],
                )
                .map_err(|e| e.to_string())?;
            if !row.get::<_, bool>(0) {
                return Err("not a standby (not in recovery)".into());
            }
            let behind: f64 = row.get(1);
            let since_replay: Option<f64> = row.get(2);
            // Replay caught up: no lag, however long ago the last write was.
            if behind <= 0.0 {
                return Ok(Duration::ZERO);
            }
            Ok(Duration::from_secs_f64(
                since_replay.unwrap_or(f64::MAX).clamp(0.0, 1e9),
            ))
        })();
        let mut h = s.health.lock().unwrap_or_else(PoisonError::into_inner);
        let was = h.serving;
        h.checked = Some(Instant::now());
        match result {
            Ok(lag) if lag <= self.max_lag => {
                *h = Health {
                    checked: h.checked,
                    serving: true,
                    lag: Some(lag),
                    error: String::new(),
                };
            }
            Ok(lag) => {
                h.serving = false;
                h.lag = Some(lag);
                h.error = format!(
                    "replay lags {:.1} s behind the primary (max {:.1} s)",
                    lag.as_secs_f64(),
                    self.max_lag.as_secs_f64()
                );
            }
            Err(e) => {
                h.serving = false;
                h.lag = None;
                h.error = e;
            }
        }
        if was != h.serving {
            if h.serving {
                tracing::info!(standby = s.pool.target(), "standby serves searches again");
            } else {
                tracing::warn!(standby = s.pool.target(), error = %h.error, "standby left out: searches go to the primary");
            }
        }
    }
}

impl Standby {
    fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn failed(&self, why: &str) {
        {
            let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            if h.serving {
                tracing::warn!(
                    standby = self.pool.target(),
                    error = why,
                    "standby left out: searches go to the primary"
                );
            }
            h.serving = false;
            h.checked = Some(Instant::now());
            h.error = why.to_owned();
        }
        self.pool.clear();
    }
}
