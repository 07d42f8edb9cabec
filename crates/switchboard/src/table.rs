//! Aligned plain-text tables for people; `-o json` is for programs.

/// Prints `rows` under `header`, each column as wide as its widest cell.
pub fn print(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", render(header, rows));
}

pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push('\n');
    }
    out
}

/// A value for one table cell: control characters escaped so a row stays one line, and a
/// binary value (sent as base64) marked as such.
pub fn cell_value(value: &str, encoding: &str) -> String {
    if encoding == "base64" {
        return format!("base64:{value}");
    }
    value
        .chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_rows_stay_on_one_line() {
        let rows = vec![
            vec!["app/greeting".to_owned(), cell_value("hello\nworld", "utf8")],
            vec!["b".to_owned(), cell_value("AP8=", "base64")],
        ];
        assert_eq!(
            render(&["KEY", "VALUE"], &rows),
            "KEY           VALUE\napp/greeting  hello\\nworld\nb             base64:AP8=\n"
        );
    }
}
