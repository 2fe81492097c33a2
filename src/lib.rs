//! lookout: an edge-camera classification daemon.
//!
//! A frame goes from a [`capture::FrameSource`] through [`preprocess`] into a
//! [`model::Classifier`], [`postprocess`] turns the logits into a ranked
//! [`Classification`], and a [`publish::Publisher`] sends it over MQTT. The
//! three traits are the seams: tests drive each stage alone with files,
//! small models and a real broker, and [`daemon::run`] wires them together.
//! docs/architecture.md is the tour; this is the map.
//!
//! The stages:
//! - [`frame`]: [`Frame`], the one type every source produces: pixels in a
//!   declared [`frame::PixelFormat`], a sequence number and a capture time.
//! - [`capture`]: the `FrameSource` trait and its implementations: file and
//!   directory replay, V4L2 cameras (nokhwa, behind the `camera` feature),
//!   MJPEG pipes from a child program, HTTP snapshots; a supervisor that
//!   reopens live sources with backoff; frame health (stale, frozen, dark);
//!   `SourceConfig`.
//! - [`preprocess`]: decode, region of interest, centre crop, resize with
//!   the model's filter and normalize, written straight into the model's
//!   NCHW input buffer.
//! - [`model`]: the `Classifier` trait, `ModelConfig`, the ONNX manifest,
//!   labels, `lookout model install`, and the tract implementation. lookout
//!   reads the ONNX file itself (`onnx.rs`: large tensors stay in the file
//!   until needed) and replaces what tract runs slowly by ops of its own
//!   before tract parses the graph: quantized linear layers (`qlinear.rs`,
//!   int8 kernels in `qgemm/`), ViT self-attention blocks (`attention/`)
//!   and patch embeddings (`patches.rs`), which split their work over spinning helper threads (`workers.rs`).
//!   Passes over tract's optimized model (`passes/`) help where tract's int8
//!   path still runs.
//! - [`postprocess`]: softmax, top-k and [`Classification`], the result.
//! - [`triggers`]: label groups, thresholds, `unknown`, temporal smoothing
//!   and the publish policy (every result, or on change plus a heartbeat).
//! - [`custom`]: classes taught from a few pictures: the model's embedding
//!   compared by cosine similarity to each class's mean, `unknown` far from
//!   all; the examples on disk with the picture (a model change re-embeds
//!   them); `lookout eval`'s metrics.
//! - [`snapshot`]: the picture a view's model saw, as a JPEG; the ring of the
//!   last ones on disk; `lookout snapshot`'s aiming picture.
//! - [`publish`]: the `Publisher` trait and the MQTT implementation (rumqttc
//!   on its own thread; it owns reconnection and backoff), the SQLite outbox
//!   that keeps every result until the broker acknowledged it, the topics,
//!   Home Assistant discovery, diagnostics, `MqttConfig`.
//!
//! Around them:
//! - [`daemon`]: the loop. Sources capture on their own threads and hand
//!   over their newest frame through one-frame slots; views (regions of a
//!   source, each with its interval and triggers) share the one classifier,
//!   served earliest-due first on the caller's thread; commands from the
//!   inbox are applied between classifications and kept in the state dir.
//! - [`command`]: the commands MQTT may send, checked, their replies, and the
//!   inbox that carries them to the loop.
//! - [`config`]: the TOML file (unknown keys rejected with file, line and
//!   key), resolved into each stage's own config type; nothing imports it
//!   but `main`.
//! - [`secret`]: passwords from files, the environment or systemd
//!   credentials, `${credential:..}` in commands, redaction for logs.
//! - [`clock`]: whether the wall clock was synchronised when a frame was
//!   taken, the boot id and the time since boot each result carries, and
//!   the correction of stored results once it is.
//! - [`stats`]: the counters the loop keeps and diagnostics report.
//! - [`thermal`]: board temperature and throttle flags; the loop stretches
//!   its intervals while the board is hot.
//! - [`shutdown`]: the stop trigger and the bell the loop sleeps on.
//! - [`systemd`]: readiness, status, stopping, and the watchdog the loop
//!   feeds on every wake-up.
//!
//! Errors are `thiserror` enums per module; only `main.rs` turns them into
//! messages and exit codes.

pub mod capture;
pub mod clock;
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
