"""The real-Home-Assistant harness: a Mosquitto, a Home Assistant and the
built lookout, each a real process on loopback ports, plus an MQTT observer
of our own that sees what lookout publishes.

It runs with the Home Assistant venv's interpreter (tests/ha/run.sh makes
that venv), whose aiohttp talks to Home Assistant's websocket API and whose
paho-mqtt (Home Assistant's own MQTT client) is the observer.
"""

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# hass and the interpreter live in the same venv bin folder.
HASS = Path(sys.executable).with_name("hass")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, every: float = 0.1):
    """Polls `check` until it returns something truthy, which is returned;
    fails naming `what` (a string or a function giving one) otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what() if callable(what) else what}")
        time.sleep(every)


def stop_process(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30) -> int | None:
    """Sends `sig`, waits, kills after `timeout`; the exit code (None if killed)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


# ---- Mosquitto ----------------------------------------------------------


def mosquitto_bin() -> str:
    for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.path.exists(p):
            return p
    raise RuntimeError("mosquitto is not installed: run tools/test.sh, which installs it")


class Broker:
    """A Mosquitto on a free loopback port that logs every SUBSCRIBE, so a
    test can see the QoS Home Assistant asked for."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.dir = workdir / "mosquitto"
        self.dir.mkdir()
        self.log = self.dir / "mosquitto.log"
        self.conf = self.dir / "mosquitto.conf"
        # `user root`: started as root, Mosquitto would switch to its own
        # user and could not write the log here (no effect for other users).
        self.conf.write_text(
            f"user root\nlistener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"log_dest file {self.log}\nlog_type subscribe\n"
        )
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [mosquitto_bin(), "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: _listening(self.port), 10, f"mosquitto listening on {self.port}")

    def stop(self):
        if self.proc:
            stop_process(self.proc, timeout=10)
            self.proc = None

    def subscriptions(self, since: float = 0) -> list[tuple[str, int, str]]:
        """(client id, QoS, topic filter) of every SUBSCRIBE from `since`
        (time.time(), whole seconds) on."""
        subs = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = re.match(r"(\d+): (\S+) (\d) (\S+)$", line)
            if m and int(m[1]) >= int(since):
                subs.append((m[2], int(m[3]), m[4]))
        return subs


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Proxy:
    """A TCP forwarder to the broker for lookout alone, so a test can cut
    lookout's link (refusing connections, as a stopped broker does) and
    decide when it may come back, independently of Home Assistant's."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._server = None
        self.restore()

    def restore(self):
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self):
        """Closes the listener and every forwarded connection."""
        self._server.close()
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    def _accept(self, server):
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# ---- our own MQTT observer ---------------------------------------------


@dataclass
class Message:
    at: float  # time.time() when it arrived
    topic: str
    payload: bytes
    retain: bool

    def text(self) -> str:
        return self.payload.decode(errors="replace")

    def json(self):
        try:
            return json.loads(self.payload)
        except ValueError:
            return None


class Observer:
    """Subscribes (QoS 1) to `filters` on every (re)connect and records all
    it receives."""

    def __init__(self, port: int, filters: list[str]):
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"observer-{free_port()}")
        c.reconnect_delay_set(1, 1)

        def on_connect(client, _userdata, _flags, reason, _props):
            if not reason.is_failure:
                client.subscribe([(f, 1) for f in filters])

        c.on_connect = on_connect
        # Subscribed (one SUBACK for all filters), not merely connected.
        c.on_subscribe = lambda *_: self.connected.set()
        c.on_disconnect = lambda *_: self.connected.clear()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port, keepalive=5)
        c.loop_start()
        self.client = c
        wait_until(self.connected.is_set, 10, "the observer's MQTT connection")

    def _on_message(self, _c, _u, msg):
        with self._lock:
            self.messages.append(Message(time.time(), msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str, since: float = 0.0) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic and m.at >= since]

    def topics(self, prefix: str) -> set[str]:
        with self._lock:
            return {m.topic for m in self.messages if m.topic.startswith(prefix)}

    def wait(self, topic: str, since: float, timeout: float, check=lambda m: True) -> Message:
        """The first message on `topic` from `since` on that passes `check`."""
        return wait_until(
            lambda: next((m for m in self.on(topic, since) if check(m)), None), timeout, f"a message on {topic}"
        )

    def publish(self, topic: str, payload: str | bytes, retain: bool = False):
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


# ---- Home Assistant -----------------------------------------------------


@dataclass
class LogRecord:
    level: str
    logger: str
    text: str  # the message and its traceback, if any

    def __str__(self):
        return f"{self.level} [{self.logger}] {self.text}"


_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) \([^)]*\) \[([^\]]+)\] ")


def parse_log(text: str) -> list[LogRecord]:
    records = []
    for line in text.splitlines():
        m = _RECORD.match(line)
        if m:
            records.append(LogRecord(m[1], m[2], line[m.end() :]))
        elif records:
            records[-1].text += "\n" + line
    return records


class HomeAssistant:
    """`hass -c DIR` on a free loopback port, onboarded headlessly, with an
    MQTT entry for `broker_port`. State changes and fired events are
    recorded from the moment the websocket connects."""

    def __init__(self, workdir: Path, broker_port: int, automations: Path | None = None):
        self.dir = workdir / "homeassistant"
        self.dir.mkdir()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.broker_port = broker_port
        automation = ""
        if automations:
            (self.dir / "automations.yaml").write_text(automations.read_text())
            automation = "automation: !include automations.yaml\n"
        (self.dir / "configuration.yaml").write_text(
            "homeassistant:\n  name: lookout test\n  latitude: 52.5\n  longitude: 13.4\n  elevation: 0\n"
            "  unit_system: metric\n  time_zone: UTC\n  country: DE\n  currency: EUR\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {self.port}\n"
            "api:\nconfig:\nonboarding:\nwebsocket_api:\n" + automation
        )
        self.proc = None
        self.token = None
        self.events: list[dict] = []
        self._events_lock = threading.Lock()
        self._ws = None
        self._old_logs = ""
        self.started_in: list[float] = []

    # -- process

    def start(self, timeout: float = 120):
        t0 = time.monotonic()
        with open(self.dir / "stdout.txt", "ab") as out:
            self.proc = subprocess.Popen([str(HASS), "-c", str(self.dir)], stdout=out, stderr=subprocess.STDOUT)
        wait_until(self._api_up, timeout, lambda: f"Home Assistant's API up; its log:\n{self.log_text()[-3000:]}", 0.5)
        self.started_in.append(time.monotonic() - t0)
        if self.token:
            self._connect_ws()

    def _api_up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"hass exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
        try:
            with urllib.request.urlopen(self.base + "/api/onboarding", timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self):
        if self._ws:
            self._ws.close()
            self._ws = None
        if self.proc:
            stop_process(self.proc, timeout=60)
            self.proc = None
        # A start renames home-assistant.log to .log.1: keep what it said.
        self._old_logs += self._current_log()

    def restart(self):
        self.stop()
        self.start()

    # -- set-up

    def onboard(self):
        client_id = self.base + "/"
        code = self._post(
            "/api/onboarding/users",
            {"client_id": client_id, "name": "Test", "username": "test", "password": "test-password", "language": "en"},
        )["auth_code"]
        self.token = self._post(
            "/auth/token", {"grant_type": "authorization_code", "code": code, "client_id": client_id}, form=True
        )["access_token"]
        self._connect_ws()

    def add_mqtt(self):
        flow = self._post("/api/config/config_entries/flow", {"handler": "mqtt"})
        done = self._post(f"/api/config/config_entries/flow/{flow['flow_id']}", {"broker": "127.0.0.1", "port": self.broker_port})
        assert done.get("type") == "create_entry", f"MQTT entry not created: {done}"
        # The entry loads (and subscribes) a moment after it is created.
        wait_until(
            lambda: any(e["domain"] == "mqtt" and e["state"] == "loaded" for e in self.get("/api/config/config_entries/entry")),
            60,
            "the MQTT entry loaded",
            0.5,
        )

    # -- REST

    def _request(self, method: str, path: str, body=None, form=False):
        data = None
        req = urllib.request.Request(self.base + path, method=method)
        if body is not None:
            data = urllib.parse.urlencode(body).encode() if form else json.dumps(body).encode()
            req.add_header("Content-Type", "application/x-www-form-urlencoded" if form else "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, data=data, timeout=30) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}") from None

    def get(self, path: str):
        return self._request("GET", path)

    def _post(self, path: str, body, form=False):
        return self._request("POST", path, body, form)

    def call(self, domain: str, service: str, **data):
        """A service call, as the UI makes it (POST /api/services/...)."""
        return self._post(f"/api/services/{domain}/{service}", data)

    def states(self) -> dict[str, dict]:
        return {s["entity_id"]: s for s in self.get("/api/states")}

    def state(self, entity_id: str) -> dict | None:
        try:
            return self.get(f"/api/states/{entity_id}")
        except AssertionError as e:
            if ": 404 " in str(e):
                return None
            raise

    # -- websocket

    def _connect_ws(self):
        self._ws = _Websocket(self.base.replace("http", "ws") + "/api/websocket", self.token, self._on_event)

    def _on_event(self, event: dict):
        with self._events_lock:
            self.events.append(event)

    def ws(self, kind: str, **payload):
        return self._ws.command(kind, **payload)

    def devices(self) -> list[dict]:
        return self.ws("config/device_registry/list")

    def entities(self) -> list[dict]:
        return self.ws("config/entity_registry/list")

    def changes(self, entity_id: str, since: float = 0.0) -> list[dict]:
        """state_changed events of `entity_id` (data with old_state and
        new_state, plus `at`: time.time() when we received it)."""
        with self._events_lock:
            return [
                e["data"] | {"at": e["at"]}
                for e in self.events
                if e["event_type"] == "state_changed" and e["data"]["entity_id"] == entity_id and e["at"] >= since
            ]

    def fired(self, event_type: str, since: float = 0.0) -> list[dict]:
        with self._events_lock:
            return [e for e in self.events if e["event_type"] == event_type and e["at"] >= since]

    # -- log

    def _current_log(self) -> str:
        try:
            return (self.dir / "home-assistant.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        """Everything Home Assistant logged since the first start."""
        return self._old_logs + ("" if self.proc is None else self._current_log())

    def log_mark(self) -> int:
        return len(self.log_text())

    def log_records(self, since: int = 0) -> list[LogRecord]:
        return parse_log(self.log_text()[since:])


class _Websocket:
    """Home Assistant's websocket API on a loop thread of its own: commands
    from any thread, events (state_changed and every other) recorded as
    they come."""

    def __init__(self, url: str, token: str, on_event):
        self.on_event = on_event
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.next_id = 1
        self.pending: dict[int, asyncio.Future] = {}
        self._run(self._open(url, token))
        self.command("subscribe_events")

    def _run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _open(self, url, token):
        self.session = aiohttp.ClientSession()
        self.socket = await self.session.ws_connect(url, max_msg_size=0)
        assert (await self.socket.receive_json())["type"] == "auth_required"
        await self.socket.send_json({"type": "auth", "access_token": token})
        reply = await self.socket.receive_json()
        assert reply["type"] == "auth_ok", reply
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self):
        async for msg in self.socket:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            for m in data if isinstance(data, list) else [data]:
                if m["type"] == "event":
                    self.on_event(m["event"] | {"at": time.time()})
                elif m["type"] == "result" and m["id"] in self.pending:
                    self.pending.pop(m["id"]).set_result(m)

    async def _command(self, payload):
        msg_id, self.next_id = self.next_id, self.next_id + 1
        fut = self.loop.create_future()
        self.pending[msg_id] = fut
        await self.socket.send_json({"id": msg_id} | payload)
        return await asyncio.wait_for(fut, 30)

    def command(self, kind: str, **payload):
        reply = self._run(self._command({"type": kind} | payload), 40)
        assert reply["success"], f"{kind}: {reply}"
        return reply["result"]

    def close(self):
        async def shut():
            await self.socket.close()
            await self.session.close()

        try:
            self._run(shut(), 10)
        except Exception:  # noqa: BLE001 - Home Assistant may already be gone
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# ---- lookout ------------------------------------------------------------


def lookout_bin() -> Path:
    return Path(os.environ.get("LOOKOUT_BIN", ROOT / "target/debug/lookout"))


class LookoutExited(Exception):
    pass


class Lookout:
    """`lookout run` on a config written into its own folder."""

    def __init__(self, workdir: Path, name: str, config: str):
        self.dir = workdir / name
        self.dir.mkdir()
        self.config = self.dir / "lookout.toml"
        self.config.write_text(config)
        self.logfile = self.dir / "lookout.log"
        self.proc = None

    def start(self):
        env = os.environ | {"RUST_LOG": "info"}
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                [str(lookout_bin()), "run", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                cwd=self.dir,
            )

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_running(self):
        """Raises LookoutExited (not an AssertionError, which waits take for
        "not yet") when lookout is no longer running."""
        if not self.running():
            code = self.proc.returncode if self.proc else None
            raise LookoutExited(f"lookout exited with {code}:\n{self.log()[-2000:]}")

    def stop(self) -> int | None:
        """SIGTERM, as `systemctl stop` sends it; the exit code."""
        if self.proc is None:
            return None
        code = stop_process(self.proc, timeout=30)
        self.proc = None
        return code


# ---- the scene a `command` source films ---------------------------------


class Scene:
    """A camera the test controls: tests/ha/scene.py writes an MJPEG stream
    of whatever image the control file names, or nothing while it says
    `pause` (a camera that stalls)."""

    def __init__(self, workdir: Path, fps: float):
        self.control = workdir / "scene.txt"
        self.fps = fps
        self.show_nothing()

    def command(self) -> list[str]:
        return [sys.executable, str(HERE / "scene.py"), str(self.control), str(self.fps)]

    def _set(self, text: str):
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.control)

    def show(self, image: Path):
        self._set(str(image))

    def show_nothing(self):
        self._set("pause")


def black_jpeg(path: Path) -> Path:
    """An all-black frame: a covered lens."""
    from PIL import Image

    Image.new("RGB", (128, 96)).save(path, "JPEG")
    return path
