//! PostgreSQL's `COPY` text format, in which staging streams a sync's rows.

use std::fmt::Write as _;

/// Rows in PostgreSQL's `COPY … FROM STDIN` text format: tab-separated fields, `\N` for
/// NULL, backslash escapes for the characters that would break the framing.
#[derive(Default)]
pub(super) struct CopyText {
    pub(super) buffer: String,
    /// Whether the current row has a field yet, i.e. the next field needs a separator.
    row_has_fields: bool,
}

impl CopyText {
    fn separate(&mut self) {
        if self.row_has_fields {
            self.buffer.push('\t');
        }
        self.row_has_fields = true;
    }

    pub(super) fn text(&mut self, value: Option<&str>) {
        self.separate();
        let Some(value) = value else {
            self.buffer.push_str("\\N");
            return;
        };
        for character in value.chars() {
            match character {
                '\\' => self.buffer.push_str("\\\\"),
                '\t' => self.buffer.push_str("\\t"),
                '\n' => self.buffer.push_str("\\n"),
                '\r' => self.buffer.push_str("\\r"),
                other => self.buffer.push(other),
            }
        }
    }

    pub(super) fn int(&mut self, value: Option<i64>) {
        self.separate();
        match value {
            Some(value) => write!(self.buffer, "{value}").expect("writing to a String cannot fail"),
            None => self.buffer.push_str("\\N"),
        }
    }

    pub(super) fn float(&mut self, value: Option<f64>) {
        self.separate();
        match value {
            // Display of a finite f64 round-trips exactly and never uses an exponent.
            Some(value) => write!(self.buffer, "{value}").expect("writing to a String cannot fail"),
            None => self.buffer.push_str("\\N"),
        }
    }

    pub(super) fn boolean(&mut self, value: bool) {
        self.separate();
        self.buffer.push(if value { 't' } else { 'f' });
    }

    pub(super) fn end_row(&mut self) {
        self.buffer.push('\n');
        self.row_has_fields = false;
    }
}

#[cfg(test)]
mod tests {
    use super::CopyText;

    #[test]
    fn copy_text_escapes_framing_characters_and_marks_nulls() {
        let mut rows = CopyText::default();
        rows.int(Some(7));
        rows.text(Some("a\tb\\c\nd"));
        rows.text(None);
        rows.float(Some(12.5));
        rows.end_row();
        rows.text(Some(""));
        rows.int(None);
        rows.end_row();
        assert_eq!(rows.buffer, "7\ta\\tb\\\\c\\nd\t\\N\t12.5\n\t\\N\n");
    }
}
