//! What the HTTP API keeps: keys, suppressions, webhooks, and the reads
//! behind search and statistics.
//!
//! The SQL is the same for both backends; it is written once, with `?`
//! placeholders, in `impl_api_store!`, which each backend expands with its
//! own pool and placeholder style.

use async_trait::async_trait;

use crate::types::*;
use crate::Result;

#[async_trait]
pub trait ApiStore: Send + Sync {
    // --- API keys ---
    async fn add_api_key(&self, key: &ApiKeyRecord) -> Result<()>;
    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>>;
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>>;
    /// Revokes a key by id or name; false when no live key matched.
    async fn revoke_api_key(&self, id_or_name: &str, now: i64) -> Result<bool>;

    // --- suppressions ---
    /// The suppressed addresses among `addresses` (compared in lower case),
    /// with the reason each is suppressed.
    async fn suppressed(&self, addresses: &[String]) -> Result<Vec<(String, String)>>;
    /// Adds or replaces an entry.
    async fn add_suppression(&self, s: &Suppression) -> Result<()>;
    async fn remove_suppression(&self, address: &str) -> Result<bool>;
    /// Entries in address order, after `after` when given.
    async fn list_suppressions(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Suppression>>;

    // --- webhooks ---
    async fn add_webhook(&self, w: &WebhookRecord) -> Result<()>;
    async fn list_webhooks(&self) -> Result<Vec<WebhookRecord>>;
    async fn remove_webhook(&self, id: &str) -> Result<bool>;
    /// The newest deliveries of one webhook, each with its attempts.
    async fn webhook_deliveries(&self, id: &str, limit: usize) -> Result<Vec<WebhookDelivery>>;
    /// Takes up to `limit` due deliveries, counts the attempt and leases
    /// them until `lease_until`; concurrent claimers never share one.
    async fn claim_webhooks(
        &self,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<DueWebhook>>;
    /// Records one attempt and its consequence.
    async fn record_webhook(
        &self,
        delivery_id: i64,
        attempt: &WebhookAttempt,
        outcome: WebhookOutcome,
    ) -> Result<()>;

    // --- events and search ---
    /// An event with no queued message behind it: mail refused at SMTP or
    /// API time (`rejected`). `message_id` names the refused transaction.
    async fn record_event(
        &self,
        message_id: &str,
        recipient: Option<&str>,
        kind: &str,
        detail: Option<&str>,
        at: i64,
    ) -> Result<()>;
    async fn search_messages(&self, q: &MessageQuery) -> Result<Vec<MessageSummary>>;
    async fn message_summary(&self, id: &str) -> Result<Option<MessageSummary>>;
    /// Events per kind per bucket of `bucket` seconds in [since, until).
    async fn stats(&self, since: i64, until: i64, bucket: i64) -> Result<Vec<StatRow>>;
    /// Recipients per status, for metrics.
    async fn recipient_counts(&self) -> Result<Vec<(String, i64)>>;
    /// Removes events, finished messages and finished webhook deliveries
    /// older than `before`; returns how many events went.
    async fn prune(&self, before: i64) -> Result<u64>;
}

/// `?` placeholders as PostgreSQL's `$1, $2, ...`.
pub(crate) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn same(sql: &str) -> String {
    sql.to_string()
}

/// A LIKE pattern matching `text` anywhere, with `\` as the escape.
pub(crate) fn contains_pattern(text: &str) -> String {
    let mut p = String::from("%");
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// A value bound into a query built at run time.
pub(crate) enum Bind {
    Text(String),
    Int(i64),
}

/// Expands to `impl ApiStore for $store`. `$pool` is the pool field,
/// `$light` the pool for frequent bookkeeping writes that need not wait
/// for fsync (events of refused mail, webhook attempts), `$sql` turns `?`
/// SQL into the backend's, `$begin` opens a write transaction,
/// `$skip_locked` is appended to claim queries.
macro_rules! impl_api_store {
    ($store:ty, $db:ty, $pool:ident, $light:ident, $sql:path, $begin:literal, $skip_locked:literal) => {
        impl $store {
            async fn recipients_of(
                &self,
                id: &str,
            ) -> $crate::Result<Vec<tern_core::RecipientState>> {
                use sqlx::Row;
                let rows = sqlx::query(&$sql(
                    "SELECT address, status, detail, CAST(attempts AS BIGINT) AS attempts,
                            next_attempt FROM recipients
                     WHERE message_id = ? ORDER BY idx",
                ))
                .bind(id)
                .fetch_all(&self.$pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| tern_core::RecipientState {
                        address: r.get("address"),
                        status: tern_core::DeliveryStatus::from_parts(
                            r.get::<String, _>("status").as_str(),
                            r.get("detail"),
                        )
                        .unwrap_or(tern_core::DeliveryStatus::Queued),
                        attempts: r.get::<i64, _>("attempts") as u32,
                        next_attempt: r.get("next_attempt"),
                    })
                    .collect())
            }

            async fn summaries(
                &self,
                rows: Vec<<$db as sqlx::Database>::Row>,
            ) -> $crate::Result<Vec<$crate::MessageSummary>> {
                use sqlx::Row;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let id: String = r.get("id");
                    out.push($crate::MessageSummary {
                        recipients: self.recipients_of(&id).await?,
                        id,
                        sender: r.get("sender"),
                        created_at: r.get("created_at"),
                        size: r.get::<i64, _>("size") as u64,
                        info: $crate::MessageInfo::from_columns(
                            r.get("subject"),
                            r.get("tags"),
                            r.get("metadata"),
                        ),
                    });
                }
                Ok(out)
            }
        }

        #[async_trait::async_trait]
        impl $crate::api::ApiStore for $store {
            async fn add_api_key(&self, key: &$crate::ApiKeyRecord) -> $crate::Result<()> {
                sqlx::query(&$sql(
                    "INSERT INTO api_keys (id, name, scope, secret_hash, created_at, revoked_at)
                     VALUES (?, ?, ?, ?, ?, ?)",
                ))
                .bind(&key.id)
                .bind(&key.name)
                .bind(&key.scope)
                .bind(&key.secret_hash)
                .bind(key.created_at)
                .bind(key.revoked_at)
                .execute(&self.$pool)
                .await?;
                Ok(())
            }

            async fn api_key(&self, id: &str) -> $crate::Result<Option<$crate::ApiKeyRecord>> {
                let rows = self.keys_where("id = ?", Some(id)).await?;
                Ok(rows.into_iter().next())
            }

            async fn list_api_keys(&self) -> $crate::Result<Vec<$crate::ApiKeyRecord>> {
                self.keys_where("1 = 1", None).await
            }

            async fn revoke_api_key(&self, id_or_name: &str, now: i64) -> $crate::Result<bool> {
                Ok(sqlx::query(&$sql(
                    "UPDATE api_keys SET revoked_at = ?
                     WHERE (id = ? OR name = ?) AND revoked_at IS NULL",
                ))
                .bind(now)
                .bind(id_or_name)
                .bind(id_or_name)
                .execute(&self.$pool)
                .await?
                .rows_affected()
                    > 0)
            }

            async fn suppressed(
                &self,
                addresses: &[String],
            ) -> $crate::Result<Vec<(String, String)>> {
                use sqlx::Row;
                if addresses.is_empty() {
                    return Ok(Vec::new());
                }
                let marks = vec!["?"; addresses.len()].join(", ");
                let sql = $sql(&format!(
                    "SELECT address, reason FROM suppressions WHERE address IN ({marks})"
                ));
                let mut q = sqlx::query(&sql);
                for a in addresses {
                    q = q.bind(a.to_lowercase());
                }
                Ok(q.fetch_all(&self.$pool)
                    .await?
                    .into_iter()
                    .map(|r| (r.get("address"), r.get("reason")))
                    .collect())
            }

            async fn add_suppression(&self, s: &$crate::Suppression) -> $crate::Result<()> {
                sqlx::query(&$sql(
                    "INSERT INTO suppressions (address, reason, source, created_at)
                     VALUES (?, ?, ?, ?)
                     ON CONFLICT (address) DO UPDATE SET reason = excluded.reason,
                         source = excluded.source, created_at = excluded.created_at",
                ))
                .bind(s.address.to_lowercase())
                .bind(&s.reason)
                .bind(&s.source)
                .bind(s.created_at)
                .execute(&self.$pool)
                .await?;
                Ok(())
            }

            async fn remove_suppression(&self, address: &str) -> $crate::Result<bool> {
                Ok(
                    sqlx::query(&$sql("DELETE FROM suppressions WHERE address = ?"))
                        .bind(address.to_lowercase())
                        .execute(&self.$pool)
                        .await?
                        .rows_affected()
                        > 0,
                )
            }

            async fn list_suppressions(
                &self,
                after: Option<&str>,
                limit: usize,
            ) -> $crate::Result<Vec<$crate::Suppression>> {
                use sqlx::Row;
                let rows = sqlx::query(&$sql(
                    "SELECT address, reason, source, created_at FROM suppressions
                     WHERE address > ? ORDER BY address LIMIT ?",
                ))
                .bind(after.unwrap_or(""))
                .bind(limit as i64)
                .fetch_all(&self.$pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| $crate::Suppression {
                        address: r.get("address"),
                        reason: r.get("reason"),
                        source: r.get("source"),
                        created_at: r.get("created_at"),
                    })
                    .collect())
            }

            async fn add_webhook(&self, w: &$crate::WebhookRecord) -> $crate::Result<()> {
                sqlx::query(&$sql(
                    "INSERT INTO webhooks (id, url, events, secret, created_at) VALUES (?, ?, ?, ?, ?)",
                ))
                .bind(&w.id)
                .bind(&w.url)
                .bind(format!(",{},", w.events.join(",")))
                .bind(&w.secret)
                .bind(w.created_at)
                .execute(&self.$pool)
                .await?;
                Ok(())
            }

            async fn list_webhooks(&self) -> $crate::Result<Vec<$crate::WebhookRecord>> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT id, url, events, secret, created_at FROM webhooks ORDER BY created_at, id",
                )
                .fetch_all(&self.$pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| $crate::WebhookRecord {
                        id: r.get("id"),
                        url: r.get("url"),
                        events: r
                            .get::<String, _>("events")
                            .split(',')
                            .filter(|e| !e.is_empty())
                            .map(str::to_string)
                            .collect(),
                        secret: r.get("secret"),
                        created_at: r.get("created_at"),
                    })
                    .collect())
            }

            async fn remove_webhook(&self, id: &str) -> $crate::Result<bool> {
                Ok(sqlx::query(&$sql("DELETE FROM webhooks WHERE id = ?"))
                    .bind(id)
                    .execute(&self.$pool)
                    .await?
                    .rows_affected()
                    > 0)
            }

            async fn webhook_deliveries(
                &self,
                id: &str,
                limit: usize,
            ) -> $crate::Result<Vec<$crate::WebhookDelivery>> {
                use sqlx::Row;
                let rows = sqlx::query(&$sql(
                    "SELECT id, webhook_id, event_id, status, attempts, next_attempt, created_at
                     FROM webhook_deliveries WHERE webhook_id = ? ORDER BY id DESC LIMIT ?",
                ))
                .bind(id)
                .bind(limit as i64)
                .fetch_all(&self.$pool)
                .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let id: i64 = r.get("id");
                    let attempts = sqlx::query(&$sql(
                        "SELECT at, status_code, error FROM webhook_attempts
                         WHERE delivery_id = ? ORDER BY at",
                    ))
                    .bind(id)
                    .fetch_all(&self.$pool)
                    .await?
                    .into_iter()
                    .map(|a| $crate::WebhookAttempt {
                        at: a.get("at"),
                        status_code: a.get("status_code"),
                        error: a.get("error"),
                    })
                    .collect();
                    out.push($crate::WebhookDelivery {
                        id,
                        webhook_id: r.get("webhook_id"),
                        event_id: r.get("event_id"),
                        status: r.get("status"),
                        attempts: r.get::<i64, _>("attempts") as u32,
                        next_attempt: r.get("next_attempt"),
                        created_at: r.get("created_at"),
                        attempts_log: attempts,
                    });
                }
                Ok(out)
            }

            async fn claim_webhooks(
                &self,
                now: i64,
                lease_until: i64,
                limit: usize,
            ) -> $crate::Result<Vec<$crate::DueWebhook>> {
                use sqlx::Row;
                let mut tx = self.$light.begin_with($begin).await?;
                let sql = $sql(&format!(
                    "SELECT d.id AS delivery_id, d.attempts, w.id AS webhook_id, w.url, w.secret,
                            e.id AS event_id, e.message_id, e.recipient, e.kind, e.detail,
                            e.data, e.at, m.subject, m.tags, m.metadata
                     FROM webhook_deliveries d
                     JOIN webhooks w ON w.id = d.webhook_id
                     JOIN events e ON e.id = d.event_id
                     LEFT JOIN messages m ON m.id = e.message_id
                     WHERE d.status = 'pending' AND d.next_attempt <= ?
                       AND (d.leased_until IS NULL OR d.leased_until <= ?)
                     ORDER BY d.next_attempt, d.id LIMIT ?{}",
                    $skip_locked
                ));
                let rows = sqlx::query(&sql)
                    .bind(now)
                    .bind(now)
                    .bind(limit as i64)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let delivery_id: i64 = r.get("delivery_id");
                    sqlx::query(&$sql(
                        "UPDATE webhook_deliveries SET attempts = attempts + 1, leased_until = ?
                         WHERE id = ?",
                    ))
                    .bind(lease_until)
                    .bind(delivery_id)
                    .execute(&mut *tx)
                    .await?;
                    out.push($crate::DueWebhook {
                        delivery_id,
                        webhook_id: r.get("webhook_id"),
                        url: r.get("url"),
                        secret: r.get("secret"),
                        attempts: r.get::<i64, _>("attempts") as u32,
                        event: $crate::FullEvent {
                            id: r.get("event_id"),
                            message_id: r.get("message_id"),
                            recipient: r.get("recipient"),
                            kind: r.get("kind"),
                            detail: r.get("detail"),
                            data: r.get("data"),
                            at: r.get("at"),
                            info: $crate::MessageInfo::from_columns(
                                r.get("subject"),
                                r.get("tags"),
                                r.get("metadata"),
                            ),
                        },
                    });
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn record_webhook(
                &self,
                delivery_id: i64,
                attempt: &$crate::WebhookAttempt,
                outcome: $crate::WebhookOutcome,
            ) -> $crate::Result<()> {
                let mut tx = self.$light.begin_with($begin).await?;
                sqlx::query(&$sql(
                    "INSERT INTO webhook_attempts (delivery_id, at, status_code, error)
                     VALUES (?, ?, ?, ?)",
                ))
                .bind(delivery_id)
                .bind(attempt.at)
                .bind(attempt.status_code)
                .bind(&attempt.error)
                .execute(&mut *tx)
                .await?;
                let (status, next) = match outcome {
                    $crate::WebhookOutcome::Delivered => ("delivered", attempt.at),
                    $crate::WebhookOutcome::RetryAt(t) => ("pending", t),
                    $crate::WebhookOutcome::Failed => ("failed", attempt.at),
                };
                sqlx::query(&$sql(
                    "UPDATE webhook_deliveries SET status = ?, next_attempt = ?, leased_until = NULL
                     WHERE id = ?",
                ))
                .bind(status)
                .bind(next)
                .bind(delivery_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn record_event(
                &self,
                message_id: &str,
                recipient: Option<&str>,
                kind: &str,
                detail: Option<&str>,
                at: i64,
            ) -> $crate::Result<()> {
                sqlx::query(&$sql(
                    "INSERT INTO events (message_id, recipient, kind, detail, at) VALUES (?, ?, ?, ?, ?)",
                ))
                .bind(message_id)
                .bind(recipient)
                .bind(kind)
                .bind(detail)
                .bind(at)
                .execute(&self.$light)
                .await?;
                Ok(())
            }

            async fn search_messages(
                &self,
                q: &$crate::MessageQuery,
            ) -> $crate::Result<Vec<$crate::MessageSummary>> {
                use $crate::api::Bind;
                let mut cond: Vec<&str> = Vec::new();
                let mut binds: Vec<Bind> = Vec::new();
                if let Some(r) = &q.recipient {
                    cond.push(
                        "EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
                         AND LOWER(r.address) = ?)",
                    );
                    binds.push(Bind::Text(r.to_lowercase()));
                }
                if let Some(s) = &q.sender {
                    cond.push("LOWER(m.sender) = ?");
                    binds.push(Bind::Text(s.to_lowercase()));
                }
                if let Some(s) = &q.subject {
                    cond.push("LOWER(m.subject) LIKE ? ESCAPE '\\'");
                    binds.push(Bind::Text($crate::api::contains_pattern(&s.to_lowercase())));
                }
                if let Some(s) = &q.status {
                    cond.push(
                        "EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
                         AND r.status = ?)",
                    );
                    binds.push(Bind::Text(s.clone()));
                }
                if let Some(t) = &q.tag {
                    cond.push("m.tags LIKE ? ESCAPE '\\'");
                    let quoted = serde_json::to_string(t).expect("a string");
                    binds.push(Bind::Text($crate::api::contains_pattern(&quoted)));
                }
                if let Some(t) = q.since {
                    cond.push("m.created_at >= ?");
                    binds.push(Bind::Int(t));
                }
                if let Some(t) = q.until {
                    cond.push("m.created_at < ?");
                    binds.push(Bind::Int(t));
                }
                if let Some((at, id)) = &q.after {
                    cond.push("(m.created_at < ? OR (m.created_at = ? AND m.id < ?))");
                    binds.push(Bind::Int(*at));
                    binds.push(Bind::Int(*at));
                    binds.push(Bind::Text(id.clone()));
                }
                let filter = if cond.is_empty() {
                    String::new()
                } else {
                    format!("WHERE {}", cond.join(" AND "))
                };
                let sql = $sql(&format!(
                    "SELECT m.id, m.sender, m.created_at, m.size, m.subject, m.tags, m.metadata
                     FROM messages m {filter}
                     ORDER BY m.created_at DESC, m.id DESC LIMIT ?"
                ));
                let mut query = sqlx::query(&sql);
                for b in binds {
                    query = match b {
                        Bind::Text(s) => query.bind(s),
                        Bind::Int(i) => query.bind(i),
                    };
                }
                let rows = query
                    .bind(q.limit as i64)
                    .fetch_all(&self.$pool)
                    .await?;
                self.summaries(rows).await
            }

            async fn message_summary(
                &self,
                id: &str,
            ) -> $crate::Result<Option<$crate::MessageSummary>> {
                let rows = sqlx::query(&$sql(
                    "SELECT id, sender, created_at, size, subject, tags, metadata
                     FROM messages WHERE id = ?",
                ))
                .bind(id)
                .fetch_all(&self.$pool)
                .await?;
                Ok(self.summaries(rows).await?.into_iter().next())
            }

            async fn stats(
                &self,
                since: i64,
                until: i64,
                bucket: i64,
            ) -> $crate::Result<Vec<$crate::StatRow>> {
                use sqlx::Row;
                let bucket = bucket.max(1);
                let rows = sqlx::query(&$sql(
                    "SELECT (at - ?) / ? AS b, kind, COUNT(*) AS n FROM events
                     WHERE at >= ? AND at < ? GROUP BY b, kind ORDER BY b, kind",
                ))
                .bind(since)
                .bind(bucket)
                .bind(since)
                .bind(until)
                .fetch_all(&self.$pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| $crate::StatRow {
                        bucket: since + r.get::<i64, _>("b") * bucket,
                        kind: r.get("kind"),
                        count: r.get("n"),
                    })
                    .collect())
            }

            async fn recipient_counts(&self) -> $crate::Result<Vec<(String, i64)>> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT status, COUNT(*) AS n FROM recipients GROUP BY status ORDER BY status",
                )
                .fetch_all(&self.$pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| (r.get("status"), r.get("n")))
                    .collect())
            }

            async fn prune(&self, before: i64) -> $crate::Result<u64> {
                let mut tx = self.$pool.begin_with($begin).await?;
                sqlx::query(&$sql(
                    "DELETE FROM webhook_deliveries WHERE created_at < ? AND status <> 'pending'",
                ))
                .bind(before)
                .execute(&mut *tx)
                .await?;
                // Pending webhook deliveries keep their event.
                let events = sqlx::query(&$sql(
                    "DELETE FROM events WHERE at < ? AND NOT EXISTS
                     (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = events.id)",
                ))
                .bind(before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                sqlx::query(&$sql(
                    "DELETE FROM messages WHERE created_at < ? AND NOT EXISTS
                     (SELECT 1 FROM recipients r WHERE r.message_id = messages.id
                      AND r.status IN ('queued', 'deferred'))",
                ))
                .bind(before)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(events)
            }
        }

        impl $store {
            async fn keys_where(
                &self,
                cond: &str,
                value: Option<&str>,
            ) -> $crate::Result<Vec<$crate::ApiKeyRecord>> {
                use sqlx::Row;
                let sql = $sql(&format!(
                    "SELECT id, name, scope, secret_hash, created_at, revoked_at FROM api_keys
                     WHERE {cond} ORDER BY created_at, id"
                ));
                let mut q = sqlx::query(&sql);
                if let Some(v) = value {
                    q = q.bind(v);
                }
                Ok(q.fetch_all(&self.$pool)
                    .await?
                    .into_iter()
                    .map(|r| $crate::ApiKeyRecord {
                        id: r.get("id"),
                        name: r.get("name"),
                        scope: r.get("scope"),
                        secret_hash: r.get("secret_hash"),
                        created_at: r.get("created_at"),
                        revoked_at: r.get("revoked_at"),
                    })
                    .collect())
            }
        }
    };
}

pub(crate) use impl_api_store;
