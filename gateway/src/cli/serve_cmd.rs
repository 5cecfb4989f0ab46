//! `keygate dev`, `keygate init` and `keygate serve`.

use std::path::Path;

use super::{DevArgs, InitArgs, ListenArgs, ServeArgs, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::config::Config;
use crate::devinit;
use crate::server::{shutdown_signal, Server};

pub async fn dev(args: DevArgs) -> i32 {
    let mut config = Config {
        data_dir: args.data_dir,
        ..Config::default()
    };
    // A development server reaches secret managers only on this machine, such
    // as local emulators; the public endpoints stay out of reach.
    config.external.loopback_only = true;
    if let Err(e) = apply_listen(&mut config, &args.listen) {
        eprintln!("error: {e}");
        return EXIT_USAGE;
    }
    if let Err(e) = devinit::ensure_material(&config) {
        eprintln!("error: cannot prepare the data folder: {e}");
        return EXIT_FAILURE;
    }
    let lifetime_h = config.auth.max_token_lifetime_secs / 3600;
    run(config, |server, config| {
        // The signing keys live in the vault, so the token is minted by the running server.
        match devinit::write_dev_admin_token(config, &server.state().signing) {
            Ok(token_path) => {
                print_welcome(server, &config.data_dir, &token_path, lifetime_h);
                true
            }
            Err(e) => {
                eprintln!("error: cannot write the development admin token: {e}");
                false
            }
        }
    })
    .await
}

pub fn init(args: InitArgs) -> i32 {
    let config = Config {
        data_dir: args.data_dir,
        ..Config::default()
    };
    match devinit::ensure_material(&config) {
        Ok(created) => {
            for path in &created {
                println!("created {}", path.display());
            }
            if created.is_empty() {
                println!(
                    "{} already has every file; nothing changed",
                    config.data_dir.display()
                );
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

pub async fn serve(args: ServeArgs) -> i32 {
    let mut config = match Config::load_with_env(&args.config, std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    if let Err(e) = apply_listen(&mut config, &args.listen) {
        eprintln!("error: {e}");
        return EXIT_USAGE;
    }
    run(config, |_, _| true).await
}

fn apply_listen(config: &mut Config, listen: &ListenArgs) -> Result<(), String> {
    if let Some(addr) = listen.agent_addr {
        config.listen.agent = addr;
    }
    if let Some(addr) = listen.api_addr {
        config.listen.api = addr;
    }
    if let Some(addr) = listen.ops_addr {
        config.listen.ops = addr;
    }
    config.validate().map_err(|e| e.to_string())
}

/// Starts the server, runs `on_start` (which may veto the start), and serves until SIGTERM or SIGINT.
async fn run(config: Config, on_start: impl FnOnce(&Server, &Config) -> bool) -> i32 {
    let shown = config.clone();
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = %e, "keygate failed to start");
            return EXIT_FAILURE;
        }
    };
    if !on_start(&server, &shown) {
        server.shutdown().await;
        return EXIT_FAILURE;
    }
    shutdown_signal().await;
    server.shutdown().await;
    EXIT_OK
}

fn print_welcome(server: &Server, data_dir: &Path, token_path: &Path, lifetime_h: u64) {
    let ca = data_dir.join("tls/ca.pem");
    println!(
        "\nkeygate dev is running; its data is in {data}\n\n\
         \x20 agent listener  https://{agent}  (mutual TLS, HTTP/2; client certificates from `keygate certs agent`)\n\
         \x20 API listener    https://{api}\n\
         \x20 ops listener    http://{ops}  (/metrics, /healthz, /readyz, /log-filter)\n\n\
         A development admin token for account \"{account}\" (valid {lifetime_h} h) is in {token}.\n\
         Try:\n\
         \x20 export KEYGATE_TOKEN=\"$(cat {token})\"\n\
         \x20 curl --cacert {ca} -H \"Authorization: Bearer $KEYGATE_TOKEN\" https://{api}/v1/agents\n\n\
         The README walks through creating an agent, running it, submitting a task and fetching a secret.\n\
         Stop with Ctrl-C.\n",
        data = data_dir.display(),
        agent = server.agent_addr,
        api = server.api_addr,
        ops = server.ops_addr,
        account = devinit::DEV_ACCOUNT,
        token = token_path.display(),
        ca = ca.display(),
    );
}
