//! Tier 1 of the cascade: DINOv3 features and the champion head, in process. The encoder is loaded
//! once and shared by every profile; the head can be swapped while requests are in flight (a
//! request keeps the `Arc` of the head it started with).
//!
//! Requests decode their images on their own threads; the encoder can then run them one by one,
//! or — with [`Tier1::with_batching`] — through worker threads that take every image waiting at
//! that moment (up to a maximum) into one forward pass. Batching costs a request nothing when
//! the server is idle (a lone image goes straight through) and turns concurrent traffic into the
//! large batches accelerators are fast at.
//!
//! Each image carries its request's deadline; a worker that reaches an image whose deadline has
//! passed drops it unencoded (its request has already been answered undecided), so an overload
//! sheds work instead of growing a backlog that makes every later request late too.
//!
//! On a GPU every new input shape costs a kernel autotune and compile (seconds, measured on an
//! H100: first batches of a new size missed the 7 s deadline). So there batches are padded up to
//! a fixed ladder of sizes (1, 2, 4, … up to `max_batch`) and [`Tier1::warm_up`] runs each rung
//! before the server listens: live traffic never meets a shape the device has not seen.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use image::DynamicImage;

use crate::embed::{Cpu, EmbedError, ImageEncoder};
use crate::imaging::{DecodeLimits, decode};
use crate::train::{TrainedHead, UNDECIDED};

use super::ServeError;

/// One tier-1 answer.
#[derive(Debug, Clone)]
pub struct Tier1Answer {
    /// Calibrated, finite, in [0, 1], never exactly 0.5.
    pub prob: f32,
    pub model_version: String,
    /// The encoder's features of the image (a challenger scored in shadow reuses them).
    pub features: Vec<f32>,
    /// The head's forward alone, milliseconds.
    pub head_ms: f32,
}

/// Why an image got no tier-1 answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Tier1Error {
    #[error("image cannot be decoded: {0}")]
    Undecodable(String),
    /// The request's deadline passed while it waited for the encoder: it was not encoded (under
    /// overload, work nobody will wait for is dropped instead of delaying everyone behind it).
    #[error("deadline passed before the encoder reached the image")]
    Expired,
    #[error("the encoder produced no features")]
    NoFeatures,
}

/// Where a job's features go (`None`: it expired unencoded).
type Reply = SyncSender<Option<Vec<f32>>>;

/// One image waiting for the encoder.
struct Job {
    image: DynamicImage,
    deadline: Instant,
    reply: Reply,
}

/// The encoder's worker threads; they stop when this (the only sender) is dropped.
struct Batcher {
    tx: SyncSender<Job>,
    max_batch: usize,
    pad: bool,
}

/// The batch sizes a padded batcher runs: powers of two below `max_batch`, and `max_batch`.
pub fn batch_ladder(max_batch: usize) -> Vec<usize> {
    let max_batch = max_batch.max(1);
    let mut sizes: Vec<usize> = (0..usize::BITS)
        .map(|i| 1usize << i)
        .take_while(|s| *s < max_batch)
        .collect();
    sizes.push(max_batch);
    sizes
}

/// The rung of the ladder a batch of `n` is padded to.
fn padded_size(n: usize, max_batch: usize) -> usize {
    n.next_power_of_two().min(max_batch.max(1)).max(n)
}

impl Batcher {
    fn start(encoder: Arc<dyn ImageEncoder>, max_batch: usize, workers: usize, pad: bool) -> Self {
        let (tx, rx) = sync_channel::<Job>(4 * max_batch.max(1) * workers.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let (rx, enc) = (rx.clone(), encoder.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("tier1-encoder-{i}"))
                .spawn(move || encode_batches(&rx, enc.as_ref(), max_batch.max(1), pad));
            if let Err(e) = spawned {
                tracing::error!("cannot start encoder worker {i}: {e}");
            }
        }
        Self {
            tx,
            max_batch: max_batch.max(1),
            pad,
        }
    }
}

/// Worker loop: wait for one image, take whatever else is already waiting, encode them together.
fn encode_batches(rx: &Mutex<Receiver<Job>>, enc: &dyn ImageEncoder, max_batch: usize, pad: bool) {
    loop {
        let mut jobs = Vec::with_capacity(max_batch);
        {
            let Ok(r) = rx.lock() else { return };
            match r.recv() {
                Ok(j) => jobs.push(j),
                Err(_) => return,
            }
            while jobs.len() < max_batch {
                match r.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
        }
        let now = Instant::now();
        let (live, expired): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| j.deadline > now);
        for j in expired {
            let _ = j.reply.send(None);
        }
        if live.is_empty() {
            continue;
        }
        let (mut images, replies): (Vec<DynamicImage>, Vec<Reply>) =
            live.into_iter().map(|j| (j.image, j.reply)).unzip();
        if pad {
            let filler = images[0].clone();
            images.resize(padded_size(images.len(), max_batch), filler);
        }
        // A panicking forward pass must not take the worker down with it: its requests get no
        // features (and answer undecided), the next batch runs.
        let feats =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| enc.embed_images(&images)))
                .unwrap_or_else(|_| Err(EmbedError::Task("the encoder panicked".into())))
                .unwrap_or_else(|e| {
                    tracing::error!("encoding a batch of {}: {e}", images.len());
                    Vec::new()
                });
        // A request left without a vector gets an empty one: answered undecided, not "expired".
        let mut feats = feats.into_iter();
        for reply in replies {
            let _ = reply.send(Some(feats.next().unwrap_or_default()));
        }
    }
}

/// The encoder, the current head, and the challenger scored in shadow.
pub struct Tier1 {
    /// Decodes running at once at most. A request answered at its deadline does not give its
    /// slot back before its decode really ends, so a flood of slow images cannot pile up work on
    /// the blocking pool behind the answers. (The slot covers the decode only: the encoder's
    /// batching still sees every decoded image.)
    decode_slots: Arc<tokio::sync::Semaphore>,
    /// Decodes running now, and the most ever seen at once.
    decoding: std::sync::atomic::AtomicUsize,
    decode_peak: std::sync::atomic::AtomicUsize,
    encoder: Arc<dyn ImageEncoder>,
    head: RwLock<Arc<TrainedHead<Cpu>>>,
    challenger: RwLock<Option<Arc<TrainedHead<Cpu>>>>,
    limits: DecodeLimits,
    batcher: Option<Batcher>,
}

fn check_pair(embedder: &dyn ImageEncoder, head: &TrainedHead<Cpu>) -> Result<(), ServeError> {
    if head.card.embedding_model != embedder.model_id() || head.card.dim != embedder.dim() {
        return Err(ServeError::HeadMismatch {
            version: head.card.model_version.clone(),
            head: format!("{} (dim {})", head.card.embedding_model, head.card.dim),
            encoder: format!("{} (dim {})", embedder.model_id(), embedder.dim()),
        });
    }
    Ok(())
}

impl Tier1 {
    /// Refuses a head trained on another encoder's features.
    pub fn new(
        encoder: Arc<dyn ImageEncoder>,
        head: TrainedHead<Cpu>,
        limits: DecodeLimits,
    ) -> Result<Self, ServeError> {
        check_pair(encoder.as_ref(), &head)?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Self {
            decode_slots: Arc::new(tokio::sync::Semaphore::new(cores.max(2))),
            decoding: Default::default(),
            decode_peak: Default::default(),
            encoder,
            head: RwLock::new(Arc::new(head)),
            challenger: RwLock::new(None),
            limits,
            batcher: None,
        })
    }

    /// At most `n` decodes at once (default: the number of cores, at least 2).
    pub fn with_decode_slots(mut self, n: usize) -> Self {
        self.decode_slots = Arc::new(tokio::sync::Semaphore::new(n.max(1)));
        self
    }

    /// The decode slots a request takes before its image is decoded.
    pub fn decode_slots(&self) -> Arc<tokio::sync::Semaphore> {
        self.decode_slots.clone()
    }

    /// The most decodes that ever ran at once.
    pub fn decode_peak(&self) -> usize {
        self.decode_peak.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs the encoder on `workers` threads that merge concurrent images into batches of up to
    /// `max_batch`; with `pad`, batches are padded to the sizes of [`batch_ladder`] (for devices
    /// that compile kernels per shape).
    pub fn with_batching(mut self, max_batch: usize, workers: usize, pad: bool) -> Self {
        self.batcher = Some(Batcher::start(
            self.encoder.clone(),
            max_batch,
            workers,
            pad,
        ));
        self
    }

    /// Runs the encoder once on every batch size live traffic can produce (the ladder when
    /// padding, else a single image), so tuning and compilation happen now and not on a
    /// validator's clock. Blocking; returns the sizes run and the seconds taken.
    pub fn warm_up(&self) -> (Vec<usize>, f64) {
        let t = std::time::Instant::now();
        let sizes = match &self.batcher {
            Some(b) if b.pad => batch_ladder(b.max_batch),
            _ => vec![1],
        };
        let gray = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            64,
            64,
            image::Rgb([128, 128, 128]),
        ));
        for &n in &sizes {
            // Twice: the first pass of a shape tunes, the second runs what was chosen.
            for _ in 0..2 {
                let _ = self.encoder.embed_images(&vec![gray.clone(); n]);
            }
        }
        (sizes, t.elapsed().as_secs_f64())
    }

    /// The shared encoder.
    pub fn encoder(&self) -> &Arc<dyn ImageEncoder> {
        &self.encoder
    }

    fn features(&self, image: DynamicImage, deadline: Instant) -> Result<Vec<f32>, Tier1Error> {
        let feats = match &self.batcher {
            Some(b) => {
                let (reply, rx) = sync_channel(1);
                let job = Job {
                    image,
                    deadline,
                    reply,
                };
                if b.tx.send(job).is_err() {
                    return Err(Tier1Error::NoFeatures);
                }
                rx.recv()
                    .map_err(|_| Tier1Error::NoFeatures)?
                    .ok_or(Tier1Error::Expired)?
            }
            None => self
                .encoder
                .embed_images(std::slice::from_ref(&image))
                .map_err(|e| {
                    tracing::error!("encoding an image: {e}");
                    Tier1Error::NoFeatures
                })?
                .pop()
                .unwrap_or_default(),
        };
        if feats.is_empty() {
            return Err(Tier1Error::NoFeatures);
        }
        Ok(feats)
    }

    /// The head answering now.
    pub fn head(&self) -> Arc<TrainedHead<Cpu>> {
        self.head
            .read()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn model_version(&self) -> String {
        self.head().card.model_version.clone()
    }

    /// Installs a new head (refused, leaving the old one serving, if it does not fit the encoder).
    pub fn swap_head(&self, head: TrainedHead<Cpu>) -> Result<String, ServeError> {
        check_pair(self.encoder.as_ref(), &head)?;
        let version = head.card.model_version.clone();
        let mut slot = self.head.write().unwrap_or_else(|p| p.into_inner());
        *slot = Arc::new(head);
        Ok(version)
    }

    /// The head scored in shadow, if one is installed.
    pub fn challenger(&self) -> Option<Arc<TrainedHead<Cpu>>> {
        self.challenger
            .read()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Installs (or with `None` removes) the challenger; refused, leaving the old one, if it does
    /// not fit the encoder (it scores the champion's features).
    pub fn set_challenger(
        &self,
        head: Option<TrainedHead<Cpu>>,
    ) -> Result<Option<String>, ServeError> {
        if let Some(h) = &head {
            check_pair(self.encoder.as_ref(), h)?;
        }
        let version = head.as_ref().map(|h| h.card.model_version.clone());
        let mut slot = self.challenger.write().unwrap_or_else(|p| p.into_inner());
        *slot = head.map(Arc::new);
        Ok(version)
    }

    /// Decodes and scores one image. CPU-bound: call from a blocking thread.
    pub fn predict(&self, bytes: &[u8]) -> Result<Tier1Answer, Tier1Error> {
        self.predict_before(bytes, Instant::now() + std::time::Duration::from_secs(3600))
    }

    /// As [`Tier1::predict`], giving up with [`Tier1Error::Expired`] when the encoder cannot
    /// start on the image before `deadline`.
    pub fn predict_before(
        &self,
        bytes: &[u8],
        deadline: Instant,
    ) -> Result<Tier1Answer, Tier1Error> {
        self.predict_holding(bytes, deadline, None)
    }

    /// As [`Tier1::predict_before`], giving `slot` (a permit of [`Tier1::decode_slots`]) back
    /// as soon as the image is decoded: the slot bounds decoding, not the encoder's batches.
    pub fn predict_holding(
        &self,
        bytes: &[u8],
        deadline: Instant,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<Tier1Answer, Tier1Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.decoding.fetch_add(1, Relaxed) + 1;
        self.decode_peak.fetch_max(now, Relaxed);
        let img = decode(bytes, &self.limits);
        self.decoding.fetch_sub(1, Relaxed);
        drop(slot);
        let img = img.map_err(|e| Tier1Error::Undecodable(e.to_string()))?;
        let features = self.features(img.image, deadline)?;
        let head = self.head();
        let t = Instant::now();
        let prob = head_prob(&head, &features);
        Ok(Tier1Answer {
            prob,
            model_version: head.card.model_version.clone(),
            head_ms: t.elapsed().as_secs_f32() * 1000.0,
            features,
        })
    }
}

/// A head's probability for one feature vector: finite, in [0, 1], never exactly 0.5 (a head that
/// produces no finite probability answers undecided).
pub fn head_prob(head: &TrainedHead<Cpu>, features: &[f32]) -> f32 {
    let prob = head
        .predict(features)
        .ok()
        .and_then(|p| p.first().copied())
        .filter(|p| p.is_finite() && (0.0..=1.0).contains(p))
        .unwrap_or_else(|| {
            tracing::error!(
                version = %head.card.model_version,
                "head produced no finite probability; answering undecided"
            );
            UNDECIDED
        });
    if prob == 0.5 { UNDECIDED } else { prob }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_pad_to_a_small_ladder_of_sizes() {
        assert_eq!(batch_ladder(16), vec![1, 2, 4, 8, 16]);
        assert_eq!(batch_ladder(24), vec![1, 2, 4, 8, 16, 24]);
        assert_eq!(batch_ladder(1), vec![1]);
        for max in [1, 5, 16, 24] {
            let ladder = batch_ladder(max);
            for n in 1..=max {
                let p = padded_size(n, max);
                assert!(p >= n && ladder.contains(&p), "n {n} max {max} → {p}");
            }
        }
    }
}
