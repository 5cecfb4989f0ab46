//! Replays the `token_verifier` fuzz corpus through the fuzz target's checks,
//! so that stable-Rust test runs cover every corpus file.

#[path = "../../fuzz/src/token_checks.rs"]
mod token_checks;

use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/token_verifier")
}

#[test]
fn every_corpus_file_passes_token_checks() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("the token corpus folder exists")
        .map(|entry| entry.expect("readable corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the token corpus is empty");
    for path in files {
        println!("replaying {}", path.display());
        token_checks::check_token_input(&std::fs::read(&path).expect("readable corpus file"));
    }
}

#[test]
fn seeds_reach_the_accept_path() {
    // Each seed is a valid token in this process, so the checks on accepted
    // tokens run; a corpus replayed in another process meets other keys.
    for (i, seed) in token_checks::seeds().iter().enumerate() {
        assert!(
            token_checks::check_token_input(seed),
            "seed {i} was rejected"
        );
    }
}

#[test]
fn invalid_claims_rejected() {
    let mut expired = vec![1u8];
    expired.extend(br#"{"iss":"fuzz-issuer","aud":"fuzz-audience","sub":"s","acct":"a","scope":"","exp":1,"iat":0,"nbf":0,"jti":"j"}"#);
    assert!(!token_checks::check_token_input(&expired));
    let mut wrong_alg = vec![2u8];
    wrong_alg.extend(br#"{"alg":"HS256"}"#);
    assert!(!token_checks::check_token_input(&wrong_alg));
}

/// Writes the seed inputs into the corpus folder when `KEYGATE_WRITE_FUZZ_SEEDS` is set.
#[test]
fn write_seeds_when_asked() {
    if std::env::var_os("KEYGATE_WRITE_FUZZ_SEEDS").is_none() {
        return;
    }
    std::fs::create_dir_all(corpus_dir()).unwrap();
    for (i, seed) in token_checks::seeds().iter().enumerate() {
        std::fs::write(corpus_dir().join(format!("seed-mode-{i}")), seed).unwrap();
    }
}
