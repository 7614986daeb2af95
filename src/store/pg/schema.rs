//! The database schema, created and migrated by the daemon: versioned SQL
//! files in `migrations/`, applied in one transaction at start under an
//! advisory lock (two daemons starting together apply them once), refused
//! when the database was migrated by a newer dualsight.

use postgres::Client;

use super::PgError;

/// Migrations in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[include_str!("migrations/0001_init.sql")];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Key of the advisory lock migrations and space creation hold.
pub(super) const SCHEMA_LOCK: i64 = 0x6475_616c_7369_6768; // "dualsigh"

/// Brings the database to [`SCHEMA_VERSION`]; returns the version found.
pub(super) fn migrate(client: &mut Client, target: &str) -> Result<i32, PgError> {
    migrate_with(client, target, MIGRATIONS)
}

/// [`migrate`] with `migrations` in place of this binary's: for tests of an
/// upgrade and of a migration that fails, which one version cannot show.
#[doc(hidden)]
pub fn migrate_with(
    client: &mut Client,
    target: &str,
    migrations: &[&str],
) -> Result<i32, PgError> {
    let supported = migrations.len() as i32;
    let q = |what: &'static str| move |source| PgError::Query { what, source };
    let mut tx = client.transaction().map_err(q("starting the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(q("locking the schema"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS dualsight_schema (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .map_err(q("creating dualsight_schema"))?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM dualsight_schema",
            &[],
        )
        .map_err(q("reading the schema version"))?
        .get(0);
    if found > supported {
        return Err(PgError::NewerSchema {
            target: target.to_owned(),
            found,
            supported,
        });
    }
    for (i, sql) in migrations.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql).map_err(|source| {
            if sql.contains("CREATE EXTENSION") && is_missing_extension(&source) {
                PgError::NoPgvector {
                    target: target.to_owned(),
                    reason: source.to_string(),
                }
            } else {
                PgError::Migration { version, source }
            }
        })?;
        tx.execute(
            "INSERT INTO dualsight_schema (version) VALUES ($1)",
            &[&version],
        )
        .map_err(q("recording the schema version"))?;
        tracing::info!(version, database = target, "applied schema migration");
    }
    tx.commit().map_err(q("committing the migration"))?;
    Ok(found)
}

/// Whether creating the extension failed because it is not installed or
/// not allowed (rather than, say, a lost connection).
fn is_missing_extension(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::UNDEFINED_FILE
            || *c == SqlState::INSUFFICIENT_PRIVILEGE
            || *c == SqlState::FEATURE_NOT_SUPPORTED
    }) || e.to_string().contains("extension \"vector\"")
}
