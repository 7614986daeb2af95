//! Connections to one PostgreSQL server: a small blocking pool, and the
//! server's name as logs and Status may show it (never the password).

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use postgres::config::Host;
use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Row, Statement};

use super::PgError;

/// Connections one pool opens at most: searches, the committer and the
/// scans share them, and a server's default `max_connections` is 100 for
/// every daemon of the library together.
const MAX_CONNECTIONS: usize = 8;

pub(super) struct Pool {
    config: Config,
    /// Run on every new connection (session settings).
    init: String,
    /// `user@host:port/dbname`: what messages name.
    target: String,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Default)]
struct State {
    idle: Vec<Session>,
    open: usize,
}

/// A connection and what this process has set up on it: the session
/// settings a search last asked for, and the statements it prepared, so
/// that a search costs one round trip, not three.
struct Session {
    client: Client,
    settings: String,
    statements: HashMap<String, Statement>,
}

/// Prepared statements one connection keeps at most (searches have a
/// handful of shapes per space; the cache starts over when full).
const STATEMENTS: usize = 64;

impl Pool {
    /// Parses a libpq-style URL or key=value string (`host=` may be a Unix
    /// socket folder). Connects lazily.
    pub(super) fn new(url: &str, init: &str) -> Result<Self, PgError> {
        let mut config = Config::from_str(url).map_err(|e| PgError::Url {
            url: redact(url),
            reason: e.to_string(),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("dualsight");
        }
        Ok(Self {
            target: describe(&config),
            init: init.to_owned(),
            config,
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
        })
    }

    pub(super) fn target(&self) -> &str {
        &self.target
    }

    /// An idle connection, a new one, or (at [`MAX_CONNECTIONS`]) the next
    /// one handed back.
    pub(super) fn get(&self) -> Result<Conn<'_>, PgError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(session) = state.idle.pop() {
                if session.client.is_closed() {
                    state.open -= 1;
                    discard(session.client);
                    continue;
                }
                return Ok(Conn {
                    pool: self,
                    session: Some(session),
                });
            }
            if state.open < MAX_CONNECTIONS {
                state.open += 1;
                drop(state);
                let connected = self.config.connect(NoTls).and_then(|mut c| {
                    if !self.init.is_empty() {
                        c.batch_execute(&self.init)?;
                    }
                    Ok(c)
                });
                return match connected {
                    Ok(client) => Ok(Conn {
                        pool: self,
                        session: Some(Session {
                            client,
                            settings: String::new(),
                            statements: HashMap::new(),
                        }),
                    }),
                    Err(source) => {
                        self.closed();
                        Err(PgError::Connect {
                            target: self.target.clone(),
                            source,
                        })
                    }
                };
            }
            state = self
                .freed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A connection of its own, outside the pool, for a long statement (an
    /// index build) that should not hold one of the pool's.
    pub(super) fn connect_alone(&self) -> Result<Client, PgError> {
        self.config
            .connect(NoTls)
            .map_err(|source| PgError::Connect {
                target: self.target.clone(),
                source,
            })
    }

    /// Drops every idle connection (a server that went away, a reload).
    pub(super) fn clear(&self) {
        let idle = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.open -= state.idle.len();
            self.freed.notify_all();
            std::mem::take(&mut state.idle)
        };
        idle.into_iter().for_each(|s| discard(s.client));
    }

    fn closed(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.open -= 1;
        self.freed.notify_one();
    }
}

/// A pooled connection; handed back on drop unless it broke.
pub(super) struct Conn<'a> {
    pool: &'a Pool,
    session: Option<Session>,
}

impl Conn<'_> {
    /// The server this connection is to, as messages show it.
    pub(super) fn target(&self) -> &str {
        self.pool.target()
    }

    fn session(&mut self) -> &mut Session {
        self.session.as_mut().expect("present until drop")
    }

    /// Runs `settings` (session-level `SET`s) unless they are what this
    /// connection last ran.
    pub(super) fn settle(&mut self, settings: &str) -> Result<(), postgres::Error> {
        let s = self.session();
        if s.settings != settings {
            s.settings.clear();
            s.client.batch_execute(settings)?;
            s.settings.push_str(settings);
        }
        Ok(())
    }

    /// `query` with the statement prepared once per connection.
    pub(super) fn query_prepared(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let s = self.session();
        let statement = match s.statements.get(sql) {
            Some(st) => st.clone(),
            None => {
                let st = s.client.prepare(sql)?;
                if s.statements.len() >= STATEMENTS {
                    s.statements.clear();
                }
                s.statements.insert(sql.to_owned(), st.clone());
                st
            }
        };
        let rows = s.client.query(&statement, params);
        if rows.is_err() {
            // Prepared again next time: the error may be the statement's (a
            // table dropped under it).
            s.statements.remove(sql);
        }
        rows
    }
}

impl Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.session.as_ref().expect("present until drop").client
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.session().client
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if session.client.is_closed() {
            self.pool.closed();
            discard(session.client);
            return;
        }
        let mut state = self
            .pool
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.idle.push(session);
        self.pool.freed.notify_one();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut state.idle)
            .into_iter()
            .for_each(|s| discard(s.client));
    }
}

/// Closes a client where it may block: its drop runs the client's own
/// runtime to say goodbye to the server (see [`super::off_runtime`]).
fn discard(client: Client) {
    super::off_runtime(move || drop(client));
}

/// `user@host:port/dbname` of a parsed configuration: no password.
fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(dir) => dir.display().to_string(),
        })
        .collect();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{}:{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        port,
        config.get_dbname().unwrap_or("")
    )
}

/// A URL as messages may show it: the password of `scheme://user:pw@host`
/// or of `password=...` replaced by `***`. Used before parsing succeeds,
/// so it works on the raw text.
pub fn redact(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            return format!(
                "{}{}:***{}",
                &url[..scheme_end + 3],
                &rest[..colon],
                &rest[at..]
            );
        }
        return match url.find("password=") {
            Some(i) => redact_param(url, i, '&'),
            None => url.to_owned(),
        };
    }
    match url.find("password=") {
        Some(i) => redact_param(url, i, ' '),
        None => url.to_owned(),
    }
}

fn redact_param(url: &str, at: usize, sep: char) -> String {
    let value = at + "password=".len();
    let end = url[value..].find(sep).map_or(url.len(), |e| value + e);
    format!("{}***{}", &url[..value], &url[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            (
                "postgres://ds:s3cret@db.example:5433/photos",
                "postgres://ds:***@db.example:5433/photos",
            ),
            (
                "postgresql://ds@db/photos?password=s3cret&sslmode=disable",
                "postgresql://ds@db/photos?password=***&sslmode=disable",
            ),
            (
                "host=/run/pg user=ds password=s3cret dbname=photos",
                "host=/run/pg user=ds password=*** dbname=photos",
            ),
            (
                "postgres:///photos?host=/tmp/pg",
                "postgres:///photos?host=/tmp/pg",
            ),
        ] {
            assert_eq!(redact(url), shown);
        }
        let pool = Pool::new("postgres://ds:s3cret@db.example:5433/photos", "").unwrap();
        assert_eq!(pool.target(), "ds@db.example:5433/photos");
        let bad = Pool::new("postgres://ds:s3cret@db:notaport/x", "")
            .err()
            .unwrap();
        assert!(!bad.to_string().contains("s3cret"), "{bad}");
    }
}
