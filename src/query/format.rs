//! Writing answers: an aligned table for people, CSV/JSON for tools, Parquet for notebooks.

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use polars::prelude::*;
use serde_json::Value;

use super::QueryError;

/// How `roadwork query` prints.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Aligned columns; long arrays and binary cells abbreviated.
    Table,
    /// RFC 4180 CSV; arrays as JSON lists, binary as base64.
    Csv,
    /// A JSON array of row objects.
    Json,
    /// Parquet (needs `--out`); every type kept as is.
    Parquet,
}

/// How much of a cell to show.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Detail {
    Short,
    Full,
}

fn cell(av: &AnyValue, detail: Detail) -> String {
    match av {
        AnyValue::Null => "null".into(),
        AnyValue::String(s) => (*s).to_string(),
        AnyValue::StringOwned(s) => s.to_string(),
        AnyValue::Binary(b) => binary(b, detail),
        AnyValue::BinaryOwned(b) => binary(b, detail),
        AnyValue::List(s) | AnyValue::Array(s, _) => {
            let n = s.len();
            let shown = if detail == Detail::Short && n > 6 {
                4
            } else {
                n
            };
            let mut parts: Vec<String> = (0..shown)
                .map(|i| match s.get(i) {
                    Ok(v @ (AnyValue::String(_) | AnyValue::StringOwned(_))) => {
                        format!("{:?}", cell(&v, detail))
                    }
                    Ok(v) => cell(&v, detail),
                    Err(_) => "?".into(),
                })
                .collect();
            if shown < n {
                parts.push(format!("… ({n})"));
            }
            format!("[{}]", parts.join(", "))
        }
        other => other.to_string(),
    }
}

fn binary(b: &[u8], detail: Detail) -> String {
    match detail {
        Detail::Short => format!("<{} bytes>", b.len()),
        Detail::Full => base64::engine::general_purpose::STANDARD.encode(b),
    }
}

fn json(av: &AnyValue) -> Value {
    match av {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Bool(*b),
        AnyValue::UInt8(v) => (*v).into(),
        AnyValue::UInt16(v) => (*v).into(),
        AnyValue::UInt32(v) => (*v).into(),
        AnyValue::UInt64(v) => (*v).into(),
        AnyValue::Int8(v) => (*v).into(),
        AnyValue::Int16(v) => (*v).into(),
        AnyValue::Int32(v) => (*v).into(),
        AnyValue::Int64(v) => (*v).into(),
        AnyValue::Float32(v) => serde_json::Number::from_f64(f64::from(*v))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        AnyValue::Float64(v) => serde_json::Number::from_f64(*v)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        AnyValue::List(s) | AnyValue::Array(s, _) => Value::Array(
            (0..s.len())
                .map(|i| s.get(i).map(|v| json(&v)).unwrap_or(Value::Null))
                .collect(),
        ),
        other => Value::String(cell(other, Detail::Full)),
    }
}

fn is_numeric(dt: &DataType) -> bool {
    dt.is_primitive_numeric()
}

/// Renders up to `max_rows` rows as aligned text, with the row count (and how many were left out).
pub fn render_table(df: &DataFrame, max_rows: usize) -> String {
    let cols = df.columns();
    let shown = df.height().min(max_rows);
    let mut grid: Vec<Vec<String>> = vec![cols.iter().map(|c| c.name().to_string()).collect()];
    for i in 0..shown {
        grid.push(
            cols.iter()
                .map(|c| {
                    c.get(i)
                        .map(|v| cell(&v, Detail::Short))
                        .unwrap_or_default()
                })
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..cols.len())
        .map(|j| grid.iter().map(|r| r[j].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in grid.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(j, v)| {
                if i > 0 && is_numeric(cols[j].dtype()) {
                    format!("{v:>w$}", w = widths[j])
                } else {
                    format!("{v:<w$}", w = widths[j])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    if shown < df.height() {
        out.push_str(&format!(
            "… {} more rows (use --max-rows, --format csv or --out)\n",
            df.height() - shown
        ));
    }
    out.push_str(&format!(
        "({} row{})\n",
        df.height(),
        if df.height() == 1 { "" } else { "s" }
    ));
    out
}

fn write_csv(df: &DataFrame, w: &mut dyn Write) -> Result<(), csv::Error> {
    let mut c = csv::Writer::from_writer(w);
    let cols = df.columns();
    c.write_record(cols.iter().map(|c| c.name().as_str()))?;
    for i in 0..df.height() {
        let row: Vec<String> = cols
            .iter()
            .map(|col| match col.get(i) {
                Ok(AnyValue::Null) => String::new(),
                Ok(v @ (AnyValue::List(_) | AnyValue::Array(..))) => json(&v).to_string(),
                Ok(v) => cell(&v, Detail::Full),
                Err(_) => String::new(),
            })
            .collect();
        c.write_record(&row)?;
    }
    c.flush()?;
    Ok(())
}

fn to_json(df: &DataFrame) -> Value {
    let cols = df.columns();
    Value::Array(
        (0..df.height())
            .map(|i| {
                Value::Object(
                    cols.iter()
                        .map(|c| {
                            let v = c.get(i).map(|v| json(&v)).unwrap_or(Value::Null);
                            (c.name().to_string(), v)
                        })
                        .collect(),
                )
            })
            .collect(),
    )
}

/// Writes `df` in `format` to `out`, or to stdout when `out` is `None` (not for Parquet).
pub fn write_frame(
    df: &DataFrame,
    format: OutputFormat,
    out: Option<&Path>,
    max_rows: usize,
) -> Result<(), QueryError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| QueryError::Io { path, source }
    };
    let stdout = Path::new("-");
    let mut sink: Box<dyn Write> = match out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(io(p))?,
        )),
        None if format == OutputFormat::Parquet => return Err(QueryError::NeedsFile("parquet")),
        None => Box::new(std::io::stdout().lock()),
    };
    let target = out.unwrap_or(stdout);
    match format {
        OutputFormat::Table => sink
            .write_all(render_table(df, max_rows).as_bytes())
            .map_err(io(target))?,
        OutputFormat::Csv => write_csv(df, &mut sink).map_err(|e| QueryError::Io {
            path: target.into(),
            source: std::io::Error::other(e),
        })?,
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut sink, &to_json(df)).map_err(|e| QueryError::Io {
                path: target.into(),
                source: std::io::Error::other(e),
            })?;
            sink.write_all(b"\n").map_err(io(target))?;
        }
        OutputFormat::Parquet => {
            let mut df = df.clone();
            ParquetWriter::new(&mut sink).finish(&mut df)?;
        }
    }
    sink.flush().map_err(io(target))
}
