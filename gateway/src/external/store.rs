//! Stored connections, one record per account and name in the `connections` space.

use std::sync::Arc;

use keygate_vault::{KvStore, Space, StoreError, WriteBatch};

use super::connection::{ConnectionSpec, HostedCredential, StoredConnection};

/// Most connections one listing returns.
pub const MAX_LIST: usize = 1000;

/// A stored record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored connection {name:?} of account {account} is not valid JSON: {reason}")]
    Corrupt {
        account: String,
        name: String,
        reason: String,
    },
}

/// The connections of every account.
#[derive(Clone)]
pub struct ConnectionStore {
    store: Arc<dyn KvStore>,
    /// Serializes changes, so two creations of one name cannot both report it new.
    writes: Arc<std::sync::Mutex<()>>,
}

fn key(account: &str, name: &str) -> Vec<u8> {
    [account.as_bytes(), b"\0", name.as_bytes()].concat()
}

impl ConnectionStore {
    pub fn new(store: Arc<dyn KvStore>) -> ConnectionStore {
        ConnectionStore {
            store,
            writes: Arc::default(),
        }
    }

    /// Creates or replaces a connection; replacing keeps `created_at_ms`.
    /// Returns the stored record and whether it is new.
    pub fn put(
        &self,
        account: &str,
        name: &str,
        spec: ConnectionSpec<HostedCredential>,
        projects: Option<Vec<String>>,
    ) -> Result<(StoredConnection, bool), ConnectionStoreError> {
        let _writing = self.writes.lock().expect("connection store lock");
        let previous = self.get(account, name)?;
        let now = crate::now_ms();
        let created = previous.is_none();
        let record = StoredConnection {
            name: name.to_owned(),
            spec,
            projects,
            created_at_ms: previous.map_or(now, |p| p.created_at_ms),
            updated_at_ms: now,
        };
        let json = serde_json::to_vec(&record).expect("a connection serializes to JSON");
        let mut batch = WriteBatch::default();
        batch.put(Space::Connections, key(account, name), json);
        self.store.write(batch)?;
        Ok((record, created))
    }

    pub fn get(
        &self,
        account: &str,
        name: &str,
    ) -> Result<Option<StoredConnection>, ConnectionStoreError> {
        let Some(json) = self.store.get(Space::Connections, &key(account, name))? else {
            return Ok(None);
        };
        decode(account, name, &json).map(Some)
    }

    /// Connections of `account` by name, after `after`, at most `limit`.
    pub fn list(
        &self,
        account: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredConnection>, ConnectionStoreError> {
        let prefix = key(account, "");
        let start = after.map(|name| key(account, name));
        let entries = self.store.scan_prefix(
            Space::Connections,
            &prefix,
            start.as_deref(),
            limit.min(MAX_LIST),
        )?;
        entries
            .iter()
            .map(|(k, json)| {
                let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                decode(account, &name, json)
            })
            .collect()
    }

    /// Deletes a connection; returns whether it existed.
    pub fn delete(&self, account: &str, name: &str) -> Result<bool, ConnectionStoreError> {
        let _writing = self.writes.lock().expect("connection store lock");
        if self.get(account, name)?.is_none() {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.delete(Space::Connections, key(account, name));
        self.store.write(batch)?;
        Ok(true)
    }
}

fn decode(
    account: &str,
    name: &str,
    json: &[u8],
) -> Result<StoredConnection, ConnectionStoreError> {
    serde_json::from_slice(json).map_err(|e| ConnectionStoreError::Corrupt {
        account: account.to_owned(),
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_vault::MemStore;

    #[test]
    fn put_get_list_delete() {
        let store = ConnectionStore::new(Arc::new(MemStore::new()));
        let spec: ConnectionSpec<HostedCredential> = serde_json::from_value(serde_json::json!({
            "type": "aws_secrets_manager", "region": "eu-west-1"
        }))
        .unwrap();
        let (first, created) = store.put("acme", "b", spec.clone(), None).unwrap();
        assert!(created);
        let (second, created) = store.put("acme", "b", spec.clone(), None).unwrap();
        assert!(!created);
        assert_eq!(second.created_at_ms, first.created_at_ms);
        store.put("acme", "a", spec.clone(), None).unwrap();
        store.put("acme-two", "a", spec, None).unwrap();
        let names: Vec<String> = store
            .list("acme", None, 10)
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["a", "b"], "other accounts stay out");
        let after: Vec<String> = store
            .list("acme", Some("a"), 10)
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(after, ["b"]);
        assert!(store.delete("acme", "a").unwrap());
        assert!(!store.delete("acme", "a").unwrap());
        assert!(store.get("acme", "a").unwrap().is_none());
        assert!(store.get("acme-two", "a").unwrap().is_some());
    }
}
