//! Replays the `frame_decoder` fuzz corpus through the fuzz target's checks,
//! so that stable-Rust test runs cover every corpus file.

#[path = "../../fuzz/src/lib.rs"]
mod fuzz_checks;

use std::path::PathBuf;

use fuzz_checks::{check_frame_decoder_input, StreamEnd};

fn corpus_files() -> Vec<PathBuf> {
    let corpus_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/frame_decoder");
    let entries = std::fs::read_dir(&corpus_dir)
        .unwrap_or_else(|error| panic!("cannot read corpus {}: {error}", corpus_dir.display()));

    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_passes_fuzz_checks() {
    let files = corpus_files();
    assert!(!files.is_empty(), "the fuzz corpus is empty");

    for path in files {
        let data = std::fs::read(&path).expect("readable corpus file");
        // The checks panic on a violated property. Name the file first.
        println!("replaying {}", path.display());
        check_frame_decoder_input(&data);
    }
}

#[test]
fn seed_files_are_complete_streams() {
    let seeds: Vec<PathBuf> = corpus_files()
        .into_iter()
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("seed-"))
        })
        .collect();
    assert!(!seeds.is_empty(), "the fuzz corpus has no seed- files");

    for path in seeds {
        let data = std::fs::read(&path).expect("readable seed file");

        let summary = check_frame_decoder_input(&data);

        assert_eq!(summary.end, StreamEnd::Complete, "{}", path.display());
        assert!(
            !summary.frames.is_empty(),
            "{} has no frame",
            path.display()
        );
    }
}

#[test]
fn fuzz_checks_catch_a_decoder_error() {
    // A stream whose second frame has an unknown type must end in that
    // error, and checks must still pass.
    let mut data = vec![6, 0, 0, 0, 9, 5, 0, 0, 0, 0, 0, 0, 0, 1];
    data.extend([0, 0, 0, 1, 42]);

    let summary = check_frame_decoder_input(&data);

    assert_eq!(summary.frames.len(), 1);
    assert_eq!(
        summary.end,
        StreamEnd::Failed(keygate_protocol::FrameError::UnknownFrameType { frame_type: 42 })
    );
}
