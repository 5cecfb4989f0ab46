//! The agent directory: agent records and their client credentials, in the store.
//!
//! Layout in the `agents` column family: `id\0{agent_id}` stores the JSON
//! record; `acct\0{account}\0{agent_id}` is an empty index entry for listing
//! an account's agents. Account and agent ids never contain a NUL byte.

use std::sync::{Arc, Mutex};

use keygate_auth::{AuthError, ClientSecret, ClientSecretHash};
use keygate_vault::{KvStore, Space, StoreError, WriteBatch};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

/// A stored agent. The client secret itself is never stored, only its hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentRecord {
    pub id: String,
    pub account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub secret_hash: ClientSecretHash,
    pub created_at_ms: u64,
    #[serde(default)]
    pub disabled: bool,
    /// While paused, the agent keeps its session and finishes running tasks,
    /// and new tasks queue until it is resumed or they time out.
    #[serde(default)]
    pub paused: bool,
    /// When a session of the agent first opened, in Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_connected_at_ms: Option<u64>,
    /// The secret replaced by the last rotation, accepted until its end of overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<PreviousSecret>,
    /// Tokens issued (`iat`) before this time, in Unix seconds, are revoked.
    #[serde(default)]
    pub tokens_valid_from: u64,
    /// Projects this agent serves; tasks for other projects are rejected. None means any project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projects: Option<Vec<String>>,
}

/// The agent secret a login matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretMatch {
    Current,
    /// The secret replaced by the last rotation, still inside its overlap.
    Previous,
}

/// A rotated-out client secret that still works during the rotation overlap.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreviousSecret {
    pub hash: ClientSecretHash,
    pub valid_until_ms: u64,
}

impl AgentRecord {
    /// Returns whether a token issued at `issued_at` (Unix seconds) is still valid for this agent.
    pub fn accepts_token_issued_at(&self, issued_at: u64) -> bool {
        !self.disabled && issued_at >= self.tokens_valid_from
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("agent {agent_id} does not exist")]
    NotFound { agent_id: String },
    #[error("the stored record of agent {agent_id} is not valid JSON: {reason}")]
    Corrupt { agent_id: String, reason: String },
}

#[derive(Clone)]
pub struct AgentDirectory {
    store: Arc<dyn KvStore>,
    /// Serializes read-modify-write updates of agent records.
    updates: Arc<Mutex<()>>,
}

impl AgentDirectory {
    pub fn new(store: Arc<dyn KvStore>) -> AgentDirectory {
        AgentDirectory {
            store,
            updates: Arc::new(Mutex::new(())),
        }
    }

    /// Creates an agent with a new client secret, returned here and nowhere else.
    pub fn create(
        &self,
        account: &str,
        name: Option<String>,
        projects: Option<Vec<String>>,
    ) -> Result<(AgentRecord, ClientSecret), DirectoryError> {
        let secret = ClientSecret::generate();
        let record = AgentRecord {
            id: new_agent_id(),
            account: account.to_owned(),
            name,
            secret_hash: secret.hash(),
            created_at_ms: crate::now_ms(),
            disabled: false,
            paused: false,
            first_connected_at_ms: None,
            previous_secret: None,
            tokens_valid_from: 0,
            projects,
        };
        let mut batch = WriteBatch::default();
        batch.put(
            Space::Agents,
            record_key(&record.id),
            serde_json::to_vec(&record).expect("record serializes"),
        );
        batch.put(Space::Agents, index_key(account, &record.id), Vec::new());
        self.store.write(batch)?;
        Ok((record, secret))
    }

    pub fn get(&self, agent_id: &str) -> Result<Option<AgentRecord>, DirectoryError> {
        let Some(bytes) = self.store.get(Space::Agents, &record_key(agent_id))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| DirectoryError::Corrupt {
                agent_id: agent_id.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Lists the account's agents ordered by id, after `start_after`, at most `limit`.
    pub fn list(
        &self,
        account: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AgentRecord>, DirectoryError> {
        let prefix = index_key(account, "");
        let after = start_after.map(|id| index_key(account, id));
        let entries = self
            .store
            .scan_prefix(Space::Agents, &prefix, after.as_deref(), limit)?;
        let mut agents = Vec::with_capacity(entries.len());
        for (key, _) in entries {
            let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if let Some(record) = self.get(&id)? {
                agents.push(record);
            }
        }
        Ok(agents)
    }

    /// Checks client credentials. A wrong secret and an unknown id give the
    /// same `InvalidClient`. `AgentDisabled` comes only with the right secret,
    /// so it reveals nothing to a caller without one.
    pub fn authenticate(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<(AgentRecord, SecretMatch), AuthError> {
        let invalid = || AuthError::InvalidClient {
            client_id: client_id.chars().take(64).collect(),
        };
        let record = match self.get(client_id) {
            Ok(Some(record)) => record,
            Ok(None) => return Err(invalid()),
            Err(e) => {
                tracing::error!(error = %e, client.id = client_id, "agent lookup failed during login");
                return Err(invalid());
            }
        };
        let matched =
            if record.secret_hash.matches(client_secret) {
                SecretMatch::Current
            } else if record.previous_secret.as_ref().is_some_and(|p| {
                crate::now_ms() < p.valid_until_ms && p.hash.matches(client_secret)
            }) {
                SecretMatch::Previous
            } else {
                return Err(invalid());
            };
        if record.disabled {
            return Err(AuthError::AgentDisabled {
                agent_id: record.id,
            });
        }
        Ok((record, matched))
    }

    /// Disables or enables an agent. Disabling revokes every token issued so far.
    pub fn set_disabled(
        &self,
        agent_id: &str,
        disabled: bool,
    ) -> Result<AgentRecord, DirectoryError> {
        self.update(agent_id, |record| {
            record.disabled = disabled;
            if disabled {
                record.tokens_valid_from = next_second();
            }
        })
    }

    /// Stores when a session of the agent first opened.
    pub fn set_first_connected(
        &self,
        agent_id: &str,
        at_ms: u64,
    ) -> Result<AgentRecord, DirectoryError> {
        self.update(agent_id, |record| {
            record.first_connected_at_ms.get_or_insert(at_ms);
        })
    }

    /// Pauses or resumes task delivery to an agent.
    pub fn set_paused(&self, agent_id: &str, paused: bool) -> Result<AgentRecord, DirectoryError> {
        self.update(agent_id, |record| record.paused = paused)
    }

    /// Replaces the client secret, keeps the old one valid for `overlap_ms`, and
    /// revokes every token issued so far; returns the new secret.
    pub fn rotate_secret(
        &self,
        agent_id: &str,
        overlap_ms: u64,
    ) -> Result<(AgentRecord, ClientSecret), DirectoryError> {
        let secret = ClientSecret::generate();
        let record = self.update(agent_id, |record| {
            record.previous_secret = (overlap_ms > 0).then(|| PreviousSecret {
                hash: record.secret_hash.clone(),
                valid_until_ms: crate::now_ms() + overlap_ms,
            });
            record.secret_hash = secret.hash();
            record.tokens_valid_from = next_second();
        })?;
        Ok((record, secret))
    }

    fn update(
        &self,
        agent_id: &str,
        change: impl FnOnce(&mut AgentRecord),
    ) -> Result<AgentRecord, DirectoryError> {
        let _guard = self.updates.lock().expect("agent update lock");
        let mut record = self
            .get(agent_id)?
            .ok_or_else(|| DirectoryError::NotFound {
                agent_id: agent_id.to_owned(),
            })?;
        change(&mut record);
        let mut batch = WriteBatch::default();
        batch.put(
            Space::Agents,
            record_key(agent_id),
            serde_json::to_vec(&record).expect("record serializes"),
        );
        self.store.write(batch)?;
        Ok(record)
    }
}

/// Returns the start of the next whole second. Tokens carry `iat` in whole
/// seconds, so a token issued earlier in the current second stays revoked.
fn next_second() -> u64 {
    crate::now_ms() / 1000 + 1
}

fn record_key(agent_id: &str) -> Vec<u8> {
    [b"id\0".as_slice(), agent_id.as_bytes()].concat()
}

fn index_key(account: &str, agent_id: &str) -> Vec<u8> {
    [
        b"acct\0".as_slice(),
        account.as_bytes(),
        b"\0",
        agent_id.as_bytes(),
    ]
    .concat()
}

fn new_agent_id() -> String {
    format!("agt_{}", random_hex(12))
}

/// `bytes` random bytes from the system source, as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .expect("the system random source failed");
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes * 2);
    for byte in buf {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_vault::MemStore;

    #[test]
    fn create_list_authenticate() {
        let dir = AgentDirectory::new(Arc::new(MemStore::new()));
        let (a1, s1) = dir.create("acme", Some("east".into()), None).unwrap();
        let (a2, _) = dir.create("acme", None, None).unwrap();
        let (_b1, _) = dir.create("other", None, None).unwrap();

        let listed: Vec<String> = dir
            .list("acme", None, 10)
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect();
        let mut expected = vec![a1.id.clone(), a2.id.clone()];
        expected.sort();
        assert_eq!(listed, expected);
        let after_first = dir.list("acme", Some(&expected[0]), 10).unwrap();
        assert_eq!(after_first.len(), 1);

        assert_eq!(dir.authenticate(&a1.id, s1.expose()).unwrap().0.id, a1.id);
        assert!(dir.authenticate(&a2.id, s1.expose()).is_err());
        assert!(dir.authenticate("agt_missing", s1.expose()).is_err());
        let stored = serde_json::to_string(&dir.get(&a1.id).unwrap().unwrap()).unwrap();
        assert!(
            !stored.contains(s1.expose()),
            "the secret itself must not be stored"
        );
    }
}
