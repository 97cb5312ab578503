//! Aligned plain-text tables for the CLI's list commands.

use std::fmt::Write as _;

/// Renders `rows` under `headers`, columns padded to their widest cell and separated by two
/// spaces; the last column is not padded (no trailing blanks). Empty cells show as `-`.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, value) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell(value).chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, value) in cells.into_iter().enumerate() {
            if i == last {
                text.push_str(&value);
            } else {
                let _ = write!(text, "{value:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.iter().map(|v| cell(v)).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align() {
        let table = super::render(
            &["HOST", "PORT"],
            &[
                vec!["app.example.com".into(), "8001".into()],
                vec!["a.io".into(), String::new()],
            ],
        );
        assert_eq!(
            table,
            "HOST             PORT\napp.example.com  8001\na.io             -\n"
        );
    }
}
