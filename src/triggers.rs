//! From "Egyptian cat 0.41" to "a cat is at the door": label groups,
//! thresholds, temporal smoothing and the publish policy.
//!
//! A frame's probabilities are summed into groups (named sets of classes),
//! the best group or ungrouped class becomes the frame's *instant* decision
//! if it clears its threshold and its margin over the runner-up, and the
//! *state* follows the instant decisions only when they agree (k of the last
//! n), the current state has been held long enough (dwell) and the label was
//! not left too recently (cooldown). Time is passed in, never read, so every
//! rule is tested without sleeping.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The state when no class or group is confident enough.
pub const UNKNOWN: &str = "unknown";

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("`{key}` {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> TriggerError {
    TriggerError::Invalid { key, message: message.into() }
}

// ---- configuration ------------------------------------------------------

/// `[triggers]` as written in the config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggersConfig {
    /// Off by default: results then pass unchanged and every one is published.
    pub enabled: bool,
    /// Ship-with groups; `imagenet` needs a 1000-class ImageNet model.
    pub builtin_groups: BuiltinGroups,
    /// Default enter threshold for every class and group.
    pub threshold: f32,
    /// Per class (label) or group name enter thresholds.
    pub thresholds: BTreeMap<String, f32>,
    /// The current state is kept while its score stays above its threshold
    /// minus this, so a score hovering at the threshold does not flap.
    pub hysteresis: f32,
    /// The winner must lead the runner-up by this much, else `unknown`.
    pub margin: f32,
    /// The state changes when `votes` of the last `window` frames agree.
    pub votes: usize,
    pub window: usize,
    /// Seconds a state is held at least before it may change.
    pub min_dwell: f64,
    /// Seconds after leaving a state before the same state may be entered
    /// again (so a cat walking in and out does not fire ten automations).
    pub cooldown: f64,
    pub publish: PublishPolicy,
    /// With `publish = "change"`: seconds after which the unchanged state is
    /// published again, so consumers can tell "no change" from "dead".
    pub heartbeat: f64,
    #[serde(rename = "group", skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupConfig>,
}

impl Default for TriggersConfig {
    fn default() -> Self {
        TriggersConfig {
            enabled: false,
            builtin_groups: BuiltinGroups::None,
            threshold: 0.5,
            thresholds: BTreeMap::new(),
            hysteresis: 0.0,
            margin: 0.0,
            votes: 1,
            window: 1,
            min_dwell: 0.0,
            cooldown: 0.0,
            publish: PublishPolicy::Every,
            heartbeat: 60.0,
            groups: vec![],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BuiltinGroups {
    None,
    Imagenet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishPolicy {
    /// Every classification.
    Every,
    /// Only when the state changes, plus a heartbeat.
    Change,
}

/// `[[triggers.group]]`: a user-defined group.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    /// Class indices: numbers or inclusive ranges such as `"151-268"`.
    #[serde(default)]
    pub indices: Vec<IndexSpec>,
    /// Labels as in the labels file: the whole line or its first name
    /// (`"tabby"` for `tabby, tabby cat`).
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum IndexSpec {
    One(usize),
    Range(String),
}

impl TriggersConfig {
    /// Checks what can be checked without the model's labels.
    pub fn validate(&self) -> Result<(), TriggerError> {
        let prob = |key: &'static str, v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(invalid(key, format!("is {v}; give a probability between 0 and 1")))
            }
        };
        prob("triggers.threshold", self.threshold)?;
        prob("triggers.hysteresis", self.hysteresis)?;
        prob("triggers.margin", self.margin)?;
        for v in self.thresholds.values() {
            prob("triggers.thresholds", *v)?;
        }
        if self.window == 0 || self.votes == 0 || self.votes > self.window {
            return Err(invalid(
                "triggers.votes",
                format!("is {} of a window of {}; need 1 <= votes <= window", self.votes, self.window),
            ));
        }
        if self.window > 1000 {
            return Err(invalid("triggers.window", format!("is {}; use at most 1000 frames", self.window)));
        }
        for (key, v) in [
            ("triggers.min_dwell", self.min_dwell),
            ("triggers.cooldown", self.cooldown),
            ("triggers.heartbeat", self.heartbeat),
        ] {
            if !(v.is_finite() && (0.0..=1e7).contains(&v)) {
                return Err(invalid(key, format!("is {v}; give seconds between 0 and 10000000")));
            }
        }
        if self.publish == PublishPolicy::Change && self.heartbeat == 0.0 {
            return Err(invalid("triggers.heartbeat", "is 0; give the seconds between repeats of an unchanged state"));
        }
        if !self.enabled && self.publish == PublishPolicy::Change {
            return Err(invalid(
                "triggers.publish",
                "is \"change\" but triggers are off; set `triggers.enabled = true`",
            ));
        }
        for g in &self.groups {
            if g.name.is_empty() || g.name == UNKNOWN {
                return Err(invalid("triggers.group", format!("name {:?} is reserved or empty; pick another", g.name)));
            }
            if g.indices.is_empty() && g.labels.is_empty() {
                return Err(invalid("triggers.group", format!("`{}` has neither `indices` nor `labels`", g.name)));
            }
        }
        Ok(())
    }
}

// ---- groups -------------------------------------------------------------

/// The ImageNet-1k groups (`builtin_groups = "imagenet"`): data beside the
/// labels they index, in the shape of a config's `[[triggers.group]]`.
const IMAGENET_GROUPS: &str = include_str!("../models/imagenet-1k/groups.toml");

fn imagenet_groups() -> Vec<GroupConfig> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        group: Vec<GroupConfig>,
    }
    // Compiled in and checked by the tests: it always parses.
    toml::from_str::<File>(IMAGENET_GROUPS).map(|f| f.group).unwrap_or_default()
}

/// A named set of class indices whose probabilities are summed; an ungrouped
/// class is a group of one named by its label.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub members: Vec<usize>,
}

fn find_label(labels: &[String], name: &str) -> Option<usize> {
    let first = |l: &str| l.split(',').next().unwrap_or(l).trim().to_owned();
    labels.iter().position(|l| l == name).or_else(|| labels.iter().position(|l| first(l) == name))
}

fn parse_range(s: &str) -> Option<(usize, usize)> {
    match s.split_once('-') {
        Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
        None => s.trim().parse().ok().map(|i| (i, i)),
    }
}

/// The groups (built-in, then the config's) followed by one entry per class
/// that belongs to none, so every class counts exactly once.
pub fn resolve_groups(cfg: &TriggersConfig, labels: &[String]) -> Result<Vec<Group>, TriggerError> {
    resolve_named(cfg, labels).map(|(groups, _)| groups)
}

/// [`resolve_groups`] and how many of them are label groups (the rest are
/// the ungrouped classes).
fn resolve_named(cfg: &TriggersConfig, labels: &[String]) -> Result<(Vec<Group>, usize), TriggerError> {
    let n = labels.len();
    let mut groups: Vec<Group> = vec![];
    let builtin = match cfg.builtin_groups {
        BuiltinGroups::Imagenet if n != 1000 => {
            return Err(invalid(
                "triggers.builtin_groups",
                format!("\"imagenet\" needs an ImageNet-1k model (1000 classes); this one has {n}"),
            ));
        }
        BuiltinGroups::Imagenet => imagenet_groups(),
        BuiltinGroups::None => vec![],
    };
    for g in builtin.iter().chain(&cfg.groups) {
        let mut members = vec![];
        for spec in &g.indices {
            let (a, b) = match spec {
                IndexSpec::One(i) => (*i, *i),
                IndexSpec::Range(s) => parse_range(s).ok_or_else(|| {
                    invalid("triggers.group", format!("`{}`: index range {s:?} is not like \"151-268\"", g.name))
                })?,
            };
            if a > b || b >= n {
                return Err(invalid(
                    "triggers.group",
                    format!("`{}`: indices {a}-{b} are outside the model's classes 0-{}", g.name, n - 1),
                ));
            }
            members.extend(a..=b);
        }
        for l in &g.labels {
            let i = find_label(labels, l).ok_or_else(|| {
                invalid("triggers.group", format!("`{}`: label {l:?} is not in the model's labels file", g.name))
            })?;
            members.push(i);
        }
        members.sort_unstable();
        members.dedup();
        // A user group with a built-in's name replaces it.
        groups.retain(|x| x.name != g.name);
        groups.push(Group { name: g.name.clone(), members });
    }
    let mut grouped = vec![false; n];
    for g in &groups {
        for &i in &g.members {
            if std::mem::replace(&mut grouped[i], true) {
                let other = groups.iter().find(|o| o.name != g.name && o.members.contains(&i)).map(|o| &o.name);
                return Err(invalid(
                    "triggers.group",
                    format!(
                        "class {i} ({}) is in both `{}` and `{}`; a class may belong to one group",
                        labels[i],
                        g.name,
                        other.map_or("?", |s| s)
                    ),
                ));
            }
        }
    }
    let named = groups.len();
    for (i, l) in labels.iter().enumerate() {
        if !grouped[i] {
            groups.push(Group { name: l.clone(), members: vec![i] });
        }
    }
    for name in cfg.thresholds.keys() {
        if !groups.iter().any(|g| &g.name == name) {
            let hint = match find_label(labels, name) {
                Some(i) => format!("class {i} is part of a group; set the group's threshold"),
                None => "name a group or a label from the labels file".into(),
            };
            return Err(invalid("triggers.thresholds", format!("{name:?} is neither a group nor a class ({hint})")));
        }
    }
    Ok((groups, named))
}

// ---- the decision -------------------------------------------------------

/// What the trigger stage says about one classification; published with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TriggerState {
    /// The smoothed state: a group, a class label or `unknown`.
    pub state: String,
    /// This frame's summed probability for `state` (the top score when
    /// `unknown`).
    pub score: f32,
    /// This frame's own decision, before smoothing.
    pub instant: String,
    /// True when `state` differs from the previous frame's.
    pub changed: bool,
    /// Whether the publish policy lets this result out.
    #[serde(skip)]
    pub publish: bool,
}

pub struct Triggers {
    cfg: TriggersConfig,
    groups: Vec<Group>,
    /// The first `named` of `groups` are label groups (built-in or from
    /// the config); the rest are ungrouped classes.
    named: usize,
    /// Enter threshold per group, in `groups` order.
    enter: Vec<f32>,
    /// Index into `groups`, `None` = unknown.
    state: Option<usize>,
    since: Option<Instant>,
    window: VecDeque<Option<usize>>,
    /// When each state was last left, for the cooldown.
    left: HashMap<usize, Instant>,
    last_published: Option<Instant>,
}

impl Triggers {
    pub fn new(cfg: &TriggersConfig, labels: &[String]) -> Result<Triggers, TriggerError> {
        cfg.validate()?;
        let (groups, named) = resolve_named(cfg, labels)?;
        let enter = groups.iter().map(|g| cfg.thresholds.get(&g.name).copied().unwrap_or(cfg.threshold)).collect();
        Ok(Triggers {
            cfg: cfg.clone(),
            groups,
            named,
            enter,
            state: None,
            since: None,
            window: VecDeque::new(),
            left: HashMap::new(),
            last_published: None,
        })
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The label groups (built-in or from the config), without the
    /// ungrouped classes.
    pub fn named_groups(&self) -> &[Group] {
        &self.groups[..self.named]
    }

    /// The publish policy and heartbeat (seconds).
    pub fn policy(&self) -> (PublishPolicy, f64) {
        (self.cfg.publish, self.cfg.heartbeat)
    }

    /// The default enter threshold (classes and groups without their own).
    pub fn threshold(&self) -> f32 {
        self.cfg.threshold
    }

    /// Changes the default enter threshold (a command); the smoothing state
    /// is kept, so the current state does not restart.
    pub fn set_threshold(&mut self, t: f32) {
        self.cfg.threshold = t;
        for (g, enter) in self.groups.iter().zip(self.enter.iter_mut()) {
            *enter = self.cfg.thresholds.get(&g.name).copied().unwrap_or(t);
        }
    }

    fn name(&self, g: Option<usize>) -> &str {
        g.map_or(UNKNOWN, |g| &self.groups[g].name)
    }

    /// The frame's decision from its class probabilities.
    fn instant(&self, scores: &[f32]) -> Option<usize> {
        let (mut best, mut second) = (0, None::<usize>);
        for i in 1..scores.len() {
            if scores[i] > scores[best] {
                second = Some(best);
                best = i;
            } else if second.is_none_or(|s| scores[i] > scores[s]) {
                second = Some(i);
            }
        }
        let runner_up = second.map_or(0.0, |s| scores[s]);
        let exit = |g: usize| self.enter[g] - self.cfg.hysteresis;
        if Some(best) == self.state && scores[best] >= exit(best) {
            return Some(best);
        }
        if scores[best] >= self.enter[best] && scores[best] - runner_up >= self.cfg.margin {
            return Some(best);
        }
        // Hysteresis: the current state holds while above its exit threshold.
        self.state.filter(|&s| scores[s] >= exit(s))
    }

    /// Feeds one classification's probabilities (softmax over all classes)
    /// observed at `now`.
    pub fn observe(&mut self, probs: &[f32], now: Instant) -> TriggerState {
        let scores: Vec<f32> =
            self.groups.iter().map(|g| g.members.iter().map(|&i| probs.get(i).copied().unwrap_or(0.0)).sum()).collect();
        let instant = self.instant(&scores);
        self.window.push_back(instant);
        if self.window.len() > self.cfg.window {
            self.window.pop_front();
        }

        let mut votes: Vec<(Option<usize>, usize)> = vec![];
        for v in &self.window {
            match votes.iter_mut().find(|(k, _)| k == v) {
                Some((_, n)) => *n += 1,
                None => votes.push((*v, 1)),
            }
        }
        // Most votes wins; a tie keeps the current state.
        let leader = votes
            .iter()
            .filter(|(_, n)| *n >= self.cfg.votes)
            .max_by_key(|(k, n)| (*n, *k == self.state))
            .map(|(k, _)| *k);

        let secs = Duration::from_secs_f64;
        let previous = self.state;
        if let Some(candidate) = leader.filter(|&c| c != self.state) {
            let dwelt = self.since.is_none_or(|t| now.duration_since(t) >= secs(self.cfg.min_dwell));
            let cooled = candidate
                .and_then(|c| self.left.get(&c))
                .is_none_or(|&t| now.duration_since(t) >= secs(self.cfg.cooldown));
            if dwelt && cooled {
                if let Some(old) = self.state {
                    self.left.insert(old, now);
                }
                self.state = candidate;
                self.since = Some(now);
            }
        }
        if self.since.is_none() {
            self.since = Some(now);
        }
        let changed = self.state != previous;

        let publish = match self.cfg.publish {
            PublishPolicy::Every => true,
            PublishPolicy::Change => {
                changed || self.last_published.is_none_or(|t| now.duration_since(t) >= secs(self.cfg.heartbeat))
            }
        };
        if publish {
            self.last_published = Some(now);
        }
        let top = scores.iter().copied().fold(0.0, f32::max);
        TriggerState {
            state: self.name(self.state).to_owned(),
            score: self.state.map_or(top, |s| scores[s]),
            instant: self.name(instant).to_owned(),
            changed,
            publish,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imagenet_labels() -> Vec<String> {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/models/imagenet-1k/labels.txt");
        std::fs::read_to_string(p).unwrap().lines().map(String::from).collect()
    }

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn imagenet_group_ranges_match_the_labels_file() {
        assert_eq!(imagenet_groups().len(), 5, "models/imagenet-1k/groups.toml parses");
        let l = imagenet_labels();
        let cases = [
            (151, "Chihuahua"),
            (268, "Mexican hairless"),
            (269, "timber wolf, grey wolf, gray wolf, Canis lupus"),
            (280, "grey fox, gray fox, Urocyon cinereoargenteus"),
            (281, "tabby, tabby cat"),
            (285, "Egyptian cat"),
            (286, "cougar, puma, catamount, mountain lion, painter, panther, Felis concolor"),
            (7, "cock"),
            (24, "great grey owl, great gray owl, Strix nebulosa"),
            (80, "black grouse"),
            (100, "black swan, Cygnus atratus"),
            (127, "white stork, Ciconia ciconia"),
            (146, "albatross, mollymawk"),
            (468, "cab, hack, taxi, taxicab"),
            (817, "sports car, sport car"),
            (981, "ballplayer, baseball player"),
        ];
        for (i, name) in cases {
            assert_eq!(l[i], name, "class {i}");
        }
        let cfg = TriggersConfig { enabled: true, builtin_groups: BuiltinGroups::Imagenet, ..Default::default() };
        let g = resolve_groups(&cfg, &l).unwrap();
        let by = |n: &str| g.iter().find(|g| g.name == n).unwrap().members.clone();
        assert_eq!(by("dog").len(), 118);
        assert_eq!(by("cat"), vec![281, 282, 283, 284, 285]);
        assert_eq!(by("bird").len(), 18 + 21 + 20);
        assert_eq!(by("vehicle").len(), 27);
        // Every class counted once: 5 groups plus every ungrouped class.
        let total: usize = g.iter().map(|g| g.members.len()).sum();
        assert_eq!(total, 1000);
        assert_eq!(g.len(), 5 + 1000 - (118 + 5 + 59 + 27 + 3));
    }

    #[test]
    fn group_config_errors_name_the_problem() {
        let l = labels(&["a", "b", "c, see", "d"]);
        let group = |indices: Vec<IndexSpec>, names: &[&str]| TriggersConfig {
            enabled: true,
            groups: vec![GroupConfig { name: "g".into(), indices, labels: labels(names) }],
            ..Default::default()
        };
        let cases: Vec<(TriggersConfig, &str)> = vec![
            (group(vec![IndexSpec::Range("2-9".into())], &[]), "outside the model's classes 0-3"),
            (group(vec![IndexSpec::Range("x".into())], &[]), "is not like"),
            (group(vec![], &["zebra"]), "\"zebra\" is not in the model's labels"),
            (TriggersConfig { builtin_groups: BuiltinGroups::Imagenet, ..Default::default() }, "this one has 4"),
            (
                TriggersConfig { thresholds: [("q".to_string(), 0.5)].into(), ..Default::default() },
                "\"q\" is neither a group nor a class",
            ),
        ];
        for (cfg, want) in cases {
            let e = resolve_groups(&cfg, &l).unwrap_err().to_string();
            assert!(e.contains(want), "want {want:?}, got {e}");
        }
        let mut two = group(vec![IndexSpec::One(0)], &["c"]);
        two.groups.push(GroupConfig { name: "h".into(), indices: vec![IndexSpec::One(2)], labels: vec![] });
        let e = resolve_groups(&two, &l).unwrap_err().to_string();
        assert!(e.contains("class 2 (c, see) is in both"), "{e}");
    }

    #[test]
    fn validation_rejects_impossible_settings() {
        let cases: Vec<(TriggersConfig, &str)> = vec![
            (TriggersConfig { threshold: 1.5, ..Default::default() }, "triggers.threshold"),
            (TriggersConfig { votes: 3, window: 2, ..Default::default() }, "triggers.votes"),
            (TriggersConfig { cooldown: -1.0, ..Default::default() }, "triggers.cooldown"),
            (TriggersConfig { publish: PublishPolicy::Change, ..Default::default() }, "triggers.enabled = true"),
        ];
        for (cfg, want) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(want), "want {want:?}, got {e}");
        }
        assert!(TriggersConfig::default().validate().is_ok());
    }

    #[test]
    fn user_groups_sum_probabilities_by_index_range_and_label() {
        let l = labels(&["tabby, tabby cat", "siamese", "beagle", "car"]);
        let cfg = TriggersConfig {
            enabled: true,
            groups: vec![GroupConfig {
                name: "cat".into(),
                indices: vec![IndexSpec::Range("1-1".into())],
                labels: labels(&["tabby"]),
            }],
            ..Default::default()
        };
        let mut t = Triggers::new(&cfg, &l).unwrap();
        let names: Vec<&str> = t.groups().iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["cat", "beagle", "car"]);
        // No class alone reaches 0.5, the group does.
        let s = t.observe(&[0.3, 0.25, 0.35, 0.1], Instant::now());
        assert_eq!((s.state.as_str(), s.instant.as_str()), ("cat", "cat"));
        assert!((s.score - 0.55).abs() < 1e-6, "{}", s.score);
    }

    /// A frame's class probabilities at a time (seconds from the start).
    type Timed = (f64, [f32; 3]);

    /// Runs a sequence of frames and returns (state, changed, published).
    fn run(cfg: TriggersConfig, frames: &[Timed]) -> Vec<(String, bool, bool)> {
        let mut t = Triggers::new(&TriggersConfig { enabled: true, ..cfg }, &labels(&["a", "b", "c"])).unwrap();
        let t0 = Instant::now();
        frames
            .iter()
            .map(|(s, p)| {
                let r = t.observe(p, t0 + Duration::from_secs_f64(*s));
                (r.state, r.changed, r.publish)
            })
            .collect()
    }

    fn states(cfg: TriggersConfig, frames: &[Timed]) -> Vec<String> {
        run(cfg, frames).into_iter().map(|r| r.0).collect()
    }

    const A: [f32; 3] = [0.8, 0.1, 0.1];
    const B: [f32; 3] = [0.1, 0.8, 0.1];
    const WEAK_A: [f32; 3] = [0.45, 0.3, 0.25];
    const CLOSE: [f32; 3] = [0.5, 0.45, 0.05];

    #[test]
    fn thresholds_and_margin_decide_unknown() {
        let t = |s: f64, p| (s, p);
        let table: Vec<(TriggersConfig, Vec<Timed>, Vec<&str>)> = vec![
            (TriggersConfig::default(), vec![t(0., A), t(1., WEAK_A), t(2., B)], vec!["a", "unknown", "b"]),
            // A per-class threshold above the default.
            (
                TriggersConfig { thresholds: [("b".to_string(), 0.9)].into(), ..Default::default() },
                vec![t(0., B), t(1., A)],
                vec!["unknown", "a"],
            ),
            // Lower threshold, but the margin to the runner-up is too small.
            (
                TriggersConfig { threshold: 0.3, margin: 0.1, ..Default::default() },
                vec![t(0., CLOSE), t(1., WEAK_A)],
                vec!["unknown", "a"],
            ),
            (
                TriggersConfig { threshold: 0.3, margin: 0.02, ..Default::default() },
                vec![t(0., CLOSE), t(1., B)],
                vec!["a", "b"],
            ),
        ];
        for (i, (cfg, frames, want)) in table.into_iter().enumerate() {
            assert_eq!(states(cfg, &frames), want, "case {i}");
        }
    }

    #[test]
    fn smoothing_votes_hysteresis_dwell_and_cooldown() {
        let seq = |ps: &[[f32; 3]]| ps.iter().enumerate().map(|(i, p)| (i as f64, *p)).collect::<Vec<_>>();
        let table: Vec<(&str, TriggersConfig, Vec<Timed>, Vec<&str>)> = vec![
            (
                "2 of 3 votes: one stray frame changes nothing",
                TriggersConfig { votes: 2, window: 3, ..Default::default() },
                seq(&[A, A, B, A, B, B, B]),
                vec!["unknown", "a", "a", "a", "b", "b", "b"],
            ),
            (
                "no hysteresis: a score wobbling at the threshold flaps",
                TriggersConfig::default(),
                seq(&[A, WEAK_A, A, WEAK_A]),
                vec!["a", "unknown", "a", "unknown"],
            ),
            (
                "hysteresis 0.1: a state entered at 0.5 holds down to 0.4",
                TriggersConfig { hysteresis: 0.1, ..Default::default() },
                seq(&[WEAK_A, A, WEAK_A, [0.39, 0.3, 0.31]]),
                vec!["unknown", "a", "a", "unknown"],
            ),
            (
                "min dwell 2 s: b must wait until a was held 2 s",
                TriggersConfig { min_dwell: 2.0, ..Default::default() },
                vec![(0., A), (1., B), (1.5, B), (2.0, B), (3.0, A)],
                vec!["a", "a", "a", "b", "b"],
            ),
            (
                "cooldown 10 s: a is not re-entered within 10 s of leaving it",
                TriggersConfig { cooldown: 10.0, ..Default::default() },
                vec![(0., A), (1., B), (2., A), (10.9, A), (11.0, A)],
                vec!["a", "b", "b", "b", "a"],
            ),
        ];
        for (name, cfg, frames, want) in table {
            assert_eq!(states(cfg, &frames), want, "{name}");
        }
    }

    #[test]
    fn publish_policy_every_or_on_change_with_heartbeat() {
        let frames = [(0., A), (1., A), (2., B), (3., B), (30., B), (61., B), (62., B), (125., B)];
        let every = run(TriggersConfig::default(), &frames);
        assert!(every.iter().all(|r| r.2));
        let change =
            run(TriggersConfig { publish: PublishPolicy::Change, heartbeat: 60.0, ..Default::default() }, &frames);
        let published: Vec<(f64, &str, bool)> =
            frames.iter().zip(&change).filter(|(_, r)| r.2).map(|(f, r)| (f.0, r.0.as_str(), r.1)).collect();
        // The first state, the change, then a heartbeat 60 s after the last
        // publish (2 -> 62 s) and another 60 s later.
        assert_eq!(published, vec![(0., "a", true), (2., "b", true), (62., "b", false), (125., "b", false)]);
    }
}
