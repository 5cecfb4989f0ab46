//! The server's configuration: a TOML file with defaults for every option, and its validation.

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
    /// Ed25519 private key (PEM, mode 0600); unset means `data_dir/keys/jwt-signing.pem`.
    pub signing_key: Option<PathBuf>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway_secs: u64,
    /// Longest lifetime (`exp - iat`) a presented token may have.
    pub max_token_lifetime_secs: u64,
    /// Lifetime of the tokens the agent token endpoint issues.
    pub agent_token_lifetime_secs: u64,
    /// Verified tokens remembered so a repeated token skips the signature check; 0 turns the cache off.
    pub verified_token_cache_size: usize,
    /// How long an agent's previous client secret keeps working after a rotation.
    pub client_secret_rotation_overlap_secs: u64,
    /// Logins allowed per client id per minute at the token endpoint (also the burst); 0 turns the limit off.
    pub token_requests_per_minute: u32,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultConfig {
    /// 32-byte master key file (mode 0600); unset means `data_dir/keys/master.key`.
    pub master_key_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// How often the gateway pings each agent; a session silent for three intervals is closed.
    pub heartbeat_interval_ms: u64,
    /// Largest session frame accepted in either direction, type byte included.
    pub max_frame_bytes: usize,
    /// Longest `timeout_ms` a task may ask for.
    pub max_task_timeout_ms: u64,
    /// Longest time a submit call waits for the result before answering 202.
    pub max_wait_ms: u64,
    /// Tasks waiting for a free slot on one agent before submissions get 429.
    pub max_queued_tasks_per_agent: usize,
    /// How long finished task results stay readable at `GET /v1/tasks/{id}`.
    pub finished_task_retention_secs: u64,
    /// Finished tasks kept at most; beyond it the oldest are dropped before their retention ends.
    pub max_finished_tasks: usize,
    /// Time a new connection has to finish its TLS handshake.
    pub tls_handshake_timeout_ms: u64,
    /// How long shutdown waits for open connections to finish.
    pub shutdown_grace_ms: u64,
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
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            heartbeat_interval_ms: 10_000,
            max_frame_bytes: keygate_protocol::DEFAULT_MAX_FRAME_BYTES,
            max_task_timeout_ms: 300_000,
            max_wait_ms: 60_000,
            max_queued_tasks_per_agent: 1024,
            finished_task_retention_secs: 600,
            max_finished_tasks: 100_000,
            tls_handshake_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
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

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.into(),
                message,
            },
            other => other,
        })?;
        Ok(config)
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

    /// Checks every option against its rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "\"\"", "must be a folder path"));
        }
        check_identifier("auth.issuer", &self.auth.issuer)?;
        check_identifier("auth.audience", &self.auth.audience)?;
        check_range("auth.leeway_secs", self.auth.leeway_secs, 0, 600)?;
        check_range(
            "auth.client_secret_rotation_overlap_secs",
            self.auth.client_secret_rotation_overlap_secs,
            0,
            30 * 86_400,
        )?;
        check_range(
            "auth.token_requests_per_minute",
            self.auth.token_requests_per_minute as u64,
            0,
            1_000_000,
        )?;
        check_range(
            "auth.verified_token_cache_size",
            self.auth.verified_token_cache_size as u64,
            0,
            10_000_000,
        )?;
        check_range(
            "auth.max_token_lifetime_secs",
            self.auth.max_token_lifetime_secs,
            60,
            366 * 86400,
        )?;
        check_range(
            "auth.agent_token_lifetime_secs",
            self.auth.agent_token_lifetime_secs,
            5,
            self.auth.max_token_lifetime_secs,
        )?;
        let g = &self.gateway;
        check_range(
            "gateway.heartbeat_interval_ms",
            g.heartbeat_interval_ms,
            100,
            600_000,
        )?;
        check_range(
            "gateway.max_frame_bytes",
            g.max_frame_bytes as u64,
            4096,
            64 * 1024 * 1024,
        )?;
        check_range(
            "gateway.max_task_timeout_ms",
            g.max_task_timeout_ms,
            1,
            24 * 3600 * 1000,
        )?;
        check_range("gateway.max_wait_ms", g.max_wait_ms, 0, 600_000)?;
        check_range(
            "gateway.max_queued_tasks_per_agent",
            g.max_queued_tasks_per_agent as u64,
            0,
            1_000_000,
        )?;
        check_range(
            "gateway.finished_task_retention_secs",
            g.finished_task_retention_secs,
            1,
            7 * 86400,
        )?;
        check_range(
            "gateway.tls_handshake_timeout_ms",
            g.tls_handshake_timeout_ms,
            100,
            120_000,
        )?;
        check_range(
            "gateway.max_finished_tasks",
            g.max_finished_tasks as u64,
            1,
            10_000_000,
        )?;
        check_range("gateway.shutdown_grace_ms", g.shutdown_grace_ms, 0, 600_000)?;
        check_range(
            "tls.reload_check_interval_ms",
            self.tls.reload_check_interval_ms,
            100,
            600_000,
        )?;
        check_range(
            "http.max_body_bytes",
            self.http.max_body_bytes as u64,
            1024,
            64 * 1024 * 1024,
        )?;
        let addrs = [
            ("listen.agent", self.listen.agent),
            ("listen.api", self.listen.api),
            ("listen.ops", self.listen.ops),
        ];
        for (i, (name, addr)) in addrs.iter().enumerate() {
            for (other, other_addr) in &addrs[i + 1..] {
                if addr.port() != 0 && addr == other_addr {
                    return Err(invalid(
                        name,
                        addr,
                        &format!("is also used by `{other}`; each listener needs its own address"),
                    ));
                }
            }
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

    pub fn master_key_path(&self) -> PathBuf {
        self.vault
            .master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys/master.key"))
    }
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
}
