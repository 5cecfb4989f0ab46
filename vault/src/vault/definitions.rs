//! Secret definitions: storing, reading and listing them, and resolving one to
//! a value.

use crate::error::VaultError;
use crate::ids::{validate_secret_name, ProjectRef};
use crate::json_key::select_json_key;
use crate::layout;
use crate::location::SecretLocation;
use crate::store::{Space, WriteBatch};

use super::secrets::decode_named_json;
use super::{now_ms, Resolved, SecretDefinition, Vault, MAX_LIST_LIMIT};

impl Vault {
    /// Creates or replaces the definition `name` after validating the location
    /// (see [`SecretLocation::validate`]). Replacing keeps `created_at_ms`.
    ///
    /// Definition names follow the rule of [`validate_secret_name`]. A hosted
    /// location may name a secret that does not exist yet.
    pub fn put_definition(
        &self,
        project: &ProjectRef,
        name: &str,
        location: SecretLocation,
    ) -> Result<SecretDefinition, VaultError> {
        project.validate()?;
        validate_secret_name(name)?;
        location.validate()?;

        let _guard = self.lock_writes();
        let previous = self.load_definition(project, name)?;
        let now = now_ms();
        let definition = SecretDefinition {
            name: name.to_owned(),
            location,
            created_at_ms: previous.map_or(now, |previous| previous.created_at_ms),
            updated_at_ms: now,
        };
        let json = serde_json::to_vec(&definition).expect("SecretDefinition serializes to JSON");
        let mut batch = WriteBatch::default();
        batch.put(
            Space::Definitions,
            layout::definition_key(project, name),
            json,
        );
        self.store.write(batch)?;

        tracing::debug!(
            account = %project.account,
            project = %project.project,
            definition.name = %name,
            definition.provider = definition.location.provider(),
            "stored secret definition"
        );
        Ok(definition)
    }

    /// Returns a definition, or [`VaultError::DefinitionNotFound`].
    pub fn get_definition(
        &self,
        project: &ProjectRef,
        name: &str,
    ) -> Result<SecretDefinition, VaultError> {
        project.validate()?;
        validate_secret_name(name)?;
        self.load_definition(project, name)?
            .ok_or_else(|| VaultError::DefinitionNotFound {
                project: project.clone(),
                name: name.to_owned(),
            })
    }

    /// Definitions ordered by name (UTF-8 bytes), after `start_after`, at most
    /// `limit`, which is lowered to [`MAX_LIST_LIMIT`] when larger.
    pub fn list_definitions(
        &self,
        project: &ProjectRef,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SecretDefinition>, VaultError> {
        project.validate()?;
        let prefix = layout::project_prefix(project);
        let start_key = start_after.map(|name| layout::definition_key(project, name));
        let entries = self.store.scan_prefix(
            Space::Definitions,
            &prefix,
            start_key.as_deref(),
            limit.min(MAX_LIST_LIMIT),
        )?;
        entries
            .iter()
            .map(|(key, json)| {
                decode_named_json::<SecretDefinition>(Space::Definitions, &prefix, key, json, |d| {
                    &d.name
                })
            })
            .collect()
    }

    /// Resolves a definition by name to a value.
    ///
    /// A `hosted` location reads the latest version of its secret. When the
    /// location sets `json_key`, the value must be a JSON object, and the key
    /// selects one entry of it:
    ///
    /// 1. `json_key` is first looked up literally among the top-level keys, so
    ///    `"a.b"` finds a key named `a.b`.
    /// 2. Only if no such key exists, `json_key` is split on `.` and the parts
    ///    are looked up through nested objects: `"a.b"` then finds
    ///    `{"a": {"b": ...}}`. Arrays are not indexed.
    ///
    /// A string entry resolves to its text; a number, boolean, null, object or
    /// array to its compact JSON text. A value that is not a JSON object fails
    /// with [`VaultError::ValueNotJsonObject`], and a missing key with
    /// [`VaultError::JsonKeyNotFound`].
    ///
    /// Every external provider fails with [`VaultError::ProviderNotSupported`]:
    /// this crate stores their locations, and the gateway reads them from the
    /// providers.
    pub fn resolve(
        &self,
        project: &ProjectRef,
        definition_name: &str,
    ) -> Result<Resolved, VaultError> {
        let definition = self.get_definition(project, definition_name)?;
        let SecretLocation::Hosted { secret, json_key } = &definition.location else {
            return Err(VaultError::ProviderNotSupported {
                provider: definition.location.provider(),
                definition: definition.name,
            });
        };

        let (value, metadata) = self.read_secret(project, secret, None)?;
        let value = match json_key {
            Some(key) => select_json_key(&value, secret, key)?,
            None => value,
        };
        tracing::debug!(
            account = %project.account,
            project = %project.project,
            definition.name = %definition.name,
            secret.name = %secret,
            secret.version = metadata.current_version,
            "resolved secret definition"
        );
        Ok(Resolved {
            value,
            definition: definition.name,
            source_version: Some(metadata.current_version),
            location: definition.location,
        })
    }

    fn load_definition(
        &self,
        project: &ProjectRef,
        name: &str,
    ) -> Result<Option<SecretDefinition>, VaultError> {
        let key = layout::definition_key(project, name);
        let Some(json) = self.store.get(Space::Definitions, &key)? else {
            return Ok(None);
        };
        let definition: SecretDefinition = serde_json::from_slice(&json).map_err(|e| {
            VaultError::corrupt(
                Space::Definitions,
                &key,
                format!("invalid definition JSON: {e}"),
            )
        })?;
        Ok(Some(definition))
    }
}
