//! A polars scan over one Lance table, with projection and row-limit pushdown: a query that does not
//! name the `image` column never reads image bytes.

use std::any::Any;
use std::sync::Arc;

use arrow_schema::SchemaRef as ArrowSchemaRef;
use polars::prelude::*;

use super::bridge::batches_to_frame;
use crate::store::Store;

/// Where a scan's rows come from.
pub(crate) enum Source {
    /// A Lance table read as it is now.
    Table(String),
    /// The labels table reduced by the precedence rule.
    EffectiveLabels,
}

pub(crate) struct LanceScan {
    pub store: Store,
    pub source: Source,
    pub arrow_schema: ArrowSchemaRef,
    pub schema: SchemaRef,
    pub runtime: tokio::runtime::Handle,
}

impl LanceScan {
    fn projected(&self, cols: Option<&[PlSmallStr]>) -> PolarsResult<ArrowSchemaRef> {
        match cols {
            None => Ok(self.arrow_schema.clone()),
            Some(cols) => {
                let idx = cols
                    .iter()
                    .map(|c| {
                        self.arrow_schema
                            .index_of(c.as_str())
                            .map_err(|e| polars_err!(ColumnNotFound: "{e}"))
                    })
                    .collect::<PolarsResult<Vec<_>>>()?;
                Ok(Arc::new(
                    self.arrow_schema
                        .project(&idx)
                        .map_err(|e| polars_err!(ComputeError: "{e}"))?,
                ))
            }
        }
    }
}

impl AnonymousScan for LanceScan {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self, _infer_schema_length: Option<usize>) -> PolarsResult<SchemaRef> {
        Ok(self.schema.clone())
    }

    fn allows_projection_pushdown(&self) -> bool {
        true
    }

    fn scan(&self, args: AnonymousScanArgs) -> PolarsResult<DataFrame> {
        let cols = args.with_columns.as_deref();
        let schema = self.projected(cols)?;
        let batches = match &self.source {
            Source::Table(table) => {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                self.runtime
                    .block_on(self.store.scan(table, Some(&names), None, args.n_rows))
                    .map_err(|e| polars_err!(ComputeError: "{e}"))?
            }
            Source::EffectiveLabels => {
                let rows = self
                    .runtime
                    .block_on(self.store.effective_labels())
                    .map_err(|e| polars_err!(ComputeError: "{e}"))?;
                let full = super::effective_labels_batch(&rows)
                    .map_err(|e| polars_err!(ComputeError: "{e}"))?;
                let idx: Vec<usize> = schema
                    .fields()
                    .iter()
                    .filter_map(|f| self.arrow_schema.index_of(f.name()).ok())
                    .collect();
                vec![
                    full.project(&idx)
                        .map_err(|e| polars_err!(ComputeError: "{e}"))?,
                ]
            }
        };
        // Lance may return the projected columns in table order; align to the requested schema.
        let aligned = batches
            .iter()
            .map(|b| {
                let idx = schema
                    .fields()
                    .iter()
                    .map(|f| b.schema().index_of(f.name()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| polars_err!(ComputeError: "{e}"))?;
                let cols = idx.iter().map(|&i| b.column(i).clone()).collect();
                arrow_array::RecordBatch::try_new(schema.clone(), cols)
                    .map_err(|e| polars_err!(ComputeError: "{e}"))
            })
            .collect::<PolarsResult<Vec<_>>>()?;
        let mut df = batches_to_frame(&schema, &aligned)?;
        if let Some(n) = args.n_rows {
            df = df.head(Some(n));
        }
        Ok(df)
    }
}
