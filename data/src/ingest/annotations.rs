//! Annotation files, CSV (header `video,question,answer` and optionally
//! `split`) or JSONL (one object with those keys per line), read row by row
//! so that one bad row is one bad row: invalid UTF-8, invalid JSON, a missing,
//! null or non-string key, a wrong number of CSV fields or an unterminated
//! quote each spoil their own line, and the rows around them still read. A
//! UTF-8 byte-order mark at the start is skipped. Only a file that cannot be
//! read at all, or a CSV header without the three columns, fails the file.

use crate::error::{DataError, Result};
use serde_json::Value;
use std::path::Path;

/// One annotated question; `line` is its (first) line in the file, from 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotation {
    pub line: usize,
    pub video: String,
    pub question: String,
    pub answer: String,
    pub split: Option<String>,
}

/// An annotation, or the error of its bad line (a [`DataError::BadValue`]).
pub type AnnotationRow = std::result::Result<Annotation, DataError>;

/// Reads every row of the annotation file at `path` (see the module docs).
pub fn read_annotations(path: &Path) -> Result<Vec<AnnotationRow>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_annotations(&bytes, path)
}

/// [`read_annotations`] of a file's bytes: `path` tells the format (`.jsonl`
/// or `.json`: JSON lines; else CSV) and names the file in errors.
pub fn parse_annotations(bytes: &[u8], path: &Path) -> Result<Vec<AnnotationRow>> {
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).collect();
    if path.extension().is_some_and(|e| e == "jsonl" || e == "json") {
        Ok(json_lines(path, &lines))
    } else {
        csv_rows(path, &lines)
    }
}

fn bad(path: &Path, line: usize, column: &str, detail: String) -> DataError {
    DataError::BadValue { path: path.into(), row: line, column: column.into(), detail }
}

fn utf8<'a>(path: &Path, line: usize, raw: &'a [u8]) -> std::result::Result<&'a str, DataError> {
    std::str::from_utf8(raw)
        .map_err(|e| bad(path, line, "-", format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1)))
}

fn is_blank(raw: &[u8]) -> bool {
    raw.iter().all(u8::is_ascii_whitespace)
}

fn json_lines(path: &Path, lines: &[&[u8]]) -> Vec<AnnotationRow> {
    let row = |line: usize, raw: &[u8]| -> AnnotationRow {
        let text = utf8(path, line, raw)?;
        let v: Value = serde_json::from_str(text).map_err(|e| bad(path, line, "-", format!("not JSON: {e}")))?;
        let Value::Object(fields) = v else {
            return Err(bad(path, line, "-", "not a JSON object".into()));
        };
        let text_of = |key: &str, required: bool| match fields.get(key) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            None | Some(Value::Null) if !required => Ok(None),
            None => Err(bad(path, line, key, "missing".into())),
            Some(Value::Null) => Err(bad(path, line, key, "is null".into())),
            Some(other) => Err(bad(path, line, key, format!("must be a string, got {other}"))),
        };
        let need = |key: &str| text_of(key, true).map(Option::unwrap_or_default);
        Ok(Annotation {
            line,
            video: need("video")?,
            question: need("question")?,
            answer: need("answer")?,
            split: text_of("split", false)?,
        })
    };
    (0..lines.len()).filter(|&i| !is_blank(lines[i])).map(|i| row(i + 1, lines[i])).collect()
}

/// Fields of the one CSV record held in `text`.
fn csv_fields(text: &str) -> std::result::Result<Vec<String>, String> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut records = reader.records();
    let first = match records.next() {
        Some(Ok(r)) => r.iter().map(str::to_string).collect(),
        Some(Err(e)) => return Err(e.to_string()),
        None => vec![],
    };
    match records.next() {
        None => Ok(first),
        Some(_) => Err("holds more than one record (a stray quote?)".into()),
    }
}

/// Whether a quoted field is open after `line`, given whether one was open
/// before it, read as the csv crate reads: a quote opens a field only at the
/// field's start, and `""` inside a quoted field is a quote.
fn quote_open_after(line: &str, mut open: bool) -> bool {
    let mut field_start = !open;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if open {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                } else {
                    open = false;
                }
            }
        } else if c == '"' && field_start {
            open = true;
            field_start = false;
        } else {
            field_start = c == ',';
        }
    }
    open
}

fn csv_rows(path: &Path, lines: &[&[u8]]) -> Result<Vec<AnnotationRow>> {
    let header = std::str::from_utf8(lines[0])
        .map_err(|_| DataError::Schema { path: path.into(), column: "-".into(), detail: "header is not UTF-8".into() })
        .and_then(|h| {
            csv_fields(h).map_err(|e| DataError::Schema { path: path.into(), column: "-".into(), detail: e })
        })?;
    let pos = |k: &str| header.iter().position(|h| h.trim() == k);
    let (Some(v), Some(q), Some(a)) = (pos("video"), pos("question"), pos("answer")) else {
        return Err(DataError::Schema {
            path: path.into(),
            column: "video/question/answer".into(),
            detail: format!("the header must name them, got {header:?}"),
        });
    };
    let s = pos("split");
    let mut out = vec![];
    let mut start = 1;
    while start < lines.len() {
        if is_blank(lines[start]) {
            start += 1;
            continue;
        }
        let line = start + 1;
        let (fields, next) = match csv_record(path, lines, start) {
            Ok(r) => r,
            Err(e) => {
                // A record that cannot be read spoils its first line only: reading goes on at the next.
                out.push(Err(e));
                start += 1;
                continue;
            }
        };
        start = next;
        if fields.len() != header.len() {
            out.push(Err(bad(
                path,
                line,
                "-",
                format!("{} fields, the header has {} (an unquoted comma?)", fields.len(), header.len()),
            )));
            continue;
        }
        out.push(Ok(Annotation {
            line,
            video: fields[v].clone(),
            question: fields[q].clone(),
            answer: fields[a].clone(),
            split: s.map(|s| fields[s].clone()),
        }));
    }
    Ok(out)
}

/// The record starting at `lines[start]` (it goes on over line breaks while a
/// quote is open) and the index of the line after it.
fn csv_record(path: &Path, lines: &[&[u8]], start: usize) -> std::result::Result<(Vec<String>, usize), DataError> {
    let mut text = String::new();
    let mut end = start;
    let mut open = false;
    loop {
        match utf8(path, end + 1, lines[end]) {
            Ok(t) => {
                open = quote_open_after(t, open);
                text.push_str(t);
            }
            Err(e) if end == start => return Err(e),
            // The line is reported on its own when reading reaches it.
            Err(_) => return Err(bad(path, start + 1, "-", format!("unterminated quote (up to line {})", end + 1))),
        }
        end += 1;
        if !open {
            break;
        }
        if end == lines.len() {
            return Err(bad(path, start + 1, "-", "unterminated quote".into()));
        }
        text.push('\n');
    }
    let fields = csv_fields(&text).map_err(|e| bad(path, start + 1, "-", e))?;
    Ok((fields, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str, content: &[u8]) -> Vec<std::result::Result<Annotation, String>> {
        let dir = std::env::temp_dir().join(format!("kallista-ann-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        let rows = read_annotations(&p).unwrap().into_iter().map(|r| r.map_err(|e| e.to_string())).collect();
        std::fs::remove_dir_all(&dir).ok();
        rows
    }

    #[test]
    fn a_quoted_line_break_is_one_record_and_an_unterminated_quote_spoils_one_line() {
        let rows = read("a.csv", b"video,question,answer\nv1,\"two\nlines\",x\nv2,\"open,y\nv3,q,z\n");
        assert_eq!(rows[0].as_ref().unwrap().question, "two\nlines");
        assert!(
            rows[1].as_ref().unwrap_err().contains("row 4") && rows[1].as_ref().unwrap_err().contains("unterminated")
        );
        assert_eq!(rows[2].as_ref().unwrap().video, "v3");
        assert_eq!(rows[2].as_ref().unwrap().line, 5);
    }

    #[test]
    fn a_quote_inside_a_field_is_text_and_a_bad_multi_line_record_is_skipped_whole() {
        let rows = read("c.csv", b"video,question,answer\nv1,5\" tv,x\nv2,7\" tv,y\nv3,\"a\nb\",x,EXTRA\nv4,q,z\n");
        assert_eq!(rows[0].as_ref().unwrap().question, "5\" tv");
        assert_eq!(rows[1].as_ref().unwrap().video, "v2");
        assert!(rows[2].as_ref().unwrap_err().contains("row 4") && rows[2].as_ref().unwrap_err().contains("4 fields"));
        assert_eq!(rows[3].as_ref().unwrap().line, 6);
        assert_eq!(rows.len(), 4);
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let rows = read("b.jsonl", b"\xEF\xBB\xBF{\"video\":\"v\",\"question\":\"q\",\"answer\":\"a\"}\n");
        assert_eq!(rows[0].as_ref().unwrap().video, "v");
        let rows = read("b.csv", b"\xEF\xBB\xBFvideo,question,answer\nv,q,a\n");
        assert_eq!(rows[0].as_ref().unwrap().answer, "a");
    }
}
