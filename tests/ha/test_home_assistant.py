"""lookout against a real Home Assistant (issue #16): the devices and
entities it discovers, that they keep their states, follow what lookout
publishes, report camera problems, go unavailable and come back, and that
a replayed backlog does not rewrite their history.

One Mosquitto and one Home Assistant serve every test; each class runs one
lookout config, one after another, under a device id of its own. Run by
tests/ha/run.sh (from tools/test.sh) with the Home Assistant venv's Python:

    target/ha-venv/bin/python -m unittest -v tests/ha/test_home_assistant.py

Environment: LOOKOUT_BIN (default target/debug/lookout); LOOKOUT_HA_HEARTBEAT
and LOOKOUT_HA_WINDOW, the steady-scene test's heartbeat and observation
window in seconds (default 4 and 60); LOOKOUT_HA_KEEP=1 keeps the work
folder (logs of Home Assistant, Mosquitto and lookout) and prints its path.
"""

import json
import math
import os
import shutil
import sys
import tempfile
import time
import unittest
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    HERE,
    ROOT,
    Broker,
    HomeAssistant,
    Lookout,
    Observer,
    Proxy,
    Scene,
    black_jpeg,
    wait_until,
)

# ---- what lookout should look like to Home Assistant (edit here) -------
# {d} device id, {s} source, {v} view, {g} label group. Topic prefix "lookout".

TOPICS = {
    "availability": "lookout/{d}/availability",
    "command": "lookout/{d}/command",
    "reply": "lookout/{d}/reply",
    "result": "lookout/{d}/{v}/result",
    "state": "lookout/{d}/{v}/state",
    "health": "lookout/{d}/{v}/health",
    "control": "lookout/{d}/{v}/control",
    "snapshot": "lookout/{d}/{v}/snapshot",
}
# Device registry identifiers; a source's device hangs off the daemon's.
DAEMON_DEVICE = "lookout_{d}"
SOURCE_DEVICE = "lookout_{d}_{s}"
# The device name Home Assistant shows ([device] name unset).
DEVICE_NAME = "lookout {d}"
SOURCE_DEVICE_NAME = "lookout {d} {s}"
# One camera: its entities are on the daemon's device, no device of its own.
ONE_SOURCE_ON_DAEMON_DEVICE = True


@dataclass(frozen=True)
class Spec:
    """One entity as Home Assistant should show it."""

    # "daemon", "source", "view"; "group" (one per label group), "triggers"
    # (only with triggers), "snapshot" (only views with snapshots).
    scope: str
    unique_id: str
    domain: str  # its platform in Home Assistant (sensor, binary_sensor, ...)
    device_class: str | None
    unit: str | None
    category: str | None  # entity_category
    valid: str  # a key of VALID: the states that are right once lookout runs
    # For entities fed by the view's state topic: the state Home Assistant
    # should show for a state payload `p` (and the entity's group `g`).
    value: Callable[[dict, str | None], object] | None = None
    steady: bool = True  # keeps its state while the scene does not change


ENTITIES = [
    Spec("daemon", "lookout_{d}_latency", "sensor", "duration", "ms", "diagnostic", "number", steady=False),
    # Counts results in flight too: 0 and 1 alternate in a steady scene.
    Spec("daemon", "lookout_{d}_outbox", "sensor", None, "results", "diagnostic", "count", steady=False),
    # A board without a thermal zone (this machine) has no temperature.
    Spec("daemon", "lookout_{d}_temperature", "sensor", "temperature", "°C", "diagnostic", "number_or_unknown"),
    # Unknown where the board has no throttle flags (this machine).
    Spec("daemon", "lookout_{d}_throttled", "binary_sensor", "problem", None, "diagnostic", "off_or_unknown"),
    Spec("daemon", "lookout_{d}_mqtt_error", "sensor", None, None, "diagnostic", "any"),
    Spec("source", "lookout_{d}_{s}_health", "sensor", "enum", None, "diagnostic", "health"),
    Spec("source", "lookout_{d}_{s}_camera", "binary_sensor", "problem", None, "diagnostic", "off"),
    Spec("view", "lookout_{d}_{v}_label", "sensor", None, None, None, "label", lambda p, g: p["label"]),
    Spec(
        "view", "lookout_{d}_{v}_confidence", "sensor", None, "%", None, "percent",
        lambda p, g: round(p["score"] * 100, 1),
    ),
    Spec("view", "lookout_{d}_{v}_classify", "button", None, None, None, "any"),
    Spec("view", "lookout_{d}_{v}_running", "switch", None, None, "config", "on"),
    Spec("view", "lookout_{d}_{v}_interval", "number", "duration", "s", "config", "number"),
    Spec("snapshot", "lookout_{d}_{v}_snapshot", "image", None, None, None, "timestamp"),
    Spec(
        "triggers", "lookout_{d}_{v}_state", "sensor", "enum", None, None, "trigger_state",
        lambda p, g: p["trigger"]["state"],
    ),
    Spec("triggers", "lookout_{d}_{v}_threshold", "number", None, None, "config", "number"),
    Spec(
        "group", "lookout_{d}_{v}_group_{g}", "binary_sensor", "occupancy", None, None, "on_off",
        lambda p, g: "on" if p["trigger"]["state"] == g else "off",
    ),
]
# The entities the tests act on or watch by name.
LABEL = "lookout_{d}_{v}_label"
CAMERA_PROBLEM = "lookout_{d}_{s}_camera"
CAMERA_HEALTH = "lookout_{d}_{s}_health"
CLASSIFY = "lookout_{d}_{v}_classify"
PAUSE_SWITCH = "lookout_{d}_{v}_running"
INTERVAL = "lookout_{d}_{v}_interval"
GROUP = "lookout_{d}_{v}_group_{g}"
# Where a discovery config for device `d` (and its sources) is published.
DISCOVERY = "homeassistant/device/{d}{suffix}/config"
# Control payload keys (P/D/V/control).
PAUSED, CONTROL_INTERVAL = "paused", "interval"


LABELS = (ROOT / "models/digits/labels.txt").read_text().split()
GROUPS = {"low": LABELS[:5], "high": LABELS[5:]}
HEALTH = {"ok", "stale", "frozen", "dark"}


def _number(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


VALID = {
    "any": lambda s: True,
    "number": _number,
    "number_or_unknown": lambda s: s == "unknown" or _number(s),
    "count": lambda s: s.isdigit(),
    "off": lambda s: s == "off",
    "off_or_unknown": lambda s: s in ("off", "unknown"),
    "on": lambda s: s == "on",
    "on_off": lambda s: s in ("on", "off"),
    "health": lambda s: s in HEALTH,
    "label": lambda s: s in LABELS,
    "percent": lambda s: _number(s) and 0 <= float(s) <= 100,
    "trigger_state": lambda s: s in LABELS or s in GROUPS or s == "unknown",
    "timestamp": lambda s: _is_timestamp(s),
}


def _is_timestamp(s: str) -> bool:
    try:
        datetime.fromisoformat(s)
        return True
    except ValueError:
        return False


# ---- timing ---------------------------------------------------------------

HEARTBEAT = float(os.environ.get("LOOKOUT_HA_HEARTBEAT", "4"))
WINDOW = float(os.environ.get("LOOKOUT_HA_WINDOW", "60"))
# What MQTT and Home Assistant add to a classification period on this
# shared 2-core machine (measured well under 1 s; generous for CI).
SLACK = 2.0

SAMPLES = ROOT / "models/digits/samples"


def sample(digit: int) -> Path:
    return next(SAMPLES.glob(f"{digit}-*.jpg"))


# ---- configs --------------------------------------------------------------


def config(d: str, port: int, source: str, interval: float = 1.0, heartbeat: float = HEARTBEAT) -> str:
    """A legacy single-source config for the digits model (device `d`);
    `source` is the [source] table's body."""
    groups = "".join(
        f'[[triggers.group]]\nname = "{g}"\nlabels = {json.dumps(labels)}\n' for g, labels in GROUPS.items()
    )
    return (
        f'[device]\nid = "{d}"\nstate_dir = "state"\n\n[source]\n{source}\n'
        f'[model]\npath = "{ROOT / "models/digits/digits-int8.onnx"}"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nreconnect_min = 0.2\nreconnect_max = 1.0\n'
        "diagnostics_interval = 5.0\n\n"
        f"[schedule]\ninterval = {interval}\n\n"
        # A static JPEG repeats its bytes exactly, which a real camera's
        # noise never does: frozen-frame detection would call it frozen.
        "[health]\nfrozen_frames = 0\nstale_after = 2.0\n\n"
        f'[triggers]\nenabled = true\npublish = "change"\nheartbeat = {heartbeat}\n{groups}'
    )


def files_source(frames: Path) -> str:
    return f'kind = "files"\npath = "{frames}"\nloop = true\n'


def frames_dir(parent: Path, digits: list[int]) -> Path:
    d = parent / "frames"
    d.mkdir(parents=True)
    for i, digit in enumerate(digits):
        shutil.copy(sample(digit), d / f"{i:03}.jpg")
    return d


# ---- the shared services --------------------------------------------------

WORK: Path
BROKER: Broker
HA: HomeAssistant
OBSERVER: Observer


def setUpModule():
    global WORK, BROKER, HA, OBSERVER
    # Cleanups run in reverse, also when set-up fails half way.
    WORK = Path(tempfile.mkdtemp(prefix="lookout-ha-"))
    unittest.addModuleCleanup(_remove_work)
    BROKER = Broker(WORK)
    unittest.addModuleCleanup(BROKER.stop)
    BROKER.start()
    OBSERVER = Observer(BROKER.port, ["lookout/#", "homeassistant/#"])
    unittest.addModuleCleanup(OBSERVER.close)
    HA = HomeAssistant(WORK, BROKER.port, automations=HERE / "automation.yaml")
    unittest.addModuleCleanup(HA.stop)
    t0 = time.monotonic()
    HA.start()
    HA.onboard()
    HA.add_mqtt()
    print(
        f"\nHome Assistant up in {HA.started_in[0]:.1f} s, onboarded with MQTT in {time.monotonic() - t0:.1f} s",
        file=sys.stderr,
    )


def _remove_work():
    if os.environ.get("LOOKOUT_HA_KEEP"):
        print(f"work folder kept: {WORK}", file=sys.stderr)
    else:
        shutil.rmtree(WORK, ignore_errors=True)


# ---- helpers over the table -----------------------------------------------


@dataclass
class Expected:
    spec: Spec
    unique_id: str
    device: str  # the identifier of the device it belongs to
    device_name: str
    group: str | None = None


def expected(d: str, sources: dict[str, list[str]], snapshots=(), triggers=True) -> list[Expected]:
    """Every entity lookout `d` with `sources` ({source: [views]}) should have."""
    out = []
    for spec in ENTITIES:
        if spec.scope == "daemon":
            out.append(Expected(spec, spec.unique_id.format(d=d), DAEMON_DEVICE.format(d=d), DEVICE_NAME.format(d=d)))
            continue
        for s, views in sources.items():
            dev = (SOURCE_DEVICE.format(d=d, s=s), SOURCE_DEVICE_NAME.format(d=d, s=s))
            if ONE_SOURCE_ON_DAEMON_DEVICE and len(sources) == 1:
                dev = (DAEMON_DEVICE.format(d=d), DEVICE_NAME.format(d=d))
            if spec.scope == "source":
                out.append(Expected(spec, spec.unique_id.format(d=d, s=s), *dev))
                continue
            for v in views:
                if spec.scope == "group" and triggers:
                    out += [Expected(spec, spec.unique_id.format(d=d, v=v, g=g), *dev, g) for g in GROUPS]
                elif (
                    spec.scope == "view"
                    or (spec.scope == "snapshot" and v in snapshots)
                    or (spec.scope == "triggers" and triggers)
                ):
                    out.append(Expected(spec, spec.unique_id.format(d=d, v=v), *dev))
    return out


def registry(ha: HomeAssistant) -> dict[str, dict]:
    """Home Assistant's entity registry entries of MQTT entities by unique_id."""
    return {e["unique_id"]: e for e in ha.entities() if e["platform"] == "mqtt"}


def entity_id(ha: HomeAssistant, unique_id: str) -> str:
    e = registry(ha).get(unique_id)
    assert e, f"Home Assistant has no entity with unique_id {unique_id}"
    return e["entity_id"]


def ids_of(ha: HomeAssistant, want: list[Expected]) -> dict[str, str]:
    """unique_id -> entity_id of those Home Assistant has."""
    reg = registry(ha)
    return {x.unique_id: reg[x.unique_id]["entity_id"] for x in want if x.unique_id in reg}


def problems(ha: HomeAssistant, want: list[Expected], d: str) -> list[str]:
    """Every way Home Assistant's devices, entities and states differ from
    `want`; empty when all is right."""
    out = []
    devices = {i[1]: dev for dev in ha.devices() for i in dev["identifiers"] if i[0] == "mqtt"}
    daemon = devices.get(DAEMON_DEVICE.format(d=d))
    if daemon is None:
        out.append(f"no daemon device {DAEMON_DEVICE.format(d=d)} (devices: {sorted(devices)})")
    for ident, name in sorted({(x.device, x.device_name) for x in want}):
        dev = devices.get(ident)
        if dev is None:
            out.append(f"no device {ident}")
            continue
        if dev["name"] != name:
            out.append(f"device {ident} is named {dev['name']!r}, not {name!r}")
        if dev is not daemon and daemon and dev["via_device_id"] != daemon["id"]:
            out.append(f"device {ident}: via_device is {dev['via_device_id']}, not the daemon's device")
    reg = registry(ha)
    states = ha.states()
    extra = {u for u in reg if u.startswith(f"lookout_{d}_")} - {x.unique_id for x in want}
    if extra:
        out.append(f"entities the table does not know: {sorted(extra)}")
    for x in want:
        e = reg.get(x.unique_id)
        if e is None:
            out.append(f"{x.unique_id}: missing")
            continue
        eid, s = e["entity_id"], x.spec
        dev = next((i for i, v in devices.items() if v["id"] == e["device_id"]), None)
        if dev != x.device:
            out.append(f"{eid}: on device {dev}, not {x.device}")
        if eid.split(".")[0] != s.domain:
            out.append(f"{eid}: not a {s.domain}")
        if e["entity_category"] != s.category:
            out.append(f"{eid}: entity_category {e['entity_category']!r}, not {s.category!r}")
        st = states.get(eid)
        if st is None:
            out.append(f"{eid}: no state")
            continue
        a = st["attributes"]
        if a.get("device_class") != s.device_class:
            out.append(f"{eid}: device_class {a.get('device_class')!r}, not {s.device_class!r}")
        if a.get("unit_of_measurement") != s.unit:
            out.append(f"{eid}: unit {a.get('unit_of_measurement')!r}, not {s.unit!r}")
        if not VALID[s.valid](st["state"]):
            out.append(f"{eid}: state {st['state']!r} is not {s.valid}")
        if s.device_class == "enum" and st["state"] not in a.get("options", []):
            out.append(f"{eid}: state {st['state']!r} is not among its options {a.get('options')}")
    return out


def wait_for_entities(ha: HomeAssistant, want: list[Expected], d: str, lookout: Lookout, timeout=60.0) -> list[str]:
    """Waits until Home Assistant shows every entity of `want` right; what
    is still wrong after `timeout` (empty when all is right)."""
    left = []

    def done():
        lookout.check_running()
        left[:] = problems(ha, want, d)
        return not left

    try:
        wait_until(done, timeout, "entities", 1.0)
    except AssertionError:
        pass
    return left


def wait_for_state(ha: HomeAssistant, unique_id: str, lookout: Lookout, timeout=60.0) -> str:
    """Waits until the entity exists and has a state; its entity id."""

    def check():
        lookout.check_running()
        e = registry(ha).get(unique_id)
        st = e and ha.state(e["entity_id"])
        return st and st["state"] not in ("unavailable", "unknown") and e["entity_id"]

    return wait_until(check, timeout, f"a state of {unique_id}", 0.5)


def lookout_log_records(ha: HomeAssistant, since: int, allowed=()) -> list[str]:
    """Home Assistant's warnings and errors since `since` that concern
    lookout: naming it (entity ids, topics, unique ids) or coming from the
    MQTT integration, except those containing one of `allowed`."""
    return [
        str(r)
        for r in ha.log_records(since)
        if r.level not in ("DEBUG", "INFO")
        and ("lookout" in r.text.lower() or "mqtt" in r.logger)
        and not any(a in r.text for a in allowed)
    ]


def state_changes(ha: HomeAssistant, eid: str, since: float) -> list[tuple[str, str, float]]:
    """(old, new, when) of every change of the state itself (attribute-only
    updates left out)."""
    out = []
    for c in ha.changes(eid, since):
        old, new = ((c[k] or {}).get("state") for k in ("old_state", "new_state"))
        if old != new:
            out.append((old, new, c["at"]))
    return out


def expire_after(d: str, s: str) -> dict[str, float]:
    """unique_id -> expire_after of the components lookout `d` announced
    (its daemon device and source `s`)."""
    out = {}
    for suffix in ("", f"_{s}"):
        for m in OBSERVER.on(DISCOVERY.format(d=d, suffix=suffix)):
            for c in ((m.json() or {}).get("cmps") or {}).values():
                if c.get("expire_after") is not None:
                    out[c.get("unique_id")] = c["expire_after"]
    return out


def forget(d: str):
    """Removes lookout `d` from Home Assistant: an empty retained discovery
    config removes a device."""
    for topic in OBSERVER.topics(f"homeassistant/device/{d}"):
        OBSERVER.publish(topic, b"", retain=True)


def runs(seq: list) -> list:
    """`seq` with repeats in a row collapsed."""
    return [x for i, x in enumerate(seq) if i == 0 or seq[i - 1] != x]


def same(got: str, want) -> bool:
    if isinstance(want, float):
        return _number(got) and abs(float(got) - want) < 0.051
    return got == want


def captured(payload: dict) -> float:
    return datetime.fromisoformat(payload["captured_at"].replace("Z", "+00:00")).timestamp()


class Scenario(unittest.TestCase):
    """One lookout config against the shared Home Assistant, device `d`,
    source `s`, view `v`."""

    d = s = v = ""

    def uid(self, template: str, **more) -> str:
        return template.format(d=self.d, s=self.s, v=self.v, **more)

    def eid(self, template: str, **more) -> str:
        return entity_id(HA, self.uid(template, **more))

    def topic(self, key: str) -> str:
        return TOPICS[key].format(d=self.d, v=self.v)

    def assertEmpty(self, found: list, what: str = ""):
        if found:
            self.fail(f"{what}:\n  " + "\n  ".join(map(str, found)))


# ---- 1: one source, a scene that does not change ----------------------------


class Test1SteadyScene(Scenario):
    """The legacy single-source config (source and view `main`), one digit
    looped, triggers on, publish = "change"."""

    d, s, v = "steady", "main", "main"

    @classmethod
    def setUpClass(cls):
        cls.log_mark = HA.log_mark()
        cls.since = time.time()
        frames = frames_dir(WORK / cls.d, [3])
        cls.lookout = Lookout(WORK / cls.d, "lookout", config(cls.d, BROKER.port, files_source(frames)))
        cls.want = expected(cls.d, {cls.s: [cls.v]})
        cls.addClassCleanup(cls.lookout.stop)
        cls.lookout.start()
        cls.setup_problems = wait_for_entities(HA, cls.want, cls.d, cls.lookout)

    def test_1_devices_entities_and_states(self):
        self.assertEmpty(self.setup_problems, "Home Assistant's view of lookout differs from the table")

    def test_2_states_follow_the_state_topic(self):
        OBSERVER.wait(self.topic("state"), self.since, 10)
        state = OBSERVER.on(self.topic("state"))[-1].json()
        ids = ids_of(HA, self.want)
        wrong = []
        for x in self.want:
            if x.spec.value and x.unique_id in ids:
                want, got = x.spec.value(state, x.group), HA.state(ids[x.unique_id])["state"]
                if not same(got, want):
                    wrong.append(f"{ids[x.unique_id]}: {got!r}, the state topic says {want!r}")
        self.assertEmpty(wrong)

    def test_3_steady_scene_keeps_every_state(self):
        """No entity leaves its state over WINDOW seconds (default 60)
        while lookout repeats the unchanged state every HEARTBEAT seconds
        (default 4: ~15 heartbeats). This stands for the issue's 5 minutes
        at the default 60 s heartbeat because what decides a flap is
        expire_after against the longest gap between state messages: the
        gaps are measured here, expire_after (from the discovery config
        lookout sent) must be at least twice the longest, and test_3b
        checks that expire_after follows the heartbeat where it is long.
        LOOKOUT_HA_HEARTBEAT=60 LOOKOUT_HA_WINDOW=300 runs the real thing."""
        ids = ids_of(HA, self.want)
        self.assertTrue(ids, "no entities to watch")
        start = time.time()
        time.sleep(WINDOW)
        flaps = [
            f"{ids[x.unique_id]}: {old} -> {new} at +{at - start:.1f} s"
            for x in self.want
            if x.unique_id in ids
            for old, new, at in state_changes(HA, ids[x.unique_id], start)
            if x.spec.steady or new in ("unavailable", "unknown")
        ]
        # Attributes that change with every message make every heartbeat a
        # row in Home Assistant's recorder.
        churn = [
            f"{ids[x.unique_id]}: {sorted(k for k in new if new[k] != old.get(k))}"
            for x in self.want
            if x.unique_id in ids and x.spec.steady
            for c in HA.changes(ids[x.unique_id], start)
            if c["old_state"] and c["new_state"] and c["old_state"]["state"] == c["new_state"]["state"]
            for old, new in [(c["old_state"]["attributes"], c["new_state"]["attributes"])]
        ]
        states = OBSERVER.on(self.topic("state"), start)
        gaps = [b.at - a.at for a, b in zip(states, states[1:])] or [WINDOW]
        print(
            f"\n{len(states)} state messages in {WINDOW:.0f} s, gaps {min(gaps):.1f}-{max(gaps):.1f} s "
            f"(heartbeat {HEARTBEAT} s); {len(flaps)} flaps, {len(churn)} attribute-only updates",
            file=sys.stderr,
        )
        self.assertEmpty(flaps, "entities left their state in a steady scene")
        self.assertEmpty(sorted(set(churn)), f"attributes changed in a steady scene ({len(churn)} updates)")
        self.assertGreaterEqual(len(states), WINDOW / HEARTBEAT - 2, "too few heartbeats on the state topic")
        expire = expire_after(self.d, self.s)
        short = [f"{u}: expire_after {e} s" for u, e in expire.items() if e < 2 * max(gaps)]
        self.assertEmpty(short, f"expire_after under twice the longest gap ({max(gaps):.1f} s)")

    def test_3b_expire_after_follows_the_heartbeat(self):
        """The other half of test_3's equivalence: at the default heartbeat
        (60 s) and a long one, the entities fed by the state topic expire
        after at least twice the heartbeat. (Read from the discovery config
        of a lookout started for it; the gaps test_3 measures are the
        heartbeat plus at most a classification period.)"""
        for heartbeat in (60.0, 600.0):
            d = f"{self.d}-{heartbeat:.0f}"
            since = time.time()
            lookout = Lookout(WORK / d, "lookout", config(d, BROKER.port, files_source(frames_dir(WORK / d, [3])),
                                                          heartbeat=heartbeat))
            self.addCleanup(lookout.stop)
            lookout.start()
            OBSERVER.wait(TOPICS["availability"].format(d=d), since, 30, lambda m: m.text() == "online")
            time.sleep(1)
            lookout.stop()
            expire = expire_after(d, self.s)
            self.assertTrue(expire, f"no expire_after in the discovery config of {d}")
            short = [f"{u}: expire_after {e} s" for u, e in expire.items() if e < 2 * heartbeat]
            self.assertEmpty(short, f"heartbeat {heartbeat} s")
            forget(d)

    def test_4_home_assistant_subscribes_at_qos_1(self):
        """Set per component: Home Assistant ignores a device-level qos, and
        QoS 0 loses messages across a broker hiccup."""
        subs = [sub for sub in BROKER.subscriptions() if sub[2].startswith(f"lookout/{self.d}/")]
        self.assertTrue(subs, "Home Assistant subscribed to none of lookout's topics")
        self.assertEmpty([s for s in subs if s[1] < 1], "subscriptions at QoS 0")

    def test_5a_classify_button(self):
        button = self.eid(CLASSIFY)
        # Right after a heartbeat, so the next one cannot pass for the answer.
        beat = OBSERVER.wait(self.topic("result"), time.time(), HEARTBEAT + 5)
        time.sleep(0.3)
        pressed = time.time()
        HA.call("button", "press", entity_id=button)
        got = OBSERVER.wait(self.topic("result"), pressed, HEARTBEAT)
        print(f"\nClassify now: a result {got.at - pressed:.2f} s after the press", file=sys.stderr)
        self.assertLess(got.at, beat.at + HEARTBEAT - 0.5, "no result before the next heartbeat")
        command = OBSERVER.wait(self.topic("command"), pressed, 1)
        self.assertEqual((command.json() or {}).get("cmd"), "classify", command.text())
        reply = OBSERVER.wait(self.topic("reply"), pressed, 5)
        self.assertIs((reply.json() or {}).get("ok"), True, reply.text())

    def test_5b_classification_switch(self):
        switch = self.eid(PAUSE_SWITCH)
        for service, paused, state in (("turn_off", True, "off"), ("turn_on", False, "on")):
            since = time.time()
            HA.call("switch", service, entity_id=switch)
            OBSERVER.wait(self.topic("control"), since, 5, lambda m: (m.json() or {}).get(PAUSED) is paused)
            wait_until(lambda: HA.state(switch)["state"] == state, 5, f"{switch} {state}")

    def test_5c_interval_number(self):
        number = self.eid(INTERVAL)
        for value in (2.0, 1.0):
            since = time.time()
            HA.call("number", "set_value", entity_id=number, value=value)
            OBSERVER.wait(self.topic("control"), since, 5, lambda m: (m.json() or {}).get(CONTROL_INTERVAL) == value)
            wait_until(lambda: same(HA.state(number)["state"], value), 5, f"{number} at {value}")

    def test_6_log_has_nothing_about_lookout(self):
        self.assertEmpty(lookout_log_records(HA, self.log_mark))

    def test_7_home_assistant_restart_brings_them_back(self):
        label = self.eid(LABEL)
        before = HA.state(label)["state"]
        mark = HA.log_mark()
        stopped = time.time()
        HA.restart()
        self.assertEmpty(wait_for_entities(HA, self.want, self.d, self.lookout, 30), "after a Home Assistant restart")
        self.assertEqual(HA.state(label)["state"], before)
        # lookout answered Home Assistant's birth message with discovery: a
        # live (not retained) delivery of its config.
        OBSERVER.wait(DISCOVERY.format(d=self.d, suffix=""), stopped, 10, lambda m: not m.retain)
        self.assertEmpty(lookout_log_records(HA, mark))

    def test_8_sigterm_makes_everything_unavailable(self):
        ids = ids_of(HA, self.want)
        self.assertTrue(ids, "no entities to check")
        stopped = time.time()
        self.assertEqual(self.lookout.stop(), 0)
        OBSERVER.wait(self.topic("availability"), stopped, 5, lambda m: m.text() == "offline")
        left = []

        def all_unavailable():
            states = HA.states()
            left[:] = [f"{e}: {states[e]['state']}" for e in ids.values() if states[e]["state"] != "unavailable"]
            return not left

        try:
            wait_until(all_unavailable, 10, "")
        except AssertionError:
            self.fail(f"still available 10 s after SIGTERM: {left}")


# ---- 2: a camera the test controls ------------------------------------------


class Test2SceneAndTriggers(Scenario):
    """A `command` source filming tests/ha/scene.py: digits come and go,
    the lens is covered, the camera stalls. Device `demo`, the one
    tests/ha/automation.yaml refers to."""

    d, s, v = "demo", "main", "main"
    interval = 1.0
    fps = 10.0
    stale_after = 2.0  # config()'s
    # Long, so that a camera problem published only with the next result
    # (not at once on the health topic) shows as late.
    heartbeat = 30.0

    @classmethod
    def setUpClass(cls):
        cls.log_mark = HA.log_mark()
        work = WORK / cls.d
        work.mkdir()
        cls.black = black_jpeg(work / "black.jpg")
        cls.scene = Scene(work, cls.fps)
        cls.scene.show(sample(7))
        source = f'kind = "command"\ncommand = {json.dumps(cls.scene.command())}\n'
        cls.lookout = Lookout(
            work, "lookout", config(cls.d, BROKER.port, source, interval=cls.interval, heartbeat=cls.heartbeat)
        )
        cls.want = expected(cls.d, {cls.s: [cls.v]})
        cls.addClassCleanup(cls.lookout.stop)
        cls.lookout.start()
        cls.setup_problems = wait_for_entities(HA, cls.want, cls.d, cls.lookout)

    def test_1_entities(self):
        self.assertEmpty(self.setup_problems)

    def test_2_trigger_entities_follow_the_trigger_state(self):
        """Digits of both groups come and go: every trigger entity's history
        in Home Assistant is the sequence of trigger states lookout
        published, and the automation fires once per arrival of `low`."""
        ids = ids_of(HA, self.want)
        start = time.time()
        for digit in (3, 8, 1, 6, 4, 7):
            self.scene.show(sample(digit))
            time.sleep(3 * self.interval)
        time.sleep(SLACK)
        published = [m.json() for m in OBSERVER.on(self.topic("state"), start)]
        trigger_states = runs([p["trigger"]["state"] for p in published])
        self.assertGreaterEqual(len(trigger_states), 6, f"the trigger state did not follow the scene: {trigger_states}")
        watched = [x for x in self.want if x.spec.scope in ("group", "triggers") and x.spec.value]
        self.assertTrue(watched and all(x.unique_id in ids for x in watched), "trigger entities missing")
        wrong = []
        for x in watched:
            eid = ids[x.unique_id]
            changes = state_changes(HA, eid, start)
            before = changes[0][0] if changes else HA.state(eid)["state"]
            want = runs([x.spec.value(p, x.group) for p in published])
            if want and want[0] == before:
                want = want[1:]
            got = [new for _, new, _ in changes]
            if got != want:
                wrong.append(f"{eid}: Home Assistant went {got}, lookout published {want}")
        self.assertEmpty(wrong)

        low = self.eid(GROUP, g="low")
        arrivals = [c for c in state_changes(HA, low, start) if c[:2] == ("off", "on")]
        fired = HA.fired("lookout_low_digit_seen", start)
        # (The sensor's history itself was checked above.)
        self.assertGreaterEqual(len(arrivals), 2, f"{low}: {state_changes(HA, low, start)}")
        self.assertEqual(len(fired), len(arrivals), "the automation of tests/ha/automation.yaml")
        self.assertTrue(all(e["data"]["label"] in GROUPS["low"] for e in fired), fired)

    def test_3_automation_refers_to_the_group_entity(self):
        doc = yaml.safe_load((HERE / "automation.yaml").read_text())
        used = {tr["entity_id"] for a in doc for tr in a["triggers"]}
        self.assertEqual(used, {self.eid(GROUP, g="low")})

    def problem_after(self, change, health: str) -> float:
        """Seconds from `change` to Home Assistant's Camera problem sensor
        turning on; checks that the health sensor then says `health`."""
        camera = self.eid(CAMERA_PROBLEM)
        self.scene.show(sample(2))
        wait_until(lambda: HA.state(camera)["state"] == "off", 15, f"{camera} off with a digit in view")
        # lookout has classified the digit: the problem is all that changes.
        time.sleep(2 * self.interval + 1 / self.fps)
        since = time.time()
        change()
        on = wait_until(
            lambda: next((c for c in state_changes(HA, camera, since) if c[1] == "on"), None),
            30,
            f"{camera} on ({health})",
            0.05,
        )
        took = on[2] - since
        print(f"\n{health}: Camera problem on after {took:.2f} s", file=sys.stderr)
        OBSERVER.wait(self.topic("health"), since, 1, lambda m: m.text() == health)
        self.assertEqual(HA.state(self.eid(CAMERA_HEALTH))["state"], health)
        return took

    def test_4_a_covered_lens_is_a_problem_within_one_period(self):
        took = self.problem_after(lambda: self.scene.show(self.black), "dark")
        self.assertLess(took, self.interval + 1 / self.fps + SLACK)

    def test_5_a_stalled_camera_is_a_problem(self):
        took = self.problem_after(self.scene.show_nothing, "stale")
        self.assertLess(took, self.stale_after + self.interval + SLACK)

    def test_6_log_has_nothing_about_lookout(self):
        self.assertEmpty(lookout_log_records(HA, self.log_mark))


# ---- 3: a broker outage and the replayed backlog ------------------------------


class Test3Backlog(Scenario):
    """lookout reaches the broker through a proxy; the broker stops for
    OUTAGE seconds while lookout keeps classifying two alternating digits
    (so every result changes the label). lookout comes back only after
    Home Assistant has, so Home Assistant sees all lookout publishes then."""

    d, s, v = "backlog", "main", "main"
    interval = 0.5
    outage = 20.0

    def test_replayed_results_stay_out_of_the_history(self):
        log_mark = HA.log_mark()
        frames = frames_dir(WORK / self.d, [3, 7])
        proxy = Proxy(BROKER.port)
        self.addCleanup(proxy.cut)
        text = config(self.d, proxy.port, files_source(frames), interval=self.interval)
        lookout = Lookout(WORK / self.d, "lookout", text.replace('publish = "change"', 'publish = "every"'))
        self.addCleanup(lookout.stop)
        want = expected(self.d, {self.s: [self.v]})
        lookout.start()
        label = wait_for_state(HA, self.uid(LABEL), lookout)
        ids = ids_of(HA, want)
        watched = [ids[x.unique_id] for x in want if x.spec.value and x.unique_id in ids]
        time.sleep(3)

        BROKER.stop()
        proxy.cut()
        time.sleep(self.outage)
        restarted = time.time()
        BROKER.start()
        # Home Assistant retries every 10 s, then subscribes again.
        wait_until(
            lambda: any(f == self.topic("state") for _, _, f in BROKER.subscriptions(restarted)),
            40,
            "Home Assistant subscribed again",
            0.5,
        )
        wait_until(OBSERVER.connected.is_set, 10, "the observer back on the broker")
        back = time.time()
        proxy.restore()
        time.sleep(8)

        replayed = [m.json() for m in OBSERVER.on(self.topic("result"), back) if (m.json() or {}).get("replayed")]
        states = [m.json() for m in OBSERVER.on(self.topic("state"), back)]
        self.assertGreaterEqual(len(replayed), self.outage / self.interval / 2, "no backlog was replayed")
        self.assertTrue(states, "nothing on the state topic after the outage")
        backlog = max(r["seq"] for r in replayed)
        old = [s for s in states if s["seq"] <= backlog]
        seen = ", ".join(f"{s['seq']} ({captured(s) - back:+.1f} s)" for s in states[:8])
        # How Home Assistant dates a state: when it arrives, whatever the
        # result's captured_at says.
        first = HA.changes(label, back)[0]["new_state"]
        print(
            f"\n{len(replayed)} results replayed on the result topic (up to seq {backlog}); on the state topic "
            f"{len(old)} of them and {len(states) - len(old)} later ones, seq (captured, from lookout's return): "
            f"{seen}...; Home Assistant's first label change after the return: last_changed "
            f"{datetime.fromisoformat(first['last_changed']).timestamp() - back:+.2f} s, last_reported "
            f"{datetime.fromisoformat(first['last_reported']).timestamp() - back:+.2f} s",
            file=sys.stderr,
        )
        self.assertEmpty([s["seq"] for s in states if s.get("replayed")], "replayed results on the state topic")
        self.assertLessEqual(len(old), 1, f"results of the backlog on the state topic: {seen}")
        # The retained state never goes back to an older result.
        seqs = [s["seq"] for s in states]
        self.assertEqual(seqs, sorted(seqs), f"the state topic went back to older results: {seen}")
        for eid in watched:
            changes = [c for c in state_changes(HA, eid, back) if c[1] not in ("unavailable", "unknown")]
            # Each later result may change it, and so may the newest of the
            # backlog.
            self.assertLessEqual(
                len(changes), len(states) - len(old) + 1, f"{eid}: {len(changes)} changes for {len(states)} states"
            )
        # What Home Assistant says about the outage concerns the broker.
        outage = (
            "Error returned from MQTT server: The connection was lost",
            "Disconnected from MQTT server",
            "failed to receive on socket: [Errno 104] Connection reset by peer",
        )
        self.assertEmpty(lookout_log_records(HA, log_mark, outage))


# ---- 4: several sources and views --------------------------------------------


class Test4SeveralSources(Scenario):
    """Two sources, one with a named view that sends snapshots: a device per
    source hanging off the daemon's, entities per view."""

    d = "multi"

    def test_devices_views_and_snapshot(self):
        log_mark = HA.log_mark()
        porch, yard = frames_dir(WORK / self.d / "porch", [3]), frames_dir(WORK / self.d / "yard", [7])
        text = (
            f'[device]\nid = "{self.d}"\nstate_dir = "state"\n\n'
            f"[sources.porch]\n{files_source(porch)}\n[sources.yard]\n{files_source(yard)}\n"
            '[views.door]\nsource = "porch"\nsnapshots = true\n\n[views.yard]\nsource = "yard"\n\n'
            f'[model]\npath = "{ROOT / "models/digits/digits-int8.onnx"}"\n\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {BROKER.port}\ndiagnostics_interval = 5.0\n\n'
            "[schedule]\ninterval = 1.0\n\n[health]\nfrozen_frames = 0\n"
        )
        lookout = Lookout(WORK / self.d, "lookout", text)
        want = expected(self.d, {"porch": ["door"], "yard": ["yard"]}, snapshots={"door"}, triggers=False)
        self.addCleanup(lookout.stop)
        started = time.time()
        lookout.start()
        self.assertEmpty(wait_for_entities(HA, want, self.d, lookout))
        for v, digit in (("door", "three"), ("yard", "seven")):
            self.assertEqual(HA.state(entity_id(HA, LABEL.format(d=self.d, v=v)))["state"], digit)
        snap = OBSERVER.wait(TOPICS["snapshot"].format(d=self.d, v="door"), started, 10)
        self.assertEqual(snap.payload[:2], b"\xff\xd8", "the snapshot is not a JPEG")
        self.assertEmpty(lookout_log_records(HA, log_mark))


if __name__ == "__main__":
    unittest.main(verbosity=2)
