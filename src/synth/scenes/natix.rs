//! Writes generated scenes as a parquet shard in the NATIX `roadwork` schema (DESIGN.md §5), so the
//! demo and the tests exercise the real dataset path end to end without downloading anything.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema};
use parquet::arrow::ArrowWriter;
use rayon::prelude::*;

use super::spec::{Element, SceneSpec};
use super::{SceneError, scene_jpeg};
use crate::store::Label;

fn s(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn scene_tag_fields() -> Fields {
    Fields::from(vec![
        s("daytime"),
        s("scene_environment"),
        s("travel_alteration"),
        s("weather"),
    ])
}

fn video_fields() -> Fields {
    Fields::from(vec![
        Field::new("frame_id", DataType::Int64, true),
        s("seq_id"),
        s("vid_id"),
    ])
}

fn image_fields() -> Fields {
    Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ])
}

/// The NATIX parquet schema as published (the columns roadwork reads, plus the descriptive ones).
pub fn natix_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("image", DataType::Struct(image_fields()), true),
        Field::new("id", DataType::Int64, true),
        Field::new("width", DataType::Int64, true),
        Field::new("height", DataType::Int64, true),
        s("license"),
        s("city_name"),
        s("scene_description"),
        s("gps"),
        Field::new("video_info", DataType::Struct(video_fields()), true),
        Field::new(
            "scene_level_tags",
            DataType::Struct(scene_tag_fields()),
            true,
        ),
        Field::new("label", DataType::Int64, true),
    ]))
}

fn describe(spec: &SceneSpec) -> String {
    let names: Vec<&str> = spec
        .elements
        .iter()
        .map(|e| match e {
            Element::Cones => "traffic cones",
            Element::Barriers => "barriers",
            Element::Sign => "a roadwork sign",
            Element::Workers => "workers in high-visibility vests",
            Element::Excavator => "an excavator",
            Element::ArrowBoard => "an arrow board",
            Element::DugAsphalt => "dug-up asphalt",
        })
        .collect();
    format!("Roadwork zone with {}.", names.join(", "))
}

/// Writes scenes `indices` of `seed` to `path` as one NATIX-schema parquet file. Ids are
/// `1_000_000 * seed + index`. Positives carry a scene description, negatives an empty one.
/// Frames per drive in generated shards.
const FRAMES_PER_SEQ: u64 = 3;

pub fn write_natix_shard(path: &Path, seed: u64, indices: &[u64]) -> Result<usize, SceneError> {
    let specs: Vec<SceneSpec> = indices.iter().map(|&i| SceneSpec::draw(seed, i)).collect();
    let jpegs = specs
        .par_iter()
        .map(scene_jpeg)
        .collect::<Result<Vec<_>, _>>()?;
    let mut bytes = BinaryBuilder::new();
    let mut img_path = StringBuilder::new();
    let (mut id, mut w, mut h, mut label) = (
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
    );
    let (mut license, mut city, mut desc) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut tags: Vec<StringBuilder> = (0..4).map(|_| StringBuilder::new()).collect();
    let (mut gps, mut frame, mut seq, mut vid) = (
        StringBuilder::new(),
        Int64Builder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    for (spec, jpg) in specs.iter().zip(&jpegs) {
        // Three consecutive indices are frames of one drive (one seq_id), as NATIX clips are.
        let drive = spec.index / FRAMES_PER_SEQ;
        frame.append_value((spec.index % FRAMES_PER_SEQ) as i64);
        seq.append_value(format!("{}-{drive}", spec.seed));
        vid.append_value(format!("vid-{}-{}", spec.seed, drive / 4));
        gps.append_value(format!(
            "{:.5},{:.5}",
            52.0 + (drive % 97) as f64 * 0.001,
            13.0 + (drive % 89) as f64 * 0.001
        ));
        bytes.append_value(jpg);
        img_path.append_value(format!("{}.jpg", spec.index));
        id.append_value(1_000_000 * spec.seed as i64 + spec.index as i64);
        w.append_value(spec.width.into());
        h.append_value(spec.height.into());
        license.append_value("CC-BY-4.0");
        city.append_value(["Berlin", "Lisbon", "Austin", "Osaka"][(spec.index % 4) as usize]);
        match spec.label {
            Label::Roadwork => desc.append_value(describe(spec)),
            Label::Clean => desc.append_value(""),
        }
        let t = spec.tags();
        let tag = |k: &str| {
            t.iter()
                .find_map(|x| x.strip_prefix(&format!("{k}=")).map(str::to_string))
        };
        tags[0].append_option(tag("daytime"));
        tags[1].append_option(tag("environment"));
        tags[2].append_value(if spec.label == Label::Roadwork {
            "lane_closure"
        } else {
            "none"
        });
        tags[3].append_option(tag("weather"));
        label.append_value(spec.label.as_u8().into());
    }
    let image = StructArray::new(
        image_fields(),
        vec![Arc::new(bytes.finish()), Arc::new(img_path.finish())],
        None,
    );
    let scene = StructArray::new(
        scene_tag_fields(),
        tags.iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect(),
        None,
    );
    let video = StructArray::new(
        video_fields(),
        vec![
            Arc::new(frame.finish()) as ArrayRef,
            Arc::new(seq.finish()),
            Arc::new(vid.finish()),
        ],
        None,
    );
    let schema = natix_schema();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(image),
        Arc::new(id.finish()),
        Arc::new(w.finish()),
        Arc::new(h.finish()),
        Arc::new(license.finish()),
        Arc::new(city.finish()),
        Arc::new(desc.finish()),
        Arc::new(gps.finish()),
        Arc::new(video),
        Arc::new(scene),
        Arc::new(label.finish()),
    ];
    let io = |e: String| SceneError::Io {
        path: path.into(),
        source: std::io::Error::other(e),
    };
    let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| io(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| SceneError::Io {
            path: dir.into(),
            source,
        })?;
    }
    let file = std::fs::File::create(path).map_err(|source| SceneError::Io {
        path: path.into(),
        source,
    })?;
    let mut writer = ArrowWriter::try_new(file, schema, None).map_err(|e| io(e.to_string()))?;
    writer.write(&batch).map_err(|e| io(e.to_string()))?;
    writer.close().map_err(|e| io(e.to_string()))?;
    Ok(specs.len())
}
