//! `keygate token issue` and `keygate certs agent`.

use std::path::PathBuf;

use clap::Args;
use keygate_auth::{Scope, ScopeSet, SigningKey, TokenIssuer, TokenRequest};

use super::{ConfigSource, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::pki::DevCa;

#[derive(Args)]
pub struct TokenIssueArgs {
    #[command(flatten)]
    source: ConfigSource,
    /// Subject of the token (`sub`): the caller's name, e.g. `scheduler` or `runner-42`.
    #[arg(long)]
    subject: String,
    /// Account the token acts for.
    #[arg(long)]
    account: String,
    /// Scopes, comma-separated or repeated: agents:admin, tasks:write, secrets:admin, secrets:read, keys:admin.
    #[arg(long = "scope", required = true, value_delimiter = ',')]
    scopes: Vec<String>,
    /// Restrict the token to these projects (repeatable); without it, every project of the account.
    #[arg(long = "project")]
    projects: Vec<String>,
    /// Lifetime in seconds; at most the server's `auth.max_token_lifetime_secs`.
    #[arg(long, default_value_t = 3600)]
    lifetime_secs: u64,
}

pub async fn token_issue(args: TokenIssueArgs) -> i32 {
    let config = match args.source.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let scopes =
        match ScopeSet::parse_strict(args.scopes.iter().map(String::as_str), &Scope::PLATFORM) {
            Ok(scopes) => scopes,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_USAGE;
            }
        };
    let max = config.auth.max_token_lifetime_secs;
    if args.lifetime_secs == 0 || args.lifetime_secs > max {
        eprintln!(
            "error: --lifetime-secs {} must be between 1 and {max} (auth.max_token_lifetime_secs)",
            args.lifetime_secs
        );
        return EXIT_USAGE;
    }
    if let Err(e) = keygate_vault::validate_account_id(&args.account) {
        eprintln!("error: --account: {e}");
        return EXIT_USAGE;
    }
    for project in &args.projects {
        if let Err(e) = keygate_vault::validate_project_id(project) {
            eprintln!("error: --project: {e}");
            return EXIT_USAGE;
        }
    }
    let key = match active_signing_key(&config).await {
        Ok(key) => key,
        Err(e) => {
            eprintln!(
                "error: {e}\nPass the server's --config, or the --data-dir of a data folder a keygate server has started on once."
            );
            return EXIT_FAILURE;
        }
    };
    let issuer = TokenIssuer::new(
        key,
        config.auth.issuer.clone(),
        config.auth.audience.clone(),
    );
    let request = TokenRequest {
        subject: args.subject,
        account: args.account,
        scopes,
        projects: (!args.projects.is_empty()).then_some(args.projects),
        lifetime_secs: args.lifetime_secs,
        certificate_thumbprint: None,
    };
    match issuer.issue(&request) {
        Ok((token, _)) => {
            println!("{token}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

/// Reads the signing key that is active now from the server's vault, opened
/// read-only so this works while the server runs. The master key comes from
/// the configured source, as for the server.
async fn active_signing_key(
    config: &crate::config::Config,
) -> Result<std::sync::Arc<SigningKey>, String> {
    let db = config.db_dir();
    if !db.exists() {
        return Err(format!(
            "no store in {}; start the server once so it creates its signing keys",
            db.display()
        ));
    }
    let source =
        crate::master_key::MasterKeySource::from_config(config).map_err(|e| e.to_string())?;
    let master = source
        .fetch()
        .await
        .map_err(|e| format!("cannot get the master key from {}: {e}", source.describe()))?;
    let store = keygate_vault::RocksStore::open_read_only(&db).map_err(|e| e.to_string())?;
    let vault = keygate_vault::Vault::new(std::sync::Arc::new(store), master);
    // Also takes the master-key version, which a rotation advances, from the store.
    vault.verify_master_key().map_err(|e| e.to_string())?;
    let ring = crate::signing::load_ring(&vault)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "the store in {} holds no signing keys yet; start the server once",
                db.display()
            )
        })?;
    Ok(ring.active(keygate_auth::unix_now()).key.clone())
}

#[derive(Args)]
pub struct CertAgentArgs {
    /// Data folder holding the development CA (`tls/ca.pem`, `tls/ca-key.pem`).
    #[arg(long, env = "KEYGATE_DATA_DIR", default_value = "./keygate-data")]
    data_dir: PathBuf,
    /// The agent id (client id) the certificate is for; it becomes the certificate's common name.
    #[arg(long)]
    agent_id: String,
    /// Folder for `ca.pem`, `client.pem` and `client-key.pem`; default `DATA_DIR/agents/AGENT_ID`.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

pub fn cert_agent(args: CertAgentArgs) -> i32 {
    let valid_id = (1..=64).contains(&args.agent_id.len())
        && args
            .agent_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid_id {
        eprintln!(
            "error: --agent-id {:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-' (the id returned by POST /v1/agents)",
            args.agent_id
        );
        return EXIT_USAGE;
    }
    let tls_dir = args.data_dir.join("tls");
    if !tls_dir.join("ca.pem").exists() {
        eprintln!(
            "error: no development CA in {}; run `keygate init --data-dir {}` first",
            tls_dir.display(),
            args.data_dir.display()
        );
        return EXIT_FAILURE;
    }
    let out_dir = args
        .out_dir
        .unwrap_or_else(|| args.data_dir.join("agents").join(&args.agent_id));
    let result = (|| -> Result<(), String> {
        let (ca, _) = DevCa::load_or_create(&tls_dir).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&out_dir)
            .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
        let issued = ca
            .issue_client_cert(&args.agent_id)
            .map_err(|e| e.to_string())?;
        issued
            .write(&out_dir.join("client.pem"), &out_dir.join("client-key.pem"))
            .map_err(|e| e.to_string())?;
        crate::pki::write_file(&out_dir.join("ca.pem"), ca.cert_pem().as_bytes(), 0o644)
            .map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => {
            println!(
                "wrote {0}/ca.pem, {0}/client.pem and {0}/client-key.pem",
                out_dir.display()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}
