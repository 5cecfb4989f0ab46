//! Progress display of long CLI operations: a bar redrawn in place on a
//! terminal, plain lines when standard output is a file or a pipe.

use std::io::{IsTerminal, Write};

use keygate_vault::backup::Progress;

/// Width of the bar between its brackets, in characters.
const BAR_WIDTH: usize = 30;
/// Without a terminal, a files line is printed each time this many more
/// percent of the files are done.
const LINE_STEP_PERCENT: usize = 10;

/// Returns `[#####-----]  NN%` for `done` of `total`; an empty total is complete.
pub fn bar(done: u64, total: u64) -> String {
    let share = if total == 0 {
        1.0
    } else {
        (done.min(total)) as f64 / total as f64
    };
    let filled = ((share * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        "-".repeat(BAR_WIDTH - filled),
        share * 100.0
    )
}

/// Shows the steps and file counts of a backup, verification or restore.
pub struct FileProgress {
    terminal: bool,
    /// Whether a bar is drawn on the current terminal line.
    bar_open: bool,
    /// Percent of files done at the last printed line, without a terminal.
    last_percent: Option<usize>,
}

impl FileProgress {
    pub fn new() -> FileProgress {
        FileProgress {
            terminal: std::io::stdout().is_terminal(),
            bar_open: false,
            last_percent: None,
        }
    }

    pub fn show(&mut self, progress: Progress<'_>) {
        let mut stdout = std::io::stdout().lock();
        match progress {
            Progress::Step(step) => {
                self.end_bar(&mut stdout);
                self.last_percent = None;
                let _ = writeln!(stdout, "{step}");
            }
            Progress::Files {
                done,
                total,
                bytes_done,
                bytes_total,
            } => {
                let text = files_text(done, total, bytes_done, bytes_total);
                if self.terminal {
                    let _ = write!(stdout, "\r{} {text}\x1b[K", bar(done as u64, total as u64));
                    self.bar_open = true;
                    let _ = stdout.flush();
                    return;
                }
                let percent = (done * 100).checked_div(total).unwrap_or(100);
                let step = percent / LINE_STEP_PERCENT;
                if done == total || self.last_percent.is_none_or(|last| step > last) {
                    self.last_percent = Some(step);
                    let _ = writeln!(stdout, "{text}");
                }
            }
        }
    }

    /// Ends the bar line, if one is drawn.
    pub fn finish(&mut self) {
        let mut stdout = std::io::stdout().lock();
        self.end_bar(&mut stdout);
    }

    fn end_bar(&mut self, stdout: &mut impl Write) {
        if self.bar_open {
            let _ = writeln!(stdout);
            let _ = stdout.flush();
            self.bar_open = false;
        }
    }
}

fn files_text(done: usize, total: usize, bytes_done: u64, bytes_total: Option<u64>) -> String {
    match bytes_total {
        Some(bytes_total) => format!(
            "{done} of {total} files, {} of {}",
            human_bytes(bytes_done),
            human_bytes(bytes_total)
        ),
        None => format!("{done} of {total} files, {}", human_bytes(bytes_done)),
    }
}

/// Formats a byte count with a binary unit: `512 B`, `4.0 KiB`, `1.5 MiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_fills_with_the_share() {
        assert_eq!(bar(0, 10), format!("[{}]   0%", "-".repeat(30)));
        assert_eq!(
            bar(5, 10),
            format!("[{}{}]  50%", "#".repeat(15), "-".repeat(15))
        );
        assert_eq!(bar(10, 10), format!("[{}] 100%", "#".repeat(30)));
        assert_eq!(bar(0, 0), format!("[{}] 100%", "#".repeat(30)));
        assert_eq!(bar(12, 10), bar(10, 10), "done above total is capped");
    }

    #[test]
    fn byte_counts_read_as_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536 * 1024), "1.5 MiB");
        assert_eq!(
            files_text(3, 12, 2048, Some(4096)),
            "3 of 12 files, 2.0 KiB of 4.0 KiB"
        );
        assert_eq!(files_text(1, 2, 10, None), "1 of 2 files, 10 B");
    }
}
