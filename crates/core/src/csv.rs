//! A reader for the small, quote-free CSV tables colo ships (`data/*.csv`): `#` lines are
//! comments, the first other line names the columns.

use std::collections::BTreeMap;

/// A problem in one of the built-in or operator-given tables, with the line and column.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{table} line {line}, column {column:?}: {reason}")]
pub struct CsvError {
    pub table: &'static str,
    pub line: usize,
    pub column: String,
    pub reason: String,
}

/// One data row: its 1-based line number and its cells by column name.
pub(crate) struct Row<'a> {
    pub table: &'static str,
    pub line: usize,
    pub cells: BTreeMap<&'a str, &'a str>,
}

pub(crate) fn rows<'a>(table: &'static str, text: &'a str) -> Result<Vec<Row<'a>>, CsvError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    let Some((_, header)) = lines.next() else {
        return Err(CsvError {
            table,
            line: 0,
            column: String::new(),
            reason: "no header line".into(),
        });
    };
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    lines
        .map(|(idx, line)| {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if cells.len() != columns.len() {
                return Err(CsvError {
                    table,
                    line: idx + 1,
                    column: String::new(),
                    reason: format!("{} cells for {} columns", cells.len(), columns.len()),
                });
            }
            Ok(Row {
                table,
                line: idx + 1,
                cells: columns.iter().copied().zip(cells).collect(),
            })
        })
        .collect()
}

// === impl Row ===

impl Row<'_> {
    fn error(&self, column: &str, reason: String) -> CsvError {
        CsvError {
            table: self.table,
            line: self.line,
            column: column.to_string(),
            reason,
        }
    }

    /// A cell that must be present and non-empty.
    pub fn text(&self, column: &str) -> Result<&str, CsvError> {
        match self.cells.get(column) {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(self.error(column, "is empty".into())),
            None => Err(self.error(column, "no such column".into())),
        }
    }

    /// An optional number: empty means absent.
    pub fn opt_f64(&self, column: &str) -> Result<Option<f64>, CsvError> {
        match self.cells.get(column).copied() {
            None | Some("") => Ok(None),
            Some(v) => match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
                _ => Err(self.error(column, format!("{v:?} is not a number of at least zero"))),
            },
        }
    }

    /// A number that must be there and above zero.
    pub fn positive(&self, column: &str) -> Result<f64, CsvError> {
        match self.opt_f64(column)? {
            Some(x) if x > 0.0 => Ok(x),
            Some(x) => Err(self.error(column, format!("{x} must be above zero"))),
            None => Err(self.error(column, "is empty".into())),
        }
    }
}
