//! The offline backend: the procedural street-scene generator, driven by a job.
//!
//! Text-to-image draws a fresh scene under the job's conditions (daytime, weather, environment)
//! at the job's size. An edit of a procedural source (`procedural-v1:seed=S:index=I`) redraws
//! that very scene — same camera, same road — with the roadwork added or taken away: the
//! offline counterpart of Bedrock's inpaint and search-and-replace.

use futures::FutureExt;
use futures::future::BoxFuture;
use rand::Rng;

use super::{Backend, GenError, Generated};
use crate::store::Label;
use crate::synth::plan::{Job, Task};
use crate::synth::scenes::{GENERATOR, SceneSpec, scene_jpeg, scene_rng};

/// The procedural generator as a synthesis backend.
#[derive(Debug, Clone, Default)]
pub struct Procedural;

/// `(seed, index)` of a procedural scene's `source_ref`.
fn procedural_ref(source_ref: &str) -> Option<(u64, u64)> {
    let rest = source_ref.strip_prefix(GENERATOR)?.strip_prefix(":seed=")?;
    let (seed, index) = rest.split_once(":index=")?;
    Some((seed.parse().ok()?, index.parse().ok()?))
}

/// The scene a job asks for (a pure function of the job).
pub fn scene_for(job: &Job) -> SceneSpec {
    let mut r = scene_rng(u64::from(job.seed), job.index as u64, 3);
    let edit = matches!(job.task, Task::AddElement | Task::RemoveElement);
    let base = job
        .source
        .as_ref()
        .filter(|_| edit)
        .and_then(|s| procedural_ref(&s.source_ref));
    let spec = match base {
        Some((seed, index)) => SceneSpec::draw(seed, index),
        None => {
            let mut s = SceneSpec::draw(u64::from(job.seed), job.index as u64)
                .with_attributes(&job.attributes);
            s.width = job.width;
            s.height = job.height;
            s
        }
    };
    // Look-alikes make half of the fresh negatives hard; an edit that takes roadwork away
    // keeps the scene otherwise as it was.
    let hard = job.label == Label::Clean && job.task == Task::TextToImage && r.random_bool(0.5);
    spec.relabelled(job.label, hard, &mut r)
}

impl Backend for Procedural {
    fn name(&self) -> &'static str {
        "procedural"
    }

    fn generate<'a>(
        &'a self,
        job: &'a Job,
        _source: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<Generated, GenError>> {
        let spec = scene_for(job);
        async move {
            let bytes = tokio::task::spawn_blocking(move || scene_jpeg(&spec))
                .await
                .map_err(|e| GenError::Local(e.to_string()))?
                .map_err(|e| GenError::Local(e.to_string()))?;
            Ok(Generated {
                bytes,
                model_id: GENERATOR.into(),
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procedural_refs_parse_and_edits_redraw_the_source_scene() {
        assert_eq!(
            procedural_ref("procedural-v1:seed=7:index=12"),
            Some((7, 12))
        );
        assert_eq!(procedural_ref("natix:row=3"), None);
        assert_eq!(procedural_ref("procedural-v1:seed=x:index=1"), None);
        let source = SceneSpec::draw(7, 13);
        assert_eq!(source.label, Label::Clean);
        let job = Job {
            synth_id: "j".into(),
            request_id: "r".into(),
            gap: "g".into(),
            cluster: None,
            index: 0,
            label: Label::Roadwork,
            task: Task::AddElement,
            model: crate::synth::plan::JobModel {
                id: GENERATOR.into(),
                family: None,
                price_usd: 0.0,
            },
            prompt: String::new(),
            negative_prompt: String::new(),
            search_prompt: None,
            seed: 5,
            source: Some(crate::synth::plan::SourceFrame {
                sample_id: "s".into(),
                label: Label::Clean,
                source_ref: "procedural-v1:seed=7:index=13".into(),
            }),
            attributes: Default::default(),
            width: 224,
            height: 224,
        };
        let s = scene_for(&job);
        assert_eq!(s.label, Label::Roadwork);
        assert!(!s.elements.is_empty());
        assert_eq!(
            (s.width, s.height, s.daytime, s.weather),
            (source.width, source.height, source.daytime, source.weather)
        );
        assert_eq!(s.camera_height_m, source.camera_height_m);
        // Text-to-image follows the attributes and the job's size.
        let mut t2i = job.clone();
        t2i.task = Task::TextToImage;
        t2i.label = Label::Clean;
        t2i.attributes.insert("daytime".into(), "night".into());
        t2i.attributes.insert("weather".into(), "fog".into());
        let s = scene_for(&t2i);
        assert_eq!((s.width, s.height), (224, 224));
        assert_eq!(s.daytime, crate::synth::scenes::Daytime::Night);
        assert_eq!(s.weather, crate::synth::scenes::Weather::Fog);
        assert!(s.elements.is_empty());
        assert_eq!(scene_for(&t2i), s, "a pure function of the job");
    }
}
