//! lookout: an edge-camera classification daemon.
//!
//! A frame goes from a [`capture::FrameSource`] through [`preprocess`] into a
//! [`model::Classifier`], [`postprocess`] turns the logits into a ranked
//! [`Classification`], and a [`publish::Publisher`] sends it over MQTT. The
//! three traits are the seams: tests drive each stage alone with files,
//! small models and a real broker, and [`daemon::run`] wires them together.
//!
//! Where things live:
//! - [`config`]: the TOML file, its validation (unknown keys rejected with file,
//!   line and key) and resolution (paths relative to the config file, model
//!   manifest defaults, then config overrides).
//! - [`frame`]: [`Frame`], the one type every source produces: pixels in a
//!   declared [`frame::PixelFormat`], a sequence number and a capture time.
//! - [`capture`]: the `FrameSource` trait and its implementations: file and
//!   directory replay, V4L2 cameras (nokhwa, behind the `camera` feature),
//!   MJPEG pipes from a child program, HTTP snapshots; a supervisor that
//!   reopens live sources with backoff, and frame health (stale, frozen,
//!   dark).
//! - [`preprocess`]: decode, centre crop, resize with the model's filter and
//!   normalize, written straight into the model's NCHW input buffer.
//! - [`model`]: the `Classifier` trait, the ONNX model manifest, labels, and
//!   the tract implementation. lookout reads the ONNX file itself
//!   (`onnx.rs`: large tensors stay in the file until needed) and replaces
//!   what tract runs slowly by ops of its own before tract parses the
//!   graph: quantized linear layers (`qlinear.rs`, int8 kernels in
//!   `qgemm/`) and ViT self-attention blocks (`attention/`). Passes over
//!   tract's optimized model (`passes/`: constant folding past tract's
//!   budget, a fast DynamicQuantizeLinear) help where tract's int8 path
//!   still runs. Every tract type stays inside `model/`.
//! - [`postprocess`]: softmax and top-k.
//! - [`publish`]: the `Publisher` trait and the MQTT implementation (rumqttc on
//!   its own thread; it owns reconnection and backoff), the SQLite outbox that
//!   keeps every result until the broker acknowledged it, Home Assistant
//!   discovery and diagnostics.
//! - [`daemon`]: the loop. Capture runs on its own thread and hands over the
//!   newest frame through a one-slot queue, so a slow model or a dead broker
//!   never stalls the camera; inference runs on the caller's thread.
//! - [`shutdown`]: a cloneable trigger that signals, tests and the daemon use
//!   to stop everything.
//! - [`custom`]: custom classes taught from a few pictures: the model's
//!   embedding output compared by cosine similarity to each class's mean,
//!   `unknown` far from all; the examples on disk with the view's JPEG (a
//!   model change re-embeds them); `lookout eval`'s metrics.
//! - [`triggers`]: label groups, thresholds, `unknown`, temporal smoothing
//!   and the publish policy (every result, or on change plus a heartbeat).
//! - [`thermal`]: board temperature and throttle flags; the daemon stretches
//!   its interval while the board is hot.
//! - [`systemd`]: readiness, status and stopping notifications, and a
//!   watchdog fed only while frames and results keep coming.
//!
//! Errors are `thiserror` enums per module; only `main.rs` turns them into
//! messages and exit codes.

pub mod capture;
pub mod command;
pub mod config;
pub mod custom;
pub mod daemon;
pub mod frame;
pub mod model;
pub mod postprocess;
pub mod preprocess;
pub mod publish;
pub mod secret;
pub mod shutdown;
pub mod snapshot;
pub mod stats;
pub mod systemd;
pub mod thermal;
pub mod triggers;

pub use frame::Frame;
pub use postprocess::Classification;
