//! The writers of each layout: blocking file I/O, one chunk of samples at a time.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Int64Builder, LargeBinaryBuilder, StringBuilder, StructBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, FieldRef, Fields, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::record::ExportRecord;
use super::{EXPORT_INFO, ExportError, ExportSummary, Images, Layout};

/// File name of the Parquet layout's table.
pub const SAMPLES_PARQUET: &str = "samples.parquet";
/// File name of the NATIX layout's shard (the dataset's own naming).
pub const NATIX_SHARD: &str = "train-00000-of-00001.parquet";
/// The `imagefolder` metadata file Hugging Face `datasets` reads.
pub const METADATA_JSONL: &str = "metadata.jsonl";
/// The FiftyOne labels file.
pub const FIFTYONE_LABELS: &str = "labels.json";
/// FiftyOne's class list: the target is the index, as the store's label integer.
pub const FIFTYONE_CLASSES: [&str; 2] = ["clean", "roadwork"];
/// The folder of unlabelled images in the `imagefolder` layout.
pub const UNLABELLED_DIR: &str = "unlabelled";

/// The file extension of a stored format.
pub fn extension(format: &str) -> &'static str {
    match format {
        "jpeg" | "jpg" => "jpg",
        "png" => "png",
        "webp" => "webp",
        "bmp" => "bmp",
        "gif" => "gif",
        "tiff" => "tiff",
        _ => "img",
    }
}

fn ts_field(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        nullable,
    )
}

/// The Arrow fields of an [`ExportRecord`] in the Parquet layout (the image column aside).
pub fn record_fields() -> Vec<FieldRef> {
    let label_fields = Fields::from(vec![
        Field::new("label", DataType::UInt8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("author", DataType::Utf8, false),
        Field::new("confidence", DataType::Float32, false),
        ts_field("ts", false),
    ]);
    let s = |n: &str, null| Field::new(n, DataType::Utf8, null);
    vec![
        s("sample_id", false),
        s("file_name", true),
        Field::new("width", DataType::UInt32, false),
        Field::new("height", DataType::UInt32, false),
        s("format", false),
        s("source", false),
        s("source_ref", false),
        s("era", false),
        Field::new_list("tags", Field::new("item", DataType::Utf8, false), false),
        ts_field("received_at", false),
        Field::new("label", DataType::UInt8, true),
        s("label_source", true),
        s("label_author", true),
        Field::new("label_confidence", DataType::Float32, true),
        Field::new_list(
            "labels",
            Field::new("item", DataType::Struct(label_fields), false),
            false,
        ),
        s("mine_run", true),
        Field::new("cluster", DataType::UInt32, true),
        Field::new("hardness", DataType::Float32, true),
        s("reasons", true),
        Field::new("label_issue", DataType::Boolean, true),
        Field::new("outlier", DataType::Boolean, true),
        Field::new("typicality", DataType::Float32, true),
        Field::new("prob", DataType::Float32, true),
        s("selection", true),
        Field::new("selection_rank", DataType::UInt32, true),
        Field::new("selection_score", DataType::Float32, true),
    ]
    .into_iter()
    .map(Arc::new)
    .collect()
}

/// The columns of the NATIX `roadwork` shards (DESIGN §5) and the tag each comes from.
const NATIX_SCENE_TAGS: [(&str, &str); 4] = [
    ("daytime", "daytime"),
    ("scene_environment", "environment"),
    ("travel_alteration", "travel_alteration"),
    ("weather", "weather"),
];
const NATIX_VIDEO_TAGS: [&str; 3] = ["frame_id", "seq_id", "vid_id"];

fn natix_schema() -> Arc<Schema> {
    let utf8 = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new(
            "image",
            DataType::Struct(Fields::from(vec![
                Field::new("bytes", DataType::Binary, true),
                utf8("path"),
            ])),
            true,
        ),
        utf8("id"),
        Field::new("width", DataType::Int64, true),
        Field::new("height", DataType::Int64, true),
        utf8("license"),
        utf8("flickr_url"),
        utf8("coco_url"),
        utf8("date_captured"),
        utf8("gps"),
        utf8("city_name"),
        utf8("scene_description"),
        Field::new(
            "video_info",
            DataType::Struct(NATIX_VIDEO_TAGS.iter().map(|n| utf8(n)).collect()),
            true,
        ),
        Field::new(
            "scene_level_tags",
            DataType::Struct(NATIX_SCENE_TAGS.iter().map(|(n, _)| utf8(n)).collect()),
            true,
        ),
        Field::new("label", DataType::Int64, true),
    ]))
}

fn tag<'a>(r: &'a ExportRecord, key: &str) -> Option<&'a str> {
    r.tags
        .iter()
        .find_map(|t| t.split_once('=').and_then(|(k, v)| (k == key).then_some(v)))
}

fn fmt_err(what: &'static str) -> impl Fn(String) -> ExportError {
    move |detail| ExportError::Format { what, detail }
}

fn natix_batch(chunk: &[(ExportRecord, Vec<u8>)]) -> Result<RecordBatch, ExportError> {
    let schema = natix_schema();
    let err = fmt_err("natix batch");
    let struct_of = |i: usize| match schema.field(i).data_type() {
        DataType::Struct(f) => Ok(f.clone()),
        _ => Err(err("not a struct".into())),
    };
    let mut image = StructBuilder::from_fields(struct_of(0)?, chunk.len());
    let mut video = StructBuilder::from_fields(struct_of(11)?, chunk.len());
    let mut scene = StructBuilder::from_fields(struct_of(12)?, chunk.len());
    let mut text: Vec<StringBuilder> = (0..8).map(|_| StringBuilder::new()).collect();
    let (mut w, mut h, mut label) = (
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
    );
    for (r, bytes) in chunk {
        let file = format!("{}.{}", r.sample_id, extension(&r.format));
        image
            .field_builder::<BinaryBuilder>(0)
            .ok_or_else(|| err("image.bytes".into()))?
            .append_value(bytes);
        image
            .field_builder::<StringBuilder>(1)
            .ok_or_else(|| err("image.path".into()))?
            .append_value(file);
        image.append(true);
        for (i, key) in NATIX_VIDEO_TAGS.iter().enumerate() {
            video
                .field_builder::<StringBuilder>(i)
                .ok_or_else(|| err("video_info".into()))?
                .append_option(tag(r, key));
        }
        video.append(true);
        for (i, (_, key)) in NATIX_SCENE_TAGS.iter().enumerate() {
            scene
                .field_builder::<StringBuilder>(i)
                .ok_or_else(|| err("scene_level_tags".into()))?
                .append_option(tag(r, key));
        }
        scene.append(true);
        // id, license, flickr_url, coco_url, date_captured, gps, city_name, scene_description
        let values = [
            Some(r.sample_id.clone()),
            None,
            None,
            None,
            Some(r.received_at.to_rfc3339()),
            tag(r, "gps").map(str::to_string),
            tag(r, "city").map(str::to_string),
            // Positives carry a description, negatives an empty one (DESIGN §5).
            Some(tag(r, "scene_description").unwrap_or_default().to_string()),
        ];
        for (b, v) in text.iter_mut().zip(values) {
            b.append_option(v);
        }
        w.append_value(r.width.into());
        h.append_value(r.height.into());
        label.append_option(r.label.map(i64::from));
    }
    let mut text = text
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let mut next = || text.next().ok_or_else(|| err("columns".into()));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(image.finish()),
        next()?,
        Arc::new(w.finish()),
        Arc::new(h.finish()),
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
        Arc::new(video.finish()),
        Arc::new(scene.finish()),
        Arc::new(label.finish()),
    ];
    RecordBatch::try_new(schema, columns).map_err(|e| err(e.to_string()))
}

/// The Parquet layout's batch: the record columns (through `serde_arrow`) and, inline, the bytes.
fn parquet_batch(
    chunk: &[(ExportRecord, Vec<u8>)],
    images: Images,
) -> Result<RecordBatch, ExportError> {
    let err = fmt_err("parquet batch");
    let records: Vec<&ExportRecord> = chunk.iter().map(|(r, _)| r).collect();
    let body =
        serde_arrow::to_record_batch(&record_fields(), &records).map_err(|e| err(e.to_string()))?;
    if images == Images::Files {
        return Ok(body);
    }
    let mut fields: Vec<FieldRef> = body.schema().fields().iter().cloned().collect();
    let mut columns = body.columns().to_vec();
    let mut b = LargeBinaryBuilder::new();
    for (_, bytes) in chunk {
        b.append_value(bytes);
    }
    fields.insert(
        2,
        Arc::new(Field::new("image", DataType::LargeBinary, false)),
    );
    columns.insert(2, Arc::new(b.finish()));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| err(e.to_string()))
}

/// Writes one export folder.
pub(super) struct Writer {
    layout: Layout,
    images: Images,
    dir: PathBuf,
    table: Option<ArrowWriter<File>>,
    jsonl: Option<BufWriter<File>>,
    fiftyone: serde_json::Map<String, serde_json::Value>,
    summary: ExportSummary,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn create(path: &Path) -> Result<File, ExportError> {
    File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io(path))
}

fn parquet_writer(path: &Path, schema: Arc<Schema>) -> Result<ArrowWriter<File>, ExportError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    ArrowWriter::try_new(create(path)?, schema, Some(props)).map_err(|e| ExportError::Format {
        what: "parquet",
        detail: e.to_string(),
    })
}

impl Writer {
    pub fn create(layout: Layout, images: Images, dir: &Path) -> Result<Self, ExportError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut w = Self {
            layout,
            images,
            dir: dir.to_path_buf(),
            table: None,
            jsonl: None,
            fiftyone: serde_json::Map::new(),
            summary: ExportSummary::default(),
        };
        match layout {
            Layout::Parquet => {
                let probe = parquet_batch(&[], images)?;
                w.table = Some(parquet_writer(&dir.join(SAMPLES_PARQUET), probe.schema())?);
            }
            Layout::Natix => {
                w.table = Some(parquet_writer(&dir.join(NATIX_SHARD), natix_schema())?);
            }
            Layout::Imagefolder => {
                w.jsonl = Some(BufWriter::new(create(&dir.join(METADATA_JSONL))?));
            }
            Layout::Fiftyone => {}
        }
        Ok(w)
    }

    /// Where this layout puts one sample's image file (relative to the root), if it has files.
    fn file_of(&self, r: &ExportRecord) -> Option<String> {
        let name = format!("{}.{}", r.sample_id, extension(&r.format));
        match (self.layout, self.images) {
            (Layout::Parquet, Images::Files) => Some(format!("images/{name}")),
            (Layout::Parquet | Layout::Natix, _) => None,
            (Layout::Imagefolder, _) => {
                let class = match r.label {
                    Some(1) => FIFTYONE_CLASSES[1],
                    Some(_) => FIFTYONE_CLASSES[0],
                    None => UNLABELLED_DIR,
                };
                Some(format!("{class}/{name}"))
            }
            (Layout::Fiftyone, _) => Some(format!("data/{name}")),
        }
    }

    pub fn write(&mut self, chunk: Vec<(ExportRecord, Vec<u8>)>) -> Result<(), ExportError> {
        let mut chunk = chunk;
        for (r, bytes) in &mut chunk {
            r.file_name = self.file_of(r);
            if let Some(rel) = &r.file_name {
                let path = self.dir.join(rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                let mut f = create(&path)?;
                f.write_all(bytes).map_err(io(&path))?;
            }
            self.summary.samples += 1;
            self.summary.labelled += usize::from(r.label.is_some());
            self.summary.bytes += bytes.len() as u64;
        }
        match self.layout {
            Layout::Parquet | Layout::Natix => {
                let batch = if self.layout == Layout::Natix {
                    natix_batch(&chunk)?
                } else {
                    parquet_batch(&chunk, self.images)?
                };
                if let Some(t) = &mut self.table {
                    t.write(&batch).map_err(|e| ExportError::Format {
                        what: "parquet",
                        detail: e.to_string(),
                    })?;
                }
            }
            Layout::Imagefolder => {
                let path = self.dir.join(METADATA_JSONL);
                if let Some(out) = &mut self.jsonl {
                    for (r, _) in &chunk {
                        let line = serde_json::to_string(r).map_err(|e| ExportError::Format {
                            what: "metadata.jsonl",
                            detail: e.to_string(),
                        })?;
                        writeln!(out, "{line}").map_err(io(&path))?;
                    }
                }
            }
            Layout::Fiftyone => {
                for (r, _) in &chunk {
                    self.fiftyone
                        .insert(r.sample_id.clone(), fiftyone_label(r)?);
                }
            }
        }
        Ok(())
    }

    pub fn finish(mut self, info: &serde_json::Value) -> Result<ExportSummary, ExportError> {
        if let Some(t) = self.table.take() {
            t.close().map_err(|e| ExportError::Format {
                what: "parquet",
                detail: e.to_string(),
            })?;
        }
        if let Some(mut out) = self.jsonl.take() {
            out.flush().map_err(io(&self.dir.join(METADATA_JSONL)))?;
        }
        if self.layout == Layout::Fiftyone {
            let doc = serde_json::json!({
                "classes": FIFTYONE_CLASSES,
                "labels": self.fiftyone,
            });
            let path = self.dir.join(FIFTYONE_LABELS);
            let text = serde_json::to_string_pretty(&doc).map_err(|e| ExportError::Format {
                what: "labels.json",
                detail: e.to_string(),
            })?;
            std::fs::write(&path, text).map_err(io(&path))?;
        }
        let path = self.dir.join(EXPORT_INFO);
        let mut info = info.clone();
        info["samples"] = self.summary.samples.into();
        info["labelled"] = self.summary.labelled.into();
        let text = serde_json::to_string_pretty(&info).map_err(|e| ExportError::Format {
            what: EXPORT_INFO,
            detail: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(io(&path))?;
        Ok(self.summary)
    }
}

/// One sample's entry of FiftyOne's `labels.json`: the class index and confidence of the
/// effective label, everything else the store knows as the classification's attributes; `null`
/// for an unlabelled sample (FiftyOne's convention).
fn fiftyone_label(r: &ExportRecord) -> Result<serde_json::Value, ExportError> {
    let Some(label) = r.label else {
        return Ok(serde_json::Value::Null);
    };
    let mut attributes = match serde_json::to_value(r) {
        Ok(serde_json::Value::Object(m)) => m,
        other => {
            return Err(ExportError::Format {
                what: "labels.json",
                detail: format!("record is not an object: {other:?}"),
            });
        }
    };
    for k in ["sample_id", "file_name", "label", "label_confidence"] {
        attributes.remove(k);
    }
    attributes.retain(|_, v| !v.is_null());
    Ok(serde_json::json!({
        "label": label,
        "confidence": r.label_confidence,
        "attributes": attributes,
    }))
}
