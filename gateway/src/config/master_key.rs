//! The master-key options of `[vault]` and `[vault.aws_kms]`, and their validation.

use std::path::PathBuf;

use serde::Deserialize;

use super::{check_range, invalid, Config, ConfigError};
use crate::master_key::kms::KmsEndpoint;

/// Environment variable of the `env` source when `vault.master_key_env` is unset.
pub const DEFAULT_MASTER_KEY_ENV: &str = "KEYGATE_MASTER_KEY";

/// Source of the master key at start.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MasterKeySourceKind {
    /// `vault.master_key_file`: 64 hexadecimal characters, mode 0600.
    #[default]
    File,
    /// The variable `vault.master_key_env`: 64 hexadecimal characters.
    Env,
    /// `vault.aws_kms.wrapped_key_file`, unwrapped by the KMS Decrypt API.
    AwsKms,
}

/// `[vault.aws_kms]`: a master key wrapped by AWS KMS.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsKmsConfig {
    /// KMS endpoint URL, such as `https://kms.eu-west-1.amazonaws.com`; no default.
    pub endpoint: Option<String>,
    /// Region of the KMS key, used in the request signature.
    pub region: Option<String>,
    /// KMS key id, ARN or alias that wraps the master key. Decrypt checks it
    /// when set; wrapping a key needs it.
    pub key_id: Option<String>,
    /// File of the wrapped master key (base64 ciphertext blob); unset means
    /// `data_dir/keys/master.key.kms`.
    pub wrapped_key_file: Option<PathBuf>,
    /// PEM bundle of CA certificates for an https endpoint; unset means the
    /// Mozilla roots (webpki-roots).
    pub ca_file: Option<PathBuf>,
    /// Whether credentials may come from the EC2 instance metadata service.
    /// Only `false` is accepted: credentials come from the environment.
    pub use_instance_metadata: bool,
    /// Time one KMS call may take.
    pub timeout_ms: u64,
}

impl Default for AwsKmsConfig {
    fn default() -> Self {
        AwsKmsConfig {
            endpoint: None,
            region: None,
            key_id: None,
            wrapped_key_file: None,
            ca_file: None,
            use_instance_metadata: false,
            timeout_ms: 5000,
        }
    }
}

impl Config {
    /// Returns the variable of the `env` source: `vault.master_key_env`, or `KEYGATE_MASTER_KEY`.
    pub fn master_key_env(&self) -> &str {
        self.vault
            .master_key_env
            .as_deref()
            .unwrap_or(DEFAULT_MASTER_KEY_ENV)
    }

    /// Returns the wrapped key file: `vault.aws_kms.wrapped_key_file`, or
    /// `data_dir/keys/master.key.kms`.
    pub fn wrapped_key_path(&self) -> PathBuf {
        self.vault
            .aws_kms
            .wrapped_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys/master.key.kms"))
    }
}

/// Checks the master-key options; `[vault.aws_kms]` is checked only when it is the source.
pub(super) fn problems(config: &Config) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    if let Some(name) = &config.vault.master_key_env {
        if let Err(rule) = check_variable_name(name) {
            problems.push(invalid("vault.master_key_env", format!("{name:?}"), &rule));
        }
    }
    if config.vault.master_key_source != MasterKeySourceKind::AwsKms {
        return problems;
    }

    let kms = &config.vault.aws_kms;
    let required = "is required when vault.master_key_source = \"aws_kms\"";
    match &kms.endpoint {
        None => problems.push(invalid("vault.aws_kms.endpoint", "(unset)", required)),
        Some(endpoint) => {
            if let Err(rule) = KmsEndpoint::parse(endpoint) {
                problems.push(invalid(
                    "vault.aws_kms.endpoint",
                    format!("{endpoint:?}"),
                    &rule,
                ));
            }
        }
    }
    match &kms.region {
        None => problems.push(invalid("vault.aws_kms.region", "(unset)", required)),
        Some(region) => {
            let valid = (1..=64).contains(&region.len())
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                problems.push(invalid(
                    "vault.aws_kms.region",
                    format!("{region:?}"),
                    "must be an AWS region name such as \"eu-west-1\": 1 to 64 characters of a-z, 0-9 and -",
                ));
            }
        }
    }
    if let Some(key_id) = &kms.key_id {
        let valid = (1..=2048).contains(&key_id.len())
            && !key_id.chars().any(|c| c.is_whitespace() || c.is_control());
        if !valid {
            problems.push(invalid(
                "vault.aws_kms.key_id",
                format!("{key_id:?}"),
                "must be a KMS key id, key ARN, alias name or alias ARN: 1 to 2048 characters without spaces",
            ));
        }
    }
    if let Some(path) = &kms.wrapped_key_file {
        if path.as_os_str().is_empty() {
            problems.push(invalid(
                "vault.aws_kms.wrapped_key_file",
                "\"\"",
                "must be a file path; leave it out for data_dir/keys/master.key.kms",
            ));
        }
    }
    if let Some(ca_file) = &kms.ca_file {
        let shown = format!("{:?}", ca_file.display().to_string());
        if ca_file.as_os_str().is_empty() {
            problems.push(invalid(
                "vault.aws_kms.ca_file",
                shown,
                "must be a file path; leave it out to trust the Mozilla root certificates",
            ));
        } else if kms
            .endpoint
            .as_deref()
            .is_some_and(|endpoint| endpoint.starts_with("http://"))
        {
            problems.push(invalid(
                "vault.aws_kms.ca_file",
                shown,
                "applies only to an https endpoint",
            ));
        }
    }
    // TODO: credentials from the EC2 instance metadata service are not
    // implemented, so hosts with an instance role must export the role's
    // credentials into keygate's environment.
    if kms.use_instance_metadata {
        problems.push(invalid(
            "vault.aws_kms.use_instance_metadata",
            "true",
            "is not supported: keygate reads AWS credentials only from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN in its environment; set it to false",
        ));
    }
    problems.extend(check_range("vault.aws_kms.timeout_ms", kms.timeout_ms, 100, 120_000).err());
    problems
}

/// Accepts a portable environment variable name: a letter or `_`, then letters, digits and `_`.
fn check_variable_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let valid_start = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !valid_start || name.len() > 256 || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(
            "must be an environment variable name: 1 to 256 characters of A-Z, a-z, 0-9 and _, not starting with a digit"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KMS: &str = "[vault]\nmaster_key_source = \"aws_kms\"\n[vault.aws_kms]\nendpoint = \"http://127.0.0.1:4566\"\nregion = \"eu-west-1\"\nkey_id = \"alias/keygate\"\n";

    #[test]
    fn defaults() {
        let config = Config::parse("data_dir = \"/srv/kg\"\n").unwrap();
        assert_eq!(config.vault.master_key_source, MasterKeySourceKind::File);
        assert_eq!(config.master_key_env(), "KEYGATE_MASTER_KEY");
        assert_eq!(
            config.wrapped_key_path(),
            PathBuf::from("/srv/kg/keys/master.key.kms")
        );
        assert_eq!(config.vault.aws_kms.timeout_ms, 5000);
        assert!(!config.vault.aws_kms.use_instance_metadata);
    }

    #[test]
    fn sources_parse() {
        let env =
            Config::parse("[vault]\nmaster_key_source = \"env\"\nmaster_key_env = \"KG_KEY\"\n")
                .unwrap();
        assert_eq!(env.vault.master_key_source, MasterKeySourceKind::Env);
        assert_eq!(env.master_key_env(), "KG_KEY");
        let kms = Config::parse(KMS).unwrap();
        assert_eq!(kms.vault.master_key_source, MasterKeySourceKind::AwsKms);
        assert_eq!(kms.vault.aws_kms.key_id.as_deref(), Some("alias/keygate"));

        let err = Config::parse("[vault]\nmaster_key_source = \"vault\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("aws_kms"),
            "the error lists the sources: {err}"
        );
    }

    #[test]
    fn kms_options_unchecked_for_other_sources() {
        let config =
            Config::parse("[vault.aws_kms]\nendpoint = \"http://10.0.0.1\"\ntimeout_ms = 1\n");
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn rejected_values_name_field_and_value() {
        let replace = |from: &str, to: &str| {
            assert!(KMS.contains(from), "{from}");
            KMS.replace(from, to)
        };
        let cases = [
            (
                "[vault]\nmaster_key_env = \"1KEY\"\n".to_owned(),
                "vault.master_key_env",
                "\"1KEY\"",
            ),
            (
                "[vault]\nmaster_key_env = \"MY-KEY\"\n".to_owned(),
                "vault.master_key_env",
                "\"MY-KEY\"",
            ),
            (
                replace("endpoint = \"http://127.0.0.1:4566\"\n", ""),
                "vault.aws_kms.endpoint",
                "(unset)",
            ),
            (
                replace("http://127.0.0.1:4566", "http://kms.example.com"),
                "vault.aws_kms.endpoint",
                "\"http://kms.example.com\"",
            ),
            (
                replace("http://127.0.0.1:4566", "https://kms.example.com/keys"),
                "vault.aws_kms.endpoint",
                "\"https://kms.example.com/keys\"",
            ),
            (
                replace("region = \"eu-west-1\"\n", ""),
                "vault.aws_kms.region",
                "(unset)",
            ),
            (
                replace("eu-west-1", "EU West"),
                "vault.aws_kms.region",
                "\"EU West\"",
            ),
            (
                replace("alias/keygate", "alias/key gate"),
                "vault.aws_kms.key_id",
                "\"alias/key gate\"",
            ),
            (
                format!("{KMS}wrapped_key_file = \"\"\n"),
                "vault.aws_kms.wrapped_key_file",
                "\"\"",
            ),
            (
                format!("{KMS}ca_file = \"/etc/keygate/kms-ca.pem\"\n"),
                "vault.aws_kms.ca_file",
                "\"/etc/keygate/kms-ca.pem\"",
            ),
            (
                format!("{KMS}use_instance_metadata = true\n"),
                "vault.aws_kms.use_instance_metadata",
                "true",
            ),
            (
                format!("{KMS}timeout_ms = 99\n"),
                "vault.aws_kms.timeout_ms",
                "99",
            ),
            (
                format!("{KMS}timeout_ms = 120001\n"),
                "vault.aws_kms.timeout_ms",
                "120001",
            ),
        ];
        for (text, field, value) in cases {
            match Config::parse(&text) {
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

    #[test]
    fn every_problem_listed() {
        let config: Config = toml::from_str(
            "[vault]\nmaster_key_source = \"aws_kms\"\n[vault.aws_kms]\ntimeout_ms = 0\n",
        )
        .unwrap();
        let fields: Vec<&str> = config
            .problems()
            .iter()
            .filter_map(|p| match p {
                ConfigError::Invalid { field, .. } => Some(*field),
                _ => None,
            })
            .collect();
        assert_eq!(
            fields,
            vec![
                "vault.aws_kms.endpoint",
                "vault.aws_kms.region",
                "vault.aws_kms.timeout_ms"
            ]
        );
    }
}
