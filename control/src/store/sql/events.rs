//! [`EventStore`] on SQL: reading the `events` audit trail (every write transaction appends to it
//! through [`Write::event`](super::write::Write::event)).

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::column::{json_of, ts, u64_of};
use super::{list_limit, SqlStore};
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::*;
use crate::store::EventStore;

pub(super) fn event_row(row: &AnyRow) -> Result<Event> {
    const T: &str = "events";
    let entity: String = row.try_get("entity")?;
    Ok(Event {
        id: u64_of(T, row.try_get("id")?)?,
        at: ts(T, row.try_get("at")?)?,
        actor: row.try_get("actor")?,
        entity: Entity::parse(&entity)
            .ok_or_else(|| StoreError::corrupt(T, format!("entity {entity:?}")))?,
        entity_id: row.try_get("entity_id")?,
        action: row.try_get("action")?,
        detail: json_of(T, &row.try_get::<String, _>("detail")?)?,
        config_version: row
            .try_get::<Option<i64>, _>("config_version")?
            .map(|v| u64_of(T, v))
            .transpose()?,
    })
}

#[async_trait]
impl EventStore for SqlStore {
    async fn list_events(&self, query: EventQuery) -> Result<Vec<Event>> {
        let limit = list_limit(query.limit);
        let mut sql = String::from(
            "SELECT id, at, actor, entity, entity_id, action, detail, config_version FROM events WHERE 1 = 1",
        );
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if query.after.is_some() {
            sql += &format!(" AND id > {}", next());
        }
        if query.entity.is_some() {
            sql += &format!(" AND entity = {}", next());
        }
        if query.entity_id.is_some() {
            sql += &format!(" AND entity_id = {}", next());
        }
        // A live feed reads forward from `after`; otherwise the latest `limit`.
        let order = if query.after.is_some() { "ASC" } else { "DESC" };
        sql += &format!(" ORDER BY id {order} LIMIT {}", next());
        let mut q = sqlx::query(&sql);
        if let Some(after) = query.after {
            q = q.bind(i64::try_from(after).unwrap_or(i64::MAX));
        }
        if let Some(entity) = query.entity {
            q = q.bind(entity.as_str());
        }
        if let Some(entity_id) = query.entity_id {
            q = q.bind(entity_id);
        }
        let mut events: Vec<Event> = q
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(event_row)
            .collect::<Result<_>>()?;
        events.sort_by_key(|e| e.id);
        Ok(events)
    }
}
