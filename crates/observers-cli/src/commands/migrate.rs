//! `observers migrate`: apply the embedded schema.

use super::db::DbArgs;
use crate::CliResult;

pub async fn run(db: &DbArgs) -> CliResult {
    let pool = db.pool().await?;
    observers_postgres::migrate(&pool).await?;
    let latest = observers_postgres::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    println!("schema is up to date (version {latest})");
    Ok(())
}
