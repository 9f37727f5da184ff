//! Reading a Parquet file of images, shared by the NATIX and the roadwork-export readers: the file
//! is read batch by batch on the blocking pool, each batch becomes rows, and every row's image is
//! decoded in parallel; the async side receives the decoded chunks through a bounded channel, so
//! memory holds at most a few batches of images whatever the file's size.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rayon::prelude::*;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{ImageFacts, IngestError, image_facts};
use crate::imaging::DecodeLimits;

/// A row with its image decoded (or why it could not be).
pub(crate) type Decoded<R> = (R, Result<ImageFacts, String>);

/// The chunks of decoded rows, in file order; an error ends the stream.
pub(crate) type Chunks<R> = mpsc::Receiver<Result<Vec<Decoded<R>>, IngestError>>;

/// Opens a Parquet file for reading, naming the file in the error.
pub(crate) fn open(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, IngestError> {
    let file = File::open(path).map_err(|source| IngestError::Io {
        path: path.into(),
        source,
    })?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| IngestError::Parquet {
        path: path.into(),
        detail: e.to_string(),
    })
}

/// Starts reading `path`: `rows_of(batch, first_row)` turns a batch into rows, `bytes_of` finds a
/// row's image bytes (or why there are none). The channel ends after the last batch or the first
/// error; the handle ends with the reader.
pub(crate) fn read<R, F>(
    path: PathBuf,
    batch_rows: usize,
    limits: DecodeLimits,
    rows_of: F,
    bytes_of: fn(&R) -> Result<&[u8], String>,
) -> (Chunks<R>, JoinHandle<()>)
where
    R: Send + 'static,
    F: Fn(&RecordBatch, usize) -> Vec<R> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(2);
    let task = tokio::task::spawn_blocking(move || {
        let parquet_err = |e: &dyn std::fmt::Display| IngestError::Parquet {
            path: path.clone(),
            detail: e.to_string(),
        };
        let reader = match open(&path).and_then(|b| {
            b.with_batch_size(batch_rows)
                .build()
                .map_err(|e| parquet_err(&e))
        }) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut row = 0;
        for batch in reader {
            let msg = batch.map_err(|e| parquet_err(&e)).map(|b| {
                let rows = rows_of(&b, row);
                row += b.num_rows();
                rows.into_par_iter()
                    .map(|r| {
                        let facts = bytes_of(&r).and_then(|bytes| {
                            image_facts(bytes, &limits).map_err(|e| e.to_string())
                        });
                        (r, facts)
                    })
                    .collect::<Vec<_>>()
            });
            let stop = msg.is_err();
            if tx.blocking_send(msg).is_err() || stop {
                return;
            }
        }
    });
    (rx, task)
}
