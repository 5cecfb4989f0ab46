//! Output of the API subcommands: aligned text tables for people, the server's JSON for scripts.

use std::io::{IsTerminal, Write};

use serde_json::Value;

/// Output format of the API subcommands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned text columns.
    Table,
    /// The server's JSON response, pretty-printed.
    Json,
}

/// A text table whose columns are padded to their widest cell.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells print empty and extra cells are dropped.
    pub fn push(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders the header line and the rows, two spaces between columns,
    /// without trailing spaces. Widths count characters, not display columns.
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (column, width) in widths.iter().enumerate() {
                let cell = row.get(column).map(String::as_str).unwrap_or("");
                if column + 1 < columns {
                    let padding = width - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(padding + 2));
                } else {
                    line.push_str(cell);
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// Prints `value` as pretty JSON.
pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// Writes a secret value to standard output unchanged, so that a pipe receives
/// it byte for byte; on a terminal a line break follows it.
pub fn write_value(value: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(value.as_bytes())?;
    if stdout.is_terminal() && !value.ends_with('\n') {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()
}

/// Prints the fields of one object as a two-column `FIELD  VALUE` table, in the order given.
pub fn print_fields(fields: &[(&str, String)]) {
    let mut table = Table::new(&["FIELD", "VALUE"]);
    for (name, value) in fields {
        table.push(vec![name.to_string(), value.clone()]);
    }
    print!("{}", table.render());
}

/// Returns a JSON value as table text: strings without quotes, `-` for null or
/// missing, and other values as compact JSON.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Returns a string array as `a,b,c`, or `-` when it is null or missing.
pub fn list_cell(value: &Value) -> String {
    match value.as_array() {
        Some(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        None => "-".to_owned(),
    }
}

/// Formats milliseconds since the Unix epoch as UTC time to the second, such
/// as `2025-03-01 14:05:09Z`, or `-` when the value is missing.
pub fn time_cell(value: &Value) -> String {
    let Some(ms) = value.as_u64() else {
        return "-".to_owned();
    };
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64) else {
        return ms.to_string();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_pads_columns_to_widest_cell() {
        let mut table = Table::new(&["NAME", "VERSION"]);
        table.push(vec!["a-long-name".into(), "3".into()]);
        table.push(vec!["b".into(), "12".into()]);
        assert_eq!(
            table.render(),
            "NAME         VERSION\na-long-name  3\nb            12\n"
        );
    }

    #[test]
    fn table_fills_missing_cells() {
        let mut table = Table::new(&["A", "B", "C"]);
        table.push(vec!["x".into()]);
        assert_eq!(table.render(), "A  B  C\nx\n");
    }

    #[test]
    fn cells_from_json() {
        assert_eq!(cell(&json!("text")), "text");
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!({"a": 1})), r#"{"a":1}"#);
        assert_eq!(list_cell(&json!(["etl", "bi"])), "etl,bi");
        assert_eq!(list_cell(&json!(null)), "-");
    }

    #[test]
    fn time_is_utc_to_the_second() {
        assert_eq!(
            time_cell(&json!(1_796_400_005_123u64)),
            "2026-12-04 16:00:05Z"
        );
        assert_eq!(time_cell(&json!(null)), "-");
    }
}
