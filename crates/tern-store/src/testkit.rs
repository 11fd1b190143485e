//! Scratch PostgreSQL databases for tests: one fresh database per test on
//! the server named by `TERN_TEST_POSTGRES_URL` (default: the local
//! cluster `.ci/run` starts). Missing PostgreSQL skips a test on a
//! developer's machine and fails it in CI (`CI` set).

use sqlx::postgres::PgPoolOptions;
use sqlx::Executor;

pub const DEFAULT_URL: &str = "postgres://tern:tern@127.0.0.1:5432/tern";

pub struct ScratchDb {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl ScratchDb {
    /// Creates an empty database, or `None` when PostgreSQL is not there
    /// and this is not CI.
    pub async fn create() -> Option<ScratchDb> {
        let admin_url =
            std::env::var("TERN_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.into());
        let admin = match PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin_url)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "PostgreSQL is required in CI ({admin_url}): {e}"
                );
                eprintln!("skipping: no PostgreSQL at {admin_url}: {e}");
                return None;
            }
        };
        let name = format!("tern_t_{:016x}", rand_u64());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("CREATE DATABASE");
        admin.close().await;
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&admin_url);
        Some(ScratchDb {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        })
    }

    /// Drops the database (closing whatever is still connected).
    pub async fn drop_db(self) {
        if let Ok(admin) = PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.admin_url)
            .await
        {
            let _ = admin
                .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
                .await;
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}
