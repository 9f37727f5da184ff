//! The procedural scene generator: determinism, layout, and that the classes differ in content.

use roadwork::store::Label;
use roadwork::store::manifest::ManifestEntry;
use roadwork::synth::scenes::{SceneSpec, generate_scenes, render};

fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for class in ["roadwork", "clean"] {
        for e in std::fs::read_dir(dir.join(class)).unwrap() {
            let p = e.unwrap().path();
            out.push((
                format!("{class}/{}", p.file_name().unwrap().to_string_lossy()),
                std::fs::read(&p).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_same_bytes_other_seed_other_images() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    generate_scenes(a.path(), 6, 7, false).unwrap();
    generate_scenes(b.path(), 6, 7, false).unwrap();
    generate_scenes(c.path(), 6, 8, false).unwrap();
    let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
    assert_eq!(fa.len(), 6);
    assert_eq!(fa, fb);
    let bytes_a: Vec<&Vec<u8>> = fa.iter().map(|x| &x.1).collect();
    assert!(fc.iter().all(|(_, bytes)| !bytes_a.contains(&bytes)));
    assert_eq!(
        std::fs::read(a.path().join("manifest.jsonl")).unwrap(),
        std::fs::read(b.path().join("manifest.jsonl")).unwrap()
    );
}

#[test]
fn manifest_labels_and_sizes() {
    let d = tempfile::tempdir().unwrap();
    let s = generate_scenes(d.path(), 40, 3, false).unwrap();
    assert_eq!((s.roadwork, s.clean), (20, 20));
    let text = std::fs::read_to_string(d.path().join("manifest.jsonl")).unwrap();
    let entries: Vec<ManifestEntry> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 40);
    let mut sizes = std::collections::BTreeSet::new();
    for e in &entries {
        let class = if e.label == Some(Label::Roadwork) {
            "roadwork/"
        } else {
            "clean/"
        };
        assert!(e.file.starts_with(class), "{} vs {:?}", e.file, e.label);
        let img = image::open(d.path().join(&e.file)).unwrap();
        assert!(img.width() >= 224 && img.width() <= 1920);
        assert!(img.height() >= 224 && img.height() <= 1080);
        sizes.insert((img.width(), img.height()));
        assert!(e.tags.iter().any(|t| t.starts_with("weather=")));
        let has_element = e.tags.iter().any(|t| t.starts_with("element="));
        assert_eq!(has_element, e.label == Some(Label::Roadwork));
    }
    assert!(sizes.len() >= 4, "sizes not varied: {sizes:?}");
    let csv = std::fs::read_to_string(d.path().join("labels.csv")).unwrap();
    assert_eq!(csv.lines().count(), 41);
}

/// Share of pixels, below the top 30 % of the frame, in the saturated orange and fluorescent
/// yellow-green ranges that cones, vests and signs are painted in (brick and tail lights also hit it).
fn roadwork_colour_share(img: &image::RgbImage) -> f64 {
    let top = img.height() * 3 / 10;
    let mut hits = 0usize;
    for y in top..img.height() {
        for x in 0..img.width() {
            let [r, g, b] = img.get_pixel(x, y).0.map(i32::from);
            let orange = r > 150 && g > 30 && g < 150 && b < 90 && r - g > 60;
            let hivis = g > 180 && r > 150 && b < 110 && g - b > 100;
            hits += usize::from(orange || hivis);
        }
    }
    hits as f64 / f64::from(img.width() * (img.height() - top))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The classes differ in content the way street photos do: positives carry far more roadwork colour
/// than clean scenes, yet colour alone does not separate them (brick, tail lights, orange vans and
/// jackets in hard negatives; small, far or night-time work zones in positives).
#[test]
fn classes_differ_in_content_but_not_trivially() {
    let scored: Vec<(f64, Label)> = (0..80u64)
        .map(|i| {
            let mut spec = SceneSpec::draw(17, i);
            spec.width = 320;
            spec.height = 240;
            (roadwork_colour_share(&render(&spec)), spec.label)
        })
        .collect();
    let of = |l: Label| {
        scored
            .iter()
            .filter(|x| x.1 == l)
            .map(|x| x.0)
            .collect::<Vec<_>>()
    };
    let (pos, neg) = (of(Label::Roadwork), of(Label::Clean));
    let (mp, mn) = (median(pos.clone()), median(neg));
    assert!(
        mp > 5.0 * mn,
        "positive median {mp:.5} vs clean median {mn:.5}"
    );
    let visible = pos.iter().filter(|&&s| s > 0.0005).count() as f64 / pos.len() as f64;
    assert!(
        visible >= 0.7,
        "only {visible:.2} of positives show roadwork colours"
    );
    let mut sorted = scored.clone();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let best = (0..=sorted.len())
        .map(|k| {
            let correct = sorted[..k].iter().filter(|x| x.1 == Label::Clean).count()
                + sorted[k..]
                    .iter()
                    .filter(|x| x.1 == Label::Roadwork)
                    .count();
            correct as f64 / sorted.len() as f64
        })
        .fold(0.0, f64::max);
    assert!(
        best < 0.95,
        "colour alone separates the classes ({best:.2}): too easy"
    );
}
