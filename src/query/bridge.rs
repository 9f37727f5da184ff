//! Arrow (arrow-rs, what Lance speaks) → polars, through the Arrow IPC file format: a safe copy, no
//! FFI, and every type the store uses survives it (timestamps with time zone, lists, large binary,
//! fixed-size embedding arrays → polars `Array`).

use std::io::Cursor;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef as ArrowSchemaRef;
use polars::prelude::*;

/// Converts batches (all of `schema`) into one DataFrame; no batches gives an empty frame with the
/// right columns.
pub fn batches_to_frame(
    schema: &ArrowSchemaRef,
    batches: &[RecordBatch],
) -> PolarsResult<DataFrame> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::ipc::writer::FileWriter::try_new(&mut buf, schema)
            .map_err(|e| polars_err!(ComputeError: "arrow ipc: {e}"))?;
        for b in batches {
            w.write(b)
                .map_err(|e| polars_err!(ComputeError: "arrow ipc: {e}"))?;
        }
        w.finish()
            .map_err(|e| polars_err!(ComputeError: "arrow ipc: {e}"))?;
    }
    IpcReader::new(Cursor::new(buf)).finish()
}

/// The polars schema a table of this Arrow schema arrives as.
pub fn polars_schema(schema: &ArrowSchemaRef) -> PolarsResult<SchemaRef> {
    Ok(batches_to_frame(schema, &[])?.schema().clone())
}
