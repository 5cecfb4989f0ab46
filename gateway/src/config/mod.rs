//! The server's configuration: a TOML file with defaults for every option, and its validation.

pub mod env;
mod external;
mod master_key;
mod telemetry;

pub use external::ExternalConfig;
pub use master_key::{AwsKmsConfig, MasterKeySourceKind, DEFAULT_MASTER_KEY_ENV};
pub use telemetry::{OtlpHeaders, TelemetryConfig};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A rejected configuration: which option, which value, and the rule it breaks.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value {value} for `{field}`: {rule}")]
    Invalid {
        field: &'static str,
        value: String,
        rule: String,
    },
    #[error("invalid value {value} for `auth.trusted_issuers[{index}].{field}`: {rule}")]
    InvalidTrustedIssuer {
        /// Position of the entry in the `[[auth.trusted_issuers]]` list, from 0.
        index: usize,
        field: &'static str,
        value: String,
        rule: String,
    },
}

/// All options; every field has a default so an empty file is a valid configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Folder for the RocksDB store, keys and certificates.
    pub data_dir: PathBuf,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub vault: VaultConfig,
    pub gateway: GatewayConfig,
    pub http: HttpConfig,
    pub telemetry: TelemetryConfig,
    /// Calls to customers' secret managers and the cache of their values.
    pub external: ExternalConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// mTLS listener for agent sessions and the token endpoint.
    #[serde(deserialize_with = "socket_addr")]
    pub agent: SocketAddr,
    /// HTTPS listener for platform callers and runners.
    #[serde(deserialize_with = "socket_addr")]
    pub api: SocketAddr,
    /// Plain-HTTP listener for `/metrics`, `/healthz` and `/readyz`.
    #[serde(deserialize_with = "socket_addr")]
    pub ops: SocketAddr,
}

/// Parses `IP:port` with an error that shows the expected form.
fn socket_addr<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an IP address and port, e.g. \"127.0.0.1:8443\" or \"[::1]:8443\" (host names are not accepted)"
        ))
    })
}

/// Certificate files; a path left unset is taken from `data_dir/tls/`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub server_cert: Option<PathBuf>,
    pub server_key: Option<PathBuf>,
    /// CA bundle that agent client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER); agent certificates they list are rejected.
    pub client_crl: Option<PathBuf>,
    /// How often the TLS files are checked for changes, which reload them.
    pub reload_check_interval_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            server_cert: None,
            server_key: None,
            client_ca: None,
            client_crl: None,
            reload_check_interval_ms: 5000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `iss` of the tokens keygate signs and expects.
    pub issuer: String,
    /// `aud` of the tokens keygate signs and expects.
    pub audience: String,
    /// Ed25519 private key file (PEM, mode 0600) imported into the vault on the first
    /// start and then deleted; unset means `data_dir/keys/jwt-signing.pem`.
    pub signing_key: Option<PathBuf>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway_secs: u64,
    /// Maximum lifetime (`exp - iat`) of a presented token.
    pub max_token_lifetime_secs: u64,
    /// Lifetime of the tokens the agent token endpoint issues.
    pub agent_token_lifetime_secs: u64,
    /// Verified tokens remembered so a repeated token skips the signature check; 0 turns the cache off.
    pub verified_token_cache_size: usize,
    /// How long an agent's previous client secret keeps working after a rotation.
    pub client_secret_rotation_overlap_secs: u64,
    /// Logins allowed per client id per minute at the token endpoint (also the burst); 0 turns the limit off.
    pub token_requests_per_minute: u32,
    /// Time between a signing key rotation publishing the new key and that key signing,
    /// so verifiers that cache the JWK set fetch it first.
    pub signing_key_publish_delay_secs: u64,
    /// External identity providers whose tokens are accepted (`[[auth.trusted_issuers]]`).
    pub trusted_issuers: Vec<TrustedIssuerConfig>,
}

/// An external identity provider whose tokens keygate accepts, acting for one account.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuerConfig {
    /// The `iss` of its tokens.
    pub issuer: String,
    /// The `aud` its tokens must carry.
    pub audience: String,
    /// URL of its JWK set: https, or http for a loopback host only.
    pub jwks_url: String,
    /// PEM bundle of CA certificates trusted for `jwks_url`; unset means the Mozilla roots (webpki-roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Shortest time between two refetches of the JWK set that unknown key ids trigger.
    #[serde(default = "default_refetch_cooldown_secs")]
    pub refetch_cooldown_secs: u64,
    /// The keygate account its tokens act for.
    pub account: String,
    /// Scopes its tokens may grant; other scopes in a token are dropped.
    pub allowed_scopes: Vec<String>,
}

fn default_refetch_cooldown_secs() -> u64 {
    60
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultConfig {
    /// The source of the master key at start: a file, an environment variable or AWS KMS.
    pub master_key_source: MasterKeySourceKind,
    /// 32-byte master key file (mode 0600); unset means `data_dir/keys/master.key`.
    pub master_key_file: Option<PathBuf>,
    /// Variable holding the master key as 64 hexadecimal characters, for the
    /// `env` source; unset means `KEYGATE_MASTER_KEY`.
    pub master_key_env: Option<String>,
    /// The KMS key and endpoint of the `aws_kms` source.
    pub aws_kms: AwsKmsConfig,
    /// Folder that online backups are written into, one subfolder per
    /// backup; unset means `data_dir/backups`.
    pub backup_dir: Option<PathBuf>,
    /// JSON-lines file that receives a copy of every audit record; unset
    /// means the records are kept in the store only.
    pub audit_file: Option<PathBuf>,
    /// Whether the audit records of reads wait for the disk, like those of
    /// changes; unset means false (they are synced within 200 ms).
    pub audit_sync_reads: Option<bool>,
    /// Versions a secret keeps unless its own `max_versions` sets another
    /// number; unset means 10.
    pub default_max_versions: Option<u32>,
    /// Encryptions after which a project's data key is replaced by a new
    /// version; unset means 2^24 (16777216).
    pub data_key_max_encryptions: Option<u64>,
}

impl VaultConfig {
    /// Returns the vault's options from this section, with defaults for unset ones.
    pub fn vault_options(&self) -> keygate_vault::VaultOptions {
        let defaults = keygate_vault::VaultOptions::default();
        keygate_vault::VaultOptions {
            default_max_versions: self
                .default_max_versions
                .unwrap_or(defaults.default_max_versions),
            data_key_max_encryptions: self
                .data_key_max_encryptions
                .unwrap_or(defaults.data_key_max_encryptions),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// How often the gateway pings each agent; a session silent for three intervals is closed.
    pub heartbeat_interval_ms: u64,
    /// Largest session frame accepted in either direction, type byte included.
    pub max_frame_bytes: usize,
    /// Largest task result accepted from an agent; results above the frame
    /// size arrive in chunks. A larger result fails the task.
    pub max_result_bytes: usize,
    /// Longest `timeout_ms` a task may ask for.
    pub max_task_timeout_ms: u64,
    /// Maximum time a submit call waits for the result before it returns 202,
    /// and a task read with `wait_ms` waits for the task to end.
    pub max_wait_ms: u64,
    /// Tasks waiting for a free slot on one agent before submissions get 429.
    pub max_queued_tasks_per_agent: usize,
    /// How long finished task results stay readable at `GET /v1/tasks/{id}`.
    pub finished_task_retention_secs: u64,
    /// Finished tasks kept at most; beyond it the oldest are dropped before their retention ends.
    pub max_finished_tasks: usize,
    /// Bytes of results kept at most over all finished tasks; beyond it the
    /// oldest are dropped before their retention ends.
    pub max_finished_result_bytes: usize,
    /// Time a new connection has to finish its TLS handshake.
    pub tls_handshake_timeout_ms: u64,
    /// How long shutdown waits for running tasks to finish, then for open connections.
    pub shutdown_grace_ms: u64,
    /// Times a task is sent before it fails as `agent_disconnected`, when
    /// each session it was sent on ends before its result arrives.
    pub max_delivery_attempts: u32,
    /// How long an `Idempotency-Key` maps repeated submissions to the first task.
    pub idempotency_window_secs: u64,
    /// Maximum wait for an agent to take a frame. An agent that stops reading
    /// is closed as a slow consumer after it.
    pub write_timeout_ms: u64,
    /// TLS handshakes in progress per listener; connections beyond it are
    /// closed at once so a reconnect storm cannot starve running sessions.
    pub max_concurrent_handshakes: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body accepted by the JSON APIs.
    pub max_body_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./keygate-data"),
            listen: ListenConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            vault: VaultConfig::default(),
            gateway: GatewayConfig::default(),
            http: HttpConfig::default(),
            telemetry: TelemetryConfig::default(),
            external: ExternalConfig::default(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            agent: SocketAddr::from(([127, 0, 0, 1], 7443)),
            api: SocketAddr::from(([127, 0, 0, 1], 8443)),
            ops: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "keygate".into(),
            audience: "keygate".into(),
            signing_key: None,
            leeway_secs: 60,
            max_token_lifetime_secs: 24 * 3600,
            agent_token_lifetime_secs: 900,
            verified_token_cache_size: 100_000,
            client_secret_rotation_overlap_secs: 86_400,
            token_requests_per_minute: 60,
            signing_key_publish_delay_secs: 300,
            trusted_issuers: Vec::new(),
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            heartbeat_interval_ms: 10_000,
            max_frame_bytes: keygate_protocol::DEFAULT_MAX_FRAME_BYTES,
            max_result_bytes: 16 * 1024 * 1024,
            max_task_timeout_ms: 300_000,
            max_wait_ms: 60_000,
            max_queued_tasks_per_agent: 1024,
            finished_task_retention_secs: 600,
            max_finished_tasks: 100_000,
            max_finished_result_bytes: 1024 * 1024 * 1024,
            tls_handshake_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            max_delivery_attempts: 3,
            idempotency_window_secs: 86_400,
            write_timeout_ms: 10_000,
            max_concurrent_handshakes: 256,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// A commented configuration file with every option at its default.
pub const EXAMPLE: &str = include_str!("example.toml");

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, std::iter::empty())
    }

    /// Reads a TOML file, applies `KEYGATE_...` variables from `variables`
    /// (see [`env`]), and validates the result.
    pub fn load_with_env(
        path: &Path,
        variables: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let config = Config::read_with_env(path, variables)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file and applies the variables, without the range checks.
    pub fn read_with_env(
        path: &Path,
        variables: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let parse_error = |message: String| ConfigError::Parse {
            path: path.into(),
            message,
        };
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| parse_error(e.to_string()))?;
        let applied = env::apply(&mut table, variables);
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| {
                let from = if applied.is_empty() {
                    String::new()
                } else {
                    let names: Vec<String> =
                        applied.iter().map(|p| env::variable_name(p)).collect();
                    format!(" (with {} from the environment)", names.join(", "))
                };
                parse_error(format!("{e}{from}"))
            })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every option against its rule; returns the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Checks every option against its rule and returns every problem found.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if self.data_dir.as_os_str().is_empty() {
            problems.push(invalid("data_dir", "\"\"", "must be a folder path"));
        }
        problems.extend(check_identifier("auth.issuer", &self.auth.issuer).err());
        problems.extend(check_identifier("auth.audience", &self.auth.audience).err());
        problems.extend(check_range("auth.leeway_secs", self.auth.leeway_secs, 0, 600).err());
        problems.extend(
            check_range(
                "auth.client_secret_rotation_overlap_secs",
                self.auth.client_secret_rotation_overlap_secs,
                0,
                30 * 86_400,
            )
            .err(),
        );
        problems.extend(
            check_range(
                "auth.signing_key_publish_delay_secs",
                self.auth.signing_key_publish_delay_secs,
                0,
                86_400,
            )
            .err(),
        );
        problems.extend(
            check_range(
                "auth.token_requests_per_minute",
                self.auth.token_requests_per_minute as u64,
                0,
                1_000_000,
            )
            .err(),
        );
        problems.extend(
            check_range(
                "auth.verified_token_cache_size",
                self.auth.verified_token_cache_size as u64,
                0,
                10_000_000,
            )
            .err(),
        );
        problems.extend(
            check_range(
                "auth.max_token_lifetime_secs",
                self.auth.max_token_lifetime_secs,
                60,
                366 * 86400,
            )
            .err(),
        );
        problems.extend(
            check_range(
                "auth.agent_token_lifetime_secs",
                self.auth.agent_token_lifetime_secs,
                5,
                self.auth.max_token_lifetime_secs,
            )
            .err(),
        );
        problems.extend(self.validate_trusted_issuers().err());
        problems.extend(master_key::problems(self));
        problems.extend(check_backup_dir(self).err());
        problems.extend(telemetry::problems(self));
        problems.extend(external::problems(self));
        if self
            .vault
            .audit_file
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty())
        {
            problems.push(invalid(
                "vault.audit_file",
                "\"\"",
                "must be a file path; leave it out to keep audit records in the store only",
            ));
        }
        let vault = self.vault.vault_options();
        problems.extend(
            check_range(
                "vault.default_max_versions",
                u64::from(vault.default_max_versions),
                1,
                u64::from(keygate_vault::MAX_VERSIONS_LIMIT),
            )
            .err(),
        );
        problems.extend(
            check_range(
                "vault.data_key_max_encryptions",
                vault.data_key_max_encryptions,
                1,
                1 << 30,
            )
            .err(),
        );
        let g = &self.gateway;
        problems.extend(
            check_range(
                "gateway.heartbeat_interval_ms",
                g.heartbeat_interval_ms,
                100,
                600_000,
            )
            .err(),
        );
        problems.extend(
            check_range(
                "gateway.max_frame_bytes",
                g.max_frame_bytes as u64,
                4096,
                64 * 1024 * 1024,
            )
            .err(),
        );
        problems.extend(
            check_range(
                "gateway.max_result_bytes",
                g.max_result_bytes as u64,
                1024,
                1024 * 1024 * 1024,
            )
            .err(),
        );
        problems.extend(
            check_range(
                "gateway.max_task_timeout_ms",
                g.max_task_timeout_ms,
                1,
                24 * 3600 * 1000,
            )
            .err(),
        );
        problems.extend(check_range("gateway.max_wait_ms", g.max_wait_ms, 0, 600_000).err());
        problems.extend(
            check_range(
                "gateway.max_queued_tasks_per_agent",
                g.max_queued_tasks_per_agent as u64,
                0,
                1_000_000,
            )
            .err(),
        );
        problems.extend(
            check_range(
                "gateway.finished_task_retention_secs",
                g.finished_task_retention_secs,
                1,
                7 * 86400,
            )
            .err(),
        );
        problems.extend(
            check_range(
                "gateway.tls_handshake_timeout_ms",
                g.tls_handshake_timeout_ms,
                100,
                120_000,
            )
            .err(),
        );
        problems.extend(
            check_range(
                "gateway.max_finished_tasks",
                g.max_finished_tasks as u64,
                1,
                10_000_000,
            )
            .err(),
        );
        problems.extend(
            check_range(
                "gateway.max_finished_result_bytes",
                g.max_finished_result_bytes as u64,
                1024,
                1u64 << 40,
            )
            .err(),
        );
        problems.extend(
            check_range("gateway.shutdown_grace_ms", g.shutdown_grace_ms, 0, 600_000).err(),
        );
        problems.extend(
            check_range(
                "gateway.max_delivery_attempts",
                g.max_delivery_attempts as u64,
                1,
                100,
            )
            .err(),
        );
        problems.extend(
            check_range("gateway.write_timeout_ms", g.write_timeout_ms, 100, 600_000).err(),
        );
        problems.extend(
            check_range(
                "gateway.max_concurrent_handshakes",
                g.max_concurrent_handshakes as u64,
                1,
                100_000,
            )
            .err(),
        );
        problems.extend(
            check_range(
                "gateway.idempotency_window_secs",
                g.idempotency_window_secs,
                1,
                30 * 86400,
            )
            .err(),
        );
        problems.extend(
            check_range(
                "tls.reload_check_interval_ms",
                self.tls.reload_check_interval_ms,
                100,
                600_000,
            )
            .err(),
        );
        problems.extend(
            check_range(
                "http.max_body_bytes",
                self.http.max_body_bytes as u64,
                1024,
                64 * 1024 * 1024,
            )
            .err(),
        );
        let addrs = [
            ("listen.agent", self.listen.agent),
            ("listen.api", self.listen.api),
            ("listen.ops", self.listen.ops),
        ];
        for (i, (name, addr)) in addrs.iter().enumerate() {
            for (other, other_addr) in &addrs[i + 1..] {
                if addr.port() != 0 && addr == other_addr {
                    problems.push(invalid(
                        name,
                        addr,
                        &format!("is also used by `{other}`; each listener needs its own address"),
                    ));
                }
            }
        }
        problems
    }

    /// Checks each `[[auth.trusted_issuers]]` entry.
    fn validate_trusted_issuers(&self) -> Result<(), ConfigError> {
        for (index, entry) in self.auth.trusted_issuers.iter().enumerate() {
            let invalid = |field: &'static str, value: String, rule: String| {
                ConfigError::InvalidTrustedIssuer {
                    index,
                    field,
                    value,
                    rule,
                }
            };
            // The same rule as `auth.issuer` and `auth.audience`, reported with the entry's field.
            for (field, value) in [("issuer", &entry.issuer), ("audience", &entry.audience)] {
                if let Err(ConfigError::Invalid { value, rule, .. }) =
                    check_identifier("auth.trusted_issuers", value)
                {
                    return Err(invalid(field, value, rule));
                }
            }
            if entry.issuer == self.auth.issuer {
                return Err(invalid(
                    "issuer",
                    format!("{:?}", entry.issuer),
                    "is keygate's own issuer (`auth.issuer`); a trusted issuer needs its own `iss`"
                        .into(),
                ));
            }
            if let Some(first) = self.auth.trusted_issuers[..index]
                .iter()
                .position(|other| other.issuer == entry.issuer)
            {
                return Err(invalid(
                    "issuer",
                    format!("{:?}", entry.issuer),
                    format!(
                        "is also the issuer of entry {first}; each trusted issuer appears once"
                    ),
                ));
            }
            let url = crate::jwks_client::JwksUrl::parse(&entry.jwks_url)
                .map_err(|rule| invalid("jwks_url", format!("{:?}", entry.jwks_url), rule))?;
            if let Some(ca_file) = &entry.ca_file {
                if ca_file.as_os_str().is_empty() {
                    return Err(invalid(
                        "ca_file",
                        "\"\"".into(),
                        "must be a file path; leave it out to trust the Mozilla root certificates"
                            .into(),
                    ));
                }
                if !url.is_https() {
                    return Err(invalid(
                        "ca_file",
                        format!("{:?}", ca_file.display().to_string()),
                        "applies only to an https `jwks_url`".into(),
                    ));
                }
            }
            if !(1..=86_400).contains(&entry.refetch_cooldown_secs) {
                return Err(invalid(
                    "refetch_cooldown_secs",
                    entry.refetch_cooldown_secs.to_string(),
                    "must be between 1 and 86400".into(),
                ));
            }
            if let Err(keygate_vault::VaultError::InvalidAccount { reason, .. }) =
                keygate_vault::validate_account_id(&entry.account)
            {
                return Err(invalid(
                    "account",
                    format!("{:?}", entry.account),
                    format!("must be a keygate account id: {reason} (allowed: 1 to 64 characters of a-z, 0-9, _ and -, starting with a letter or digit)"),
                ));
            }
            check_trusted_scopes(&entry.allowed_scopes)
                .map_err(|(value, rule)| invalid("allowed_scopes", value, rule))?;
        }
        Ok(())
    }

    pub fn db_dir(&self) -> PathBuf {
        self.data_dir.join("db")
    }

    pub fn server_cert_path(&self) -> PathBuf {
        self.tls
            .server_cert
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls/server.pem"))
    }

    pub fn server_key_path(&self) -> PathBuf {
        self.tls
            .server_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls/server-key.pem"))
    }

    pub fn client_ca_path(&self) -> PathBuf {
        self.tls
            .client_ca
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls/ca.pem"))
    }

    pub fn signing_key_path(&self) -> PathBuf {
        self.auth
            .signing_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys/jwt-signing.pem"))
    }

    /// Returns the folder of online backups: `vault.backup_dir`, or `data_dir/backups`.
    pub fn backup_dir(&self) -> PathBuf {
        self.vault
            .backup_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("backups"))
    }

    pub fn master_key_path(&self) -> PathBuf {
        self.vault
            .master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys/master.key"))
    }
}

/// Rejects an empty `vault.backup_dir`, and one inside `data_dir/db`, where
/// backups would sit among RocksDB's own files. The check compares the paths
/// as written, without resolving links.
fn check_backup_dir(config: &Config) -> Result<(), ConfigError> {
    let Some(dir) = &config.vault.backup_dir else {
        return Ok(());
    };
    let shown = format!("{:?}", dir.display().to_string());
    if dir.as_os_str().is_empty() {
        return Err(invalid("vault.backup_dir", shown, "must be a folder path"));
    }
    if dir.starts_with(config.db_dir()) {
        return Err(invalid(
            "vault.backup_dir",
            shown,
            "must not be inside the database folder (data_dir/db); use a folder on another disk",
        ));
    }
    Ok(())
}

fn invalid(field: &'static str, value: impl std::fmt::Display, rule: &str) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: value.to_string(),
        rule: rule.to_owned(),
    }
}

fn check_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            field,
            value,
            &format!("must be between {min} and {max}"),
        ));
    }
    Ok(())
}

/// Checks a trusted issuer's scope list; returns the rejected value and the rule.
fn check_trusted_scopes(names: &[String]) -> Result<(), (String, String)> {
    use keygate_auth::Scope;

    if names.is_empty() {
        return Err((
            "[]".into(),
            "must list at least one scope, or the issuer's tokens could do nothing".into(),
        ));
    }
    let grantable = crate::trusted_issuers::grantable_scopes();
    for name in names {
        let rule = match Scope::parse(name) {
            Some(scope) if grantable.contains(&scope) => continue,
            Some(Scope::AgentSession) => {
                "is not allowed: only agent tokens from keygate's token endpoint open sessions"
                    .to_owned()
            }
            Some(Scope::KeysAdmin) => {
                "is not allowed: it manages keygate's own signing keys, and a trusted issuer acts within one account"
                    .to_owned()
            }
            _ => {
                let allowed: Vec<&str> = grantable.iter().map(|s| s.as_str()).collect();
                format!("is not a scope a trusted issuer can grant (allowed: {})", allowed.join(", "))
            }
        };
        return Err((format!("{name:?}"), rule));
    }
    Ok(())
}

fn check_identifier(field: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() || value.len() > 256 || value.chars().any(|c| c.is_control() || c == ' ') {
        return Err(invalid(
            field,
            format!("{value:?}"),
            "must be 1 to 256 printable characters without spaces",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_is_valid_and_default() {
        let example = Config::parse(EXAMPLE).unwrap();
        assert_eq!(format!("{example:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn docs_show_the_example() {
        let docs =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIG.md"))
                .unwrap();
        assert!(
            docs.contains(EXAMPLE),
            "docs/CONFIG.md must contain gateway/src/config/example.toml unchanged"
        );
    }

    #[test]
    fn problems_lists_every_rejected_value() {
        let config: Config =
            toml::from_str("[gateway]\nheartbeat_interval_ms = 5\nmax_wait_ms = 999999999\n")
                .unwrap();
        let fields: Vec<String> = config
            .problems()
            .iter()
            .map(|p| match p {
                ConfigError::Invalid { field, .. } => field.to_string(),
                other => other.to_string(),
            })
            .collect();
        assert_eq!(
            fields,
            vec!["gateway.heartbeat_interval_ms", "gateway.max_wait_ms"]
        );
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, "[gateway]\nheartbeat_interval_ms = 10000\n").unwrap();
        let vars = vec![(
            "KEYGATE_GATEWAY_HEARTBEAT_INTERVAL_MS".to_owned(),
            "2500".to_owned(),
        )];
        let config = Config::load_with_env(&path, vars).unwrap();
        assert_eq!(config.gateway.heartbeat_interval_ms, 2500);

        let bad = vec![(
            "KEYGATE_GATEWAY_HEARTBEAT_INTERVAL_MS".to_owned(),
            "soon".to_owned(),
        )];
        let err = Config::load_with_env(&path, bad).unwrap_err().to_string();
        assert!(
            err.contains("KEYGATE_GATEWAY_HEARTBEAT_INTERVAL_MS"),
            "{err}"
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.listen.agent.port(), 7443);
        assert_eq!(config.listen.api.port(), 8443);
        assert_eq!(config.listen.ops.port(), 9464);
        assert_eq!(
            config.master_key_path(),
            PathBuf::from("./keygate-data/keys/master.key")
        );
    }

    #[test]
    fn unknown_field_named() {
        let err = Config::parse("[gateway]\nheartbeat_ms = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("heartbeat_ms"), "{err}");
    }

    #[test]
    fn wrong_type_named() {
        let err = Config::parse("[listen]\napi = \"not an address\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("api"), "{err}");
        assert!(err.contains("\"not an address\""), "{err}");
        assert!(
            err.contains("127.0.0.1:8443"),
            "the error shows the expected form: {err}"
        );
    }

    #[test]
    fn rejected_values_name_field_and_value() {
        let cases = [
            (
                "[gateway]\nheartbeat_interval_ms = 5\n",
                "gateway.heartbeat_interval_ms",
                "5",
            ),
            (
                "[gateway]\nmax_frame_bytes = 10\n",
                "gateway.max_frame_bytes",
                "10",
            ),
            (
                "[gateway]\nmax_task_timeout_ms = 0\n",
                "gateway.max_task_timeout_ms",
                "0",
            ),
            (
                "[gateway]\nfinished_task_retention_secs = 0\n",
                "gateway.finished_task_retention_secs",
                "0",
            ),
            (
                "[gateway]\ntls_handshake_timeout_ms = 1\n",
                "gateway.tls_handshake_timeout_ms",
                "1",
            ),
            (
                "[gateway]\nmax_finished_tasks = 0\n",
                "gateway.max_finished_tasks",
                "0",
            ),
            ("[auth]\nissuer = \"\"\n", "auth.issuer", "\"\""),
            ("[auth]\naudience = \"a b\"\n", "auth.audience", "\"a b\""),
            ("[auth]\nleeway_secs = 601\n", "auth.leeway_secs", "601"),
            (
                "[auth]\nmax_token_lifetime_secs = 1\n",
                "auth.max_token_lifetime_secs",
                "1",
            ),
            (
                "[auth]\nagent_token_lifetime_secs = 999999\n",
                "auth.agent_token_lifetime_secs",
                "999999",
            ),
            ("[http]\nmax_body_bytes = 1\n", "http.max_body_bytes", "1"),
            (
                "[tls]\nreload_check_interval_ms = 99\n",
                "tls.reload_check_interval_ms",
                "99",
            ),
            (
                "[tls]\nreload_check_interval_ms = 600001\n",
                "tls.reload_check_interval_ms",
                "600001",
            ),
            ("data_dir = \"\"\n", "data_dir", "\"\""),
            (
                "[listen]\napi = \"127.0.0.1:7443\"\n",
                "listen.agent",
                "127.0.0.1:7443",
            ),
        ];
        for (text, field, value) in cases {
            match Config::parse(text) {
                Err(ConfigError::Invalid {
                    field: f, value: v, ..
                }) => {
                    assert_eq!(f, field, "config {text:?}");
                    assert_eq!(v, value, "config {text:?}");
                }
                other => panic!("config {text:?}: expected Invalid, got {other:?}"),
            }
        }
    }

    const TRUSTED_ISSUER: &str = r#"
[[auth.trusted_issuers]]
issuer = "https://idp.example.com/"
audience = "keygate-api"
jwks_url = "https://idp.example.com/.well-known/jwks.json"
account = "acme"
allowed_scopes = ["agents:admin", "tasks:write"]
"#;

    #[test]
    fn trusted_issuer_defaults() {
        let config = Config::parse(TRUSTED_ISSUER).unwrap();
        let entry = &config.auth.trusted_issuers[0];
        assert_eq!(entry.refetch_cooldown_secs, 60);
        assert_eq!(entry.ca_file, None);
        assert!(Config::parse("").unwrap().auth.trusted_issuers.is_empty());
    }

    #[test]
    fn trusted_issuer_missing_field_named() {
        let text = TRUSTED_ISSUER.replace("account = \"acme\"\n", "");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("account"), "{err}");
    }

    #[test]
    fn rejected_trusted_issuers_name_entry_field_and_value() {
        let replace = |from: &str, to: &str| {
            assert!(TRUSTED_ISSUER.contains(from), "{from}");
            TRUSTED_ISSUER.replace(from, to)
        };
        let second_entry = format!(
            "{TRUSTED_ISSUER}{}",
            TRUSTED_ISSUER.replace("account = \"acme\"", "account = \"globex\"")
        );
        let cases = [
            (
                replace("issuer = \"https://idp.example.com/\"", "issuer = \"\""),
                0,
                "issuer",
                "\"\"",
            ),
            (
                replace(
                    "issuer = \"https://idp.example.com/\"",
                    "issuer = \"keygate\"",
                ),
                0,
                "issuer",
                "\"keygate\"",
            ),
            (second_entry, 1, "issuer", "\"https://idp.example.com/\""),
            (
                replace("audience = \"keygate-api\"", "audience = \"a b\""),
                0,
                "audience",
                "\"a b\"",
            ),
            (
                replace(
                    "https://idp.example.com/.well-known",
                    "http://idp.example.com/.well-known",
                ),
                0,
                "jwks_url",
                "\"http://idp.example.com/.well-known/jwks.json\"",
            ),
            (
                replace(
                    "https://idp.example.com/.well-known",
                    "http://10.1.2.3/.well-known",
                ),
                0,
                "jwks_url",
                "\"http://10.1.2.3/.well-known/jwks.json\"",
            ),
            (
                replace(
                    "https://idp.example.com/.well-known/jwks.json",
                    "idp.example.com",
                ),
                0,
                "jwks_url",
                "\"idp.example.com\"",
            ),
            (
                replace(
                    "https://idp.example.com/.well-known",
                    "https://u:p@idp.example.com/.well-known",
                ),
                0,
                "jwks_url",
                "\"https://u:p@idp.example.com/.well-known/jwks.json\"",
            ),
            (
                replace("account = \"acme\"", "account = \"acme\"\nca_file = \"\""),
                0,
                "ca_file",
                "\"\"",
            ),
            (
                replace(
                    "jwks_url = \"https://idp.example.com/.well-known/jwks.json\"",
                    "jwks_url = \"http://127.0.0.1:9000/jwks\"\nca_file = \"/etc/idp-ca.pem\"",
                ),
                0,
                "ca_file",
                "\"/etc/idp-ca.pem\"",
            ),
            (
                replace(
                    "account = \"acme\"",
                    "account = \"acme\"\nrefetch_cooldown_secs = 0",
                ),
                0,
                "refetch_cooldown_secs",
                "0",
            ),
            (
                replace(
                    "account = \"acme\"",
                    "account = \"acme\"\nrefetch_cooldown_secs = 86401",
                ),
                0,
                "refetch_cooldown_secs",
                "86401",
            ),
            (
                replace("account = \"acme\"", "account = \"Acme Corp\""),
                0,
                "account",
                "\"Acme Corp\"",
            ),
            (
                replace("account = \"acme\"", "account = \"\""),
                0,
                "account",
                "\"\"",
            ),
            (
                replace("[\"agents:admin\", \"tasks:write\"]", "[]"),
                0,
                "allowed_scopes",
                "[]",
            ),
            (
                replace("\"tasks:write\"]", "\"agent:session\"]"),
                0,
                "allowed_scopes",
                "\"agent:session\"",
            ),
            (
                replace("\"tasks:write\"]", "\"keys:admin\"]"),
                0,
                "allowed_scopes",
                "\"keys:admin\"",
            ),
            (
                replace("\"tasks:write\"]", "\"secrets:write\"]"),
                0,
                "allowed_scopes",
                "\"secrets:write\"",
            ),
        ];
        for (text, index, field, value) in cases {
            match Config::parse(&text) {
                Err(ConfigError::InvalidTrustedIssuer {
                    index: i,
                    field: f,
                    value: v,
                    ..
                }) => {
                    assert_eq!(i, index, "config {text:?}");
                    assert_eq!(f, field, "config {text:?}");
                    assert_eq!(v, value, "config {text:?}");
                }
                other => panic!("config {text:?}: expected InvalidTrustedIssuer, got {other:?}"),
            }
        }
    }

    #[test]
    fn trusted_issuer_error_names_entry() {
        let text = TRUSTED_ISSUER.replace(
            "account = \"acme\"",
            "account = \"acme\"\nrefetch_cooldown_secs = 0",
        );
        let err = Config::parse(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid value 0 for `auth.trusted_issuers[0].refetch_cooldown_secs`: must be between 1 and 86400"
        );
    }

    #[test]
    fn audit_file_is_optional() {
        assert_eq!(Config::parse("").unwrap().vault.audit_file, None);
        let config =
            Config::parse("[vault]\naudit_file = \"/var/log/keygate/audit.jsonl\"\n").unwrap();
        assert_eq!(
            config.vault.audit_file,
            Some(PathBuf::from("/var/log/keygate/audit.jsonl"))
        );
        match Config::parse("[vault]\naudit_file = \"\"\n") {
            Err(ConfigError::Invalid { field, value, .. }) => {
                assert_eq!(field, "vault.audit_file");
                assert_eq!(value, "\"\"");
            }
            other => panic!("expected Invalid for an empty audit_file, got {other:?}"),
        }
    }

    #[test]
    fn backup_dir_defaults_under_data_dir() {
        let config = Config::parse("data_dir = \"/srv/kg\"\n").unwrap();
        assert_eq!(config.backup_dir(), PathBuf::from("/srv/kg/backups"));
        let config =
            Config::parse("data_dir = \"/srv/kg\"\n[vault]\nbackup_dir = \"/mnt/backups\"\n")
                .unwrap();
        assert_eq!(config.backup_dir(), PathBuf::from("/mnt/backups"));
    }

    #[test]
    fn backup_dir_rejected_inside_database() {
        for dir in ["/srv/kg/db", "/srv/kg/db/backups", ""] {
            let text = format!("data_dir = \"/srv/kg\"\n[vault]\nbackup_dir = \"{dir}\"\n");
            match Config::parse(&text) {
                Err(ConfigError::Invalid { field, value, .. }) => {
                    assert_eq!(field, "vault.backup_dir", "{dir:?}");
                    assert_eq!(value, format!("{dir:?}"), "{dir:?}");
                }
                other => panic!("backup_dir {dir:?}: expected Invalid, got {other:?}"),
            }
        }
    }
}
