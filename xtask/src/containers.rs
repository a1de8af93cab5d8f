//! Throwaway PostgreSQL and Redis in Docker (testcontainers), for a machine where no local server
//! answers but a Docker engine does. Each container is removed when its [`Container`] handle is
//! dropped, at the end of the xtask command that started it.

use std::any::Any;

use anyhow::{Context, Result};
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::redis::{REDIS_PORT, Redis};
use testcontainers_modules::testcontainers::runners::SyncRunner;

/// A running container; dropping it stops and removes the container.
pub struct Container(#[allow(dead_code)] Box<dyn Any>);

/// Whether a Docker engine is there to talk to (`DOCKER_HOST`, or the default socket).
pub fn docker_available() -> bool {
    std::env::var_os("DOCKER_HOST").is_some()
        || std::path::Path::new("/var/run/docker.sock").exists()
}

/// PostgreSQL (trust auth, user `postgres`): its URL and the container.
pub fn postgres() -> Result<(String, Container)> {
    let c = Postgres::default()
        .with_host_auth()
        .start()
        .context("starting PostgreSQL with testcontainers")?;
    let url = format!(
        "postgres://postgres@{}:{}/postgres",
        c.get_host()?,
        c.get_host_port_ipv4(5432)?
    );
    Ok((url, Container(Box::new(c))))
}

/// Redis: its URL and the container.
pub fn redis() -> Result<(String, Container)> {
    let c = Redis::default()
        .start()
        .context("starting Redis with testcontainers")?;
    let url = format!(
        "redis://{}:{}",
        c.get_host()?,
        c.get_host_port_ipv4(REDIS_PORT)?
    );
    Ok((url, Container(Box::new(c))))
}
