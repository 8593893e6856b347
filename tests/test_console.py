"""The web console in a real browser: headless Chromium (Debian's, driven through its own chromedriver) against
the whole system on a real Mosquitto, one main path per role, and the live stream through a server restart.

Each page is saved as a PNG in ``$WARDLINK_SCREENSHOTS`` (default: a temporary directory); ``make screenshots``
copies them into ``docs/screenshots/``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from paho.mqtt import client as mqtt
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from alerts.routing import StepSpec
from simulators.mqtt_devices.waste import Bag as WasteBag
from simulators.mqtt_devices.waste import ScanPointSim
from tests.conftest import Mosquitto
from tests.test_end_to_end import running, ward_config
from wardlink.config import Config
from wardlink.runner import System
from wardlink.users import DEMO_FILE

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.slow
# Never skipped: `make test` installs Debian's chromium and chromium-driver (the services target).
assert CHROMIUM.exists(), "install chromium: make services"
assert CHROMEDRIVER.exists(), "install chromium-driver: make services"
WAIT_S = 60  # generous: the machine is shared; nothing below asserts on speed


ESCALATE_S = 5.0  # the console tests' first step: long enough to read the countdown, short enough to watch it fire


def quick_escalation(config: Config) -> Config:
    """The ward with a short first escalation step and limit changes picked up within a second."""
    routing = msgspec.structs.replace(config.alerts.delivery.routing, schedules={
        priority: [StepSpec(steps[0].target, ESCALATE_S), *steps[1:]]
        for priority, steps in config.alerts.delivery.routing.schedules.items()})
    alerts = msgspec.structs.replace(config.alerts, settings_poll_s=1.0, delivery=msgspec.structs.replace(
        config.alerts.delivery, routing=routing))
    return msgspec.structs.replace(config, alerts=alerts)


class Background:
    """The whole system (``running(config)``) on its own event loop in a thread, so the test can drive a browser."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.system: System | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="wardlink-system", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            async with running(self.config) as system:
                self.system = system
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def start(self) -> System:
        """Start and wait until the API answers."""
        self._thread.start()
        assert self._ready.wait(60), "the system did not start within 60 s"
        if self._error is not None:
            raise self._error
        assert self.system is not None
        return self.system

    def stop(self) -> None:
        """Stop and wait for every worker to finish."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(40)
        assert not self._thread.is_alive(), "the system did not stop within 40 s"


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the pages' PNGs go."""
    chosen = os.environ.get("WARDLINK_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def ward(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Background, Mosquitto]]:
    """The simulated hospital on a real Mosquitto (one system for the module; the restart test replaces it)."""
    root = tmp_path_factory.mktemp("console")
    broker = Mosquitto(root)
    broker.start()
    system = Background(quick_escalation(ward_config(root / "data", broker.address.url)))
    system.start()
    yield system, broker
    system.stop()  # the restart test swaps a new system into this object
    broker.stop()


@pytest.fixture(scope="module")
def browser(ward: tuple[Background, Mosquitto]) -> Iterator[WebDriver]:
    """Headless Chromium through Debian's chromedriver (given explicitly: selenium never downloads one)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1000", "--lang=en-GB"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.get("about:blank")  # close the console's stream before the system stops
    driver.quit()


def password(config: Config, staff: str) -> str:
    """A demo user's password, as `wardlink run` wrote it."""
    return str(tomllib.loads((config.data_path / DEMO_FILE).read_text(encoding="utf-8"))["passwords"][staff])


def wait(driver: WebDriver, check: Callable[[WebDriver], Any], what: str, within: float = WAIT_S) -> Any:
    """Poll ``check`` until it answers something true (a stale element counts as not yet)."""
    def safe(d: WebDriver) -> Any:
        try:
            return check(d)
        except (StaleElementReferenceException, IndexError):  # redrawn, or not drawn yet
            return False
    try:
        return WebDriverWait(driver, within, poll_frequency=0.5).until(safe, f"waited {within} s for {what}")
    except TimeoutException:
        main = css(driver, "main")
        raise AssertionError(f"waited {within} s for {what}; the page shows: "
                             f"{main[0].text[:600] if main else driver.page_source[:600]!r}") from None


def css(driver: WebDriver, selector: str) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, selector)


def sign_in(driver: WebDriver, system: System, config: Config, staff: str) -> dict[str, Any]:
    """Open the console, sign out whoever was in, sign in as ``staff``; the token stays out of the URL."""
    driver.get(system.api_url + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(system.api_url + "/console/")
    user = wait(driver, lambda d: css(d, "#username"), "the sign-in form")[0]
    user.send_keys(staff)
    css(driver, "#password")[0].send_keys(password(config, staff))
    css(driver, "#sign-in")[0].click()
    wait(driver, lambda d: css(d, "#sign-out") and css(d, "#sign-out")[0].is_displayed(), f"{staff} signed in")
    token = driver.execute_script("return sessionStorage.getItem('wardlink.token')")
    assert token
    assert token not in driver.current_url
    return {"Authorization": f"Bearer {token}"}


def bearer_of(api_url: str, config: Config, staff: str) -> str:
    """A token for ``staff``, signed in like the console does."""
    answer = httpx.post(f"{api_url}/api/v1/auth/token", data={"username": staff, "password": password(config, staff)})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def text(driver: WebDriver, selector: str) -> str:
    """The text of the first match now, read in the page (a live redraw cannot make it stale); "" if none."""
    return str(driver.execute_script("const el = document.querySelector(arguments[0]);"
                                     "return el ? el.innerText : ''", selector))


def click(driver: WebDriver, selector: str) -> None:
    """Click the first match, scrolled to the middle of the window first; again if a redraw replaced it."""
    def once(d: WebDriver) -> bool:
        found = css(d, selector)
        if not found:
            return False
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", found[0])
        found[0].click()
        return True
    wait(driver, once, f"{selector} to click")


def nav(driver: WebDriver) -> list[str]:
    return [a.text for a in css(driver, "#nav a")]


def shoot(driver: WebDriver, folder: Path, name: str) -> None:
    driver.save_screenshot(str(folder / f"{name}.png"))


def flag_some_devices(api_url: str, headers: dict[str, str]) -> None:
    """Give the bedside monitors' model a maintenance plan due in 10 days and a recall, through the API."""
    with httpx.Client(base_url=api_url, timeout=10, headers=headers) as client:
        monitor = client.get("/api/v1/fleet/devices/mon-icu-01").json()
        assert client.put(f"/api/v1/fleet/maintenance/plans/{monitor['model']}/pm",
                          json={"interval_days": 10}).status_code == 200
        assert client.post("/api/v1/fleet/recalls/import", json={"recalls": [
            {"id": "R-CONSOLE", "manufacturer": monitor["manufacturer"], "model": monitor["model"],
             "title": "display may freeze"}]}).status_code == 200


def fleet_flags(api_url: str, headers: dict[str, str]) -> dict[str, set[str]]:
    """Which devices each fleet filter should show, from the fleet routes' own answers."""
    with httpx.Client(base_url=api_url, timeout=10, headers=headers) as client:
        devices = client.get("/api/v1/devices").json()
        health = {h["device"]: h for h in client.get("/api/v1/fleet/health").json()}
        due = client.get("/api/v1/fleet/maintenance/due", params={"within_days": 30}).json()
        firmware = client.get("/api/v1/fleet/firmware").json()
        recalls = client.get("/api/v1/fleet/recalls").json()
    ids = {d["id"] for d in devices}
    return {"all": ids, "offline": {d["id"] for d in devices if d.get("state") != "connected"},
            "battery": {i for i in ids if (health.get(i, {}).get("battery_pct") or 100) < 20},
            "maintenance": ids & {x["device"] for x in due},
            "recall": ids & {a["device"] for r in recalls for a in r["affected"]},
            "firmware": ids & {x for m in firmware for x in m["behind"] + m["unknown"]}}


def shown_devices(driver: WebDriver) -> set[str]:
    """The devices the fleet table shows now."""
    return set(driver.execute_script(
        "return [...document.querySelectorAll('#device-table tr[data-device]')].map((r) => r.dataset.device)"))


def test_the_console_is_served_from_the_package(ward: tuple[Background, Mosquitto]) -> None:
    files = resources.files("api.console").joinpath("static")
    assert {"index.html", "app.js", "style.css"} <= {f.name for f in files.iterdir()}
    system = ward[0].system
    assert system is not None
    with httpx.Client(base_url=system.api_url, timeout=10) as client:
        root = client.get("/")
        assert (root.status_code, root.headers["location"]) == (307, "/console/")
        page = client.get("/console/")
        assert page.status_code == 200
        assert "app.js" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert client.get("/console/views/unit.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/console/../app.py").status_code == 404
        assert client.get("/console/plan.json").status_code == 401, "the floor plan needs a sign-in"


def test_nurse_sees_live_vitals_receives_the_alarm_and_acknowledges_it(
        ward: tuple[Background, Mosquitto], browser: WebDriver, screenshots: Path) -> None:
    system = ward[0].system
    assert system is not None
    headers = sign_in(browser, system, ward[0].config, "n-icu")
    assert nav(browser) == ["Unit", "Alerts", "Alarm load"], "a nurse sees no assignments, assets or devices"
    wait(browser, lambda d: css(d, "#bed-ICU-01"), "the unit's beds")

    def heart_rate_time(d: WebDriver) -> str:
        return str(css(d, '#bed-ICU-01 dd[data-metric="MDC_ECG_HEART_RATE"]')[0].get_attribute("data-ts") or "")

    first = wait(browser, heart_rate_time, "ICU-01's heart rate")
    assert "/min" in css(browser, '#bed-ICU-01 dd[data-metric="MDC_ECG_HEART_RATE"]')[0].text
    wait(browser, lambda d: heart_rate_time(d) not in ("", first), "a newer heart rate without a reload")

    alarm = '#alert-list li[data-bed="ICU-03"][data-type="spo2_low"]'
    # Read in one script: the live list redraws on every transition, so held elements go stale.
    shown = wait(browser, lambda d: d.execute_script(
        "const li = document.querySelector(arguments[0]); if (!li) return null; const b = li.querySelector('.prio');"
        "return {id: li.dataset.alertId, priority: b.dataset.priority, badge: b.textContent}", alarm),
        "the ICU-03 desaturation alarm in the live list", 90)
    assert shown["priority"] == "high"
    assert "***" in shown["badge"], "priority is written, not only coloured"
    assert "High priority" in shown["badge"]
    assert css(browser, '#bed-ICU-03[data-alarm="high"]'), "the bed card shows its alarm"
    shoot(browser, screenshots, "nurse-unit")

    alert_id = shown["id"]
    click(browser, f'#alert-list li[data-alert-id="{alert_id}"] button.ack')
    wait(browser, lambda d: css(d, f'#alert-list li[data-alert-id="{alert_id}"][data-state="acknowledged"]'),
         "the alarm shown acknowledged")
    with httpx.Client(base_url=system.api_url, timeout=10, headers=headers) as client:
        stored = client.get(f"/api/v1/alerts/{alert_id}/log").json()
    assert (stored["alert"]["state"], stored["alert"]["acknowledged_by"]) == ("acknowledged", "n-icu")

    click(browser, '#bed-ICU-03 h3 a')
    wait(browser, lambda d: css(d, '.trend[data-metric="spo2"] polyline.line'), "ICU-03's SpO2 trend")
    wait(browser, lambda d: "spo2_low" in css(d, "#alarm-limits")[0].text, "the bed's alarm limits")
    assert css(browser, '.trend[data-metric="spo2"] line.limit'), "the SpO2 limit is drawn on the trend"
    shoot(browser, screenshots, "nurse-bed")
    click(browser, "#nav-alarm-load")
    wait(browser, lambda d: css(d, "#alarm-load h2, #alarm-load table"), "the alarm-load report")


def test_nurse_changes_a_limit_at_the_bed_and_sees_the_escalation_countdown(
        ward: tuple[Background, Mosquitto], browser: WebDriver, screenshots: Path) -> None:
    system = ward[0].system
    assert system is not None
    sign_in(browser, system, ward[0].config, "n-icu")
    browser.execute_script("location.hash = '#/bed/ICU-01'")
    wait(browser, lambda d: css(d, "#limit-form") and css(d, '#limits-in-force tr[data-rule="hr_high"]'),
         "ICU-01's limits and the form")
    steps_before = int(css(browser, "#live-status")[0].get_attribute("data-steps") or 0)
    Select(css(browser, "#limit-rule")[0]).select_by_visible_text("hr_high")
    for field, value in (("#limit-value", "50"), ("#limit-delay", "0")):  # ICU-01's heart rate is about 80
        css(browser, field)[0].clear()
        css(browser, field)[0].send_keys(value)
    click(browser, "#limit-save")
    wait(browser, lambda d: "above 50" in text(d, '#limits-in-force tr[data-rule="hr_high"]'), "the new limit")
    assert "this bed" in text(browser, '#limits-in-force tr[data-rule="hr_high"]')
    change = text(browser, "#limit-changes tbody tr")
    assert all(part in change for part in ("n-icu (nurse)", "hr_high at bed ICU-01", "limit 50")), change

    # The alarm the new limit raises shows where its escalation is and when it goes further, ticking.
    alarm = '#alert-list li[data-bed="ICU-01"][data-type="hr_high"][data-state="active"]'
    line = wait(browser, lambda d: d.execute_script(
        "const p = document.querySelector(arguments[0] + ' .escalation .countdown');"
        "return p && p.closest('.escalation').textContent", alarm), "the countdown of ICU-01's new alarm", 30)
    assert "With primary nurse n-icu" in line
    assert "escalates to charge nurse c-icu in 0:0" in line, line
    browser.execute_script("document.querySelector(arguments[0]).scrollIntoView({block: 'center'})", alarm)
    shoot(browser, screenshots, "nurse-escalation")
    first = text(browser, f"{alarm} .countdown")
    wait(browser, lambda d: text(d, f"{alarm} .countdown") not in (first, ""), "the countdown ticking", 3)
    assert int(css(browser, "#live-status")[0].get_attribute("data-steps") or 0) > steps_before, \
        "the first step came over the alert stream"
    # The deadline passes: the next step is pushed and the line follows without a reload.
    moved = wait(browser, lambda d: text(d, f'{alarm} .escalation:not([data-step="0"])'), "the next step", 20)
    assert "With charge nurse c-icu" in moved or "With unit team" in moved, moved


def test_charge_nurse_edits_assignments(ward: tuple[Background, Mosquitto], browser: WebDriver,
                                        screenshots: Path) -> None:
    system = ward[0].system
    assert system is not None
    sign_in(browser, system, ward[0].config, "c-icu")
    assert "Assignments" in nav(browser)
    assert "Devices" not in nav(browser)
    click(browser, "#nav-assignments")
    wait(browser, lambda d: "n-icu" in css(d, "#assignment-list")[0].text, "the unit's assignments")
    css(browser, "#assign-staff")[0].send_keys("n-w3")
    click(browser, '#assign-bed option[value=""]')
    css(browser, '#assign-bed')[0].send_keys("ICU-02")
    click(browser, "form.inline button[type=submit]")
    wait(browser, lambda d: any("End n-w3" in b.text for b in css(d, "#assignment-list button.end")),
         "the new assignment listed")
    shoot(browser, screenshots, "charge-assignments")
    [end] = [b for b in css(browser, "#assignment-list button.end") if "End n-w3" in b.text]
    end.click()
    wait(browser, lambda d: not any("End n-w3" in b.text for b in css(d, "#assignment-list button.end")),
         "the assignment ended")


def test_facilities_finds_an_asset_and_sees_the_route(ward: tuple[Background, Mosquitto], browser: WebDriver,
                                                      screenshots: Path) -> None:
    system = ward[0].system
    assert system is not None
    sign_in(browser, system, ward[0].config, "f-facilities")
    assert nav(browser) == ["Alerts", "Assets", "Par & waste"], "facilities see no beds, vitals or devices"
    click(browser, "#nav-assets")
    wait(browser, lambda d: css(d, "#asset-results table"), "the asset table")
    # The demo's tags move through 3 West, but its asset register starts empty: route to a room of the map
    # (the same endpoint and drawing as the route to an asset).
    css(browser, "#route-from")[0].send_keys("A1-RECEPTION")
    css(browser, "#route-to")[0].send_keys("A3-W3-STORE")
    click(browser, "#route-room")
    wait(browser, lambda d: css(d, "#route ol.steps li"), "the route's steps")
    assert css(browser, "#route svg.plan polyline.route-line"), "the route drawn on the floor plan"
    shoot(browser, screenshots, "facilities-route")
    headers = {"Authorization": f"Bearer {bearer_of(system.api_url, ward[0].config, 'f-facilities')}"}
    with httpx.Client(base_url=system.api_url, timeout=10, headers=headers) as client:
        scan_a_heavy_bag_into_storage(ward[0].config, ward[1], client)
        click(browser, "#nav-waste")
        wait(browser, lambda d: css(d, "#par table") and css(d, "#waste table") and css(d, "#reconciliation table"),
             "par levels and the waste dashboard")
        check_waste_dashboard(browser, client)
    shoot(browser, screenshots, "facilities-waste")


HEAVY_BAG = "MW-W3-CONSOLE"
"""A bag the facilities test scans through the demo's own scan-point topics: 5 % heavier into storage, held there."""


def scan_a_heavy_bag_into_storage(config: Config, broker: Mosquitto, client: httpx.Client) -> None:
    """Scan HEAVY_BAG at the ward, the collector and the store (2.0, 2.0, 2.1 kg) as the demo's scan points do,
    each scan once the chain has taken the one before (the chain orders steps by the gateway's receive time)."""
    bag = WasteBag(HEAVY_BAG, "infectious", 2000.0, "W3")
    topics = {d.connection["point"]: (d.id, d.connection["topic"])
              for d in config.site.devices if d.kind == "waste_mqtt"}
    for point, handler, grams in (("ward", "N-1042", 2000.0), ("collector", "C-0007", 2000.0),
                                  ("storage", "S-0003", 2100.0)):
        scanner, topic = topics[point]
        payload = ScanPointSim(scanner, point, host=broker.address.host, port=broker.port,  # type: ignore[arg-type]
                               topic=topic).scan_payload(bag, handler, grams)
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"console-test-{point}")
        publisher.connect(broker.address.host, broker.port)
        publisher.loop_start()
        try:
            publisher.publish(topic, payload, qos=1).wait_for_publish(10)
        finally:
            publisher.disconnect()
            publisher.loop_stop()
        deadline = time.monotonic() + 20
        while (chain := client.get(f"/api/v1/waste/bags/{HEAVY_BAG}")).status_code != 200 \
                or chain.json()["at"] != point:
            assert time.monotonic() < deadline, f"{HEAVY_BAG} not at {point} within 20 s: {chain.text}"
            time.sleep(0.2)


PAGE_STORE = """
const rows = (sel) => [...document.querySelectorAll(sel)];
return {loggers: rows('#store tr[data-device]').map((r) => [r.dataset.device, r.dataset.ts, r.cells[1].innerText,
                                                            r.cells[3].innerText]),
        bags: rows('#store tr[data-bag]').map((r) => [r.dataset.bag, r.dataset.limit, r.innerText]),
        alerts: rows('#store-alerts li').map((li) => [li.dataset.type, li.dataset.source]),
        reconciled: rows('#reconciliation tr[data-bag]').map((r) => [r.dataset.bag, r.dataset.flagged,
                                                                     [...r.cells].slice(3, 7).map((c) => c.innerText)]),
        handovers: rows('#handovers tr[data-bag]').map((r) => [r.dataset.bag, r.dataset.to, r.innerText])};
"""


def check_waste_dashboard(browser: WebDriver, client: httpx.Client) -> None:
    """What the waste page shows against what the waste routes answer: the store (loggers, bags, alerts), the
    day's weight reconciliation, the day's handovers and the live waste alerts."""
    def same_store(d: WebDriver) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The page's store and the route's answer once both saw the same readings, bags and alerts (the logger
        is read every 5 s and the demo's bags pass through the store)."""
        page, store = d.execute_script(PAGE_STORE), client.get("/api/v1/waste/storage").json()
        same = ([row[:2] for row in page["loggers"]] == [[x["device"], str(x["ts"] or "")] for x in store["loggers"]]
                and [b[0] for b in page["bags"]] == [b["bag"] for b in store["bags"]]
                and page["alerts"] == [[a["type"], a["source"]] for a in store["alerts"]])
        if same:
            return page, store
        click(d, "#store-refresh")  # a reading may have come in between the page's refresh and the route's answer
        return None

    page, store = wait(browser, same_store, "the waste store as the storage route answers it", 30)
    assert store["loggers"], "the demo's waste store has its logger"
    for (_, _, shown, state), logger in zip(page["loggers"], store["loggers"], strict=True):
        assert shown == f"{logger['temperature_c']:.1f} °C"
        limit = f"{store['limit_c']:g} °C"  # as the page's JavaScript writes a number
        assert state == (f"⚠ Above {limit}" if logger["above_limit"] else f"✓ At or below {limit}"), state
    assert HEAVY_BAG in [b["bag"] for b in store["bags"]]
    for (_, limit, row), bag in zip(page["bags"], store["bags"], strict=True):
        assert limit == bag["limit"]
        assert {"ok": "✓ Within", "near": "◷ Near", "over": "⚠ Over"}[limit] + f" {store['max_hours']:g} h: due" in row
        assert f"{bag['weight_g'] / 1000:.3f} kg" in row
        assert ("⚠ +5.0 % flagged" in row) == (bag["bag"] == HEAVY_BAG), "the intake's check is written"

    # Records are append-only: a bag the page shows has at least those steps now, with the same weights.
    report = client.get("/api/v1/waste/reconciliation").json()
    by_bag = {r["bag"]: r for r in report["rows"]}
    assert page["reconciled"], "today's bags"
    assert page["reconciled"][0][:2] == [HEAVY_BAG, "true"], "the flagged bag first"
    for bag, flagged, cells in page["reconciled"]:
        shown = [c for c in cells if c != "—"]
        points = by_bag[bag]["points"][:len(shown)]
        assert [c.split(" kg")[0] for c in shown] == [f"{p['weight_g'] / 1000:.3f}" for p in points], bag
        assert ["⚠" in c for c in shown] == [p["weight_check"] == "flagged" for p in points], bag
        assert flagged == str(any(p["weight_check"] == "flagged" for p in points)).lower()
    register = client.get("/api/v1/waste/register", params={"start": report["start"], "end": report["end"]}).json()
    mine = [(line["to"], line["weight_check"]) for line in register if line["bag"] == HEAVY_BAG]
    assert [(to, "⚠ flagged" in row) for bag, to, row in page["handovers"] if bag == HEAVY_BAG] == [
        (to, check == "flagged") for to, check in reversed(mine)], "today's handovers, newest first"
    assert [to for to, _ in mine] == ["collector", "storage"]

    alert = f'#waste-alerts li[data-type="waste.weight_mismatch"][data-alert-id$="{HEAVY_BAG}"]'
    wait(browser, lambda d: css(d, alert), "the weight-mismatch alert in the page's live waste alerts")
    types = browser.execute_script("return [...document.querySelectorAll('#waste-alerts li[data-type]')]"
                                   ".map((li) => li.dataset.type)")
    assert all(t.startswith("waste.") for t in types), types
    ratios = browser.execute_script(CONTRAST, "#main h2, #main h3, #main p, #main caption, #main th, #main td, "
                                              "#main td *, #main .prio")
    assert len(ratios) > 20
    assert [(what, round(ratio, 2)) for what, ratio in ratios if ratio < 4.5] == [], "text below 4.5:1"
    browser.execute_script("document.getElementById('waste-store').scrollIntoView()")


def test_biomed_opens_a_device_page(ward: tuple[Background, Mosquitto], browser: WebDriver,
                                    screenshots: Path) -> None:
    system = ward[0].system
    assert system is not None
    headers = sign_in(browser, system, ward[0].config, "b-biomed")
    assert nav(browser) == ["Alerts", "Devices", "Health"], "a biomedical engineer sees no bed vitals"
    flag_some_devices(system.api_url, headers)
    click(browser, "#nav-devices")
    wait(browser, lambda d: css(d, 'a[href="#/device/mon-icu-01"]'), "the device table")

    def settled(d: WebDriver) -> dict[str, set[str]] | None:
        """The filters' expected devices once the page read the same fleet (firmware fills in as announced)."""
        expected = fleet_flags(system.api_url, headers)
        Select(css(d, "#device-fw-status")[0]).select_by_value("behind,unknown")
        same = shown_devices(d) == expected["firmware"]
        Select(css(d, "#device-fw-status")[0]).select_by_value("")
        if same and shown_devices(d) == expected["all"]:
            return expected
        d.refresh()
        wait(d, lambda e: css(e, 'a[href="#/device/mon-icu-01"]'), "the device table again")
        return None

    expected = wait(browser, settled, "the fleet table to match the fleet routes")
    assert expected["maintenance"], "the test's plan makes some devices due"
    assert expected["recall"], "the test's recall affects some devices"
    for flag in ("offline", "battery", "maintenance", "recall"):  # each filter shows what the fleet routes say
        click(browser, f"#flag-{flag}")
        assert shown_devices(browser) == expected[flag], flag
        if flag == "recall":
            assert "⚠ R-CONSOLE" in text(browser, "#device-table tbody"), "the flag is written, not coloured"
            shoot(browser, screenshots, "biomed-devices")
        click(browser, f"#flag-{flag}")
    css(browser, "#device-search")[0].send_keys("mon-icu-0")
    wait(browser, lambda d: "mon-w3" not in css(d, "#device-table")[0].text, "the filter applied")
    click(browser, 'a[href="#/device/mon-icu-01"]')
    wait(browser, lambda d: "Heart rate" in css(d, "#device-values")[0].text, "mon-icu-01's latest values")
    chart = '#device-history .trend[data-metric="MDC_ECG_HEART_RATE"]'
    wait(browser, lambda d: css(d, f"{chart} polyline.line"), "mon-icu-01's heart-rate history")
    label = css(browser, f"{chart} svg")[0].get_attribute("aria-label") or ""
    assert 0 < int(label.rsplit(": ", 1)[1].split()[0]) <= 121, f"downsampled to at most 120 buckets: {label}"
    assert "mean and min–max per 30s" in text(browser, f"{chart} figcaption")
    browser.execute_script("document.getElementById('device-history').scrollIntoView()")
    shoot(browser, screenshots, "biomed-device")
    click(browser, "#nav-health")
    wait(browser, lambda d: "gw-icu" in css(d, "#health")[0].text, "gateway health")
    shoot(browser, screenshots, "biomed-health")


CONTRAST = """
// WCAG 2 contrast of each element's text against the first opaque background behind it.
const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
const lum = ([r, g, b]) => [r, g, b]
  .map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
  .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
function background(el) {
  for (; el; el = el.parentElement) {
    const c = rgb(getComputedStyle(el).backgroundColor);
    if (c.length === 3 || c[3] === 1) return c.slice(0, 3);
  }
  return [255, 255, 255];
}
return [...document.querySelectorAll(arguments[0])].filter((el) => el.offsetParent && el.textContent.trim())
  .map((el) => {
    const [a, b] = [lum(rgb(getComputedStyle(el).color).slice(0, 3)), lum(background(el))];
    return [el.tagName + "." + el.className + " " + el.textContent.trim().slice(0, 30),
            (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
  });
"""
FOCUS = """
const el = document.activeElement, style = getComputedStyle(el);
return {id: el.id, cls: el.className, tag: el.tagName, text: el.textContent.trim().slice(0, 40),
        visible: el.matches(':focus-visible') && style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2};
"""


def test_keyboard_only_path_with_visible_focus_and_sufficient_contrast(
        ward: tuple[Background, Mosquitto], browser: WebDriver, screenshots: Path) -> None:
    """Sign in, reach the alert list and acknowledge with Tab, Enter and Space only; every focus is visible, text
    contrast is at least 4.5:1 and every priority is written with its icon."""
    system = ward[0].system
    assert system is not None
    headers = {"Authorization": f"Bearer {bearer_of(system.api_url, ward[0].config, 'n-icu')}"}
    with httpx.Client(base_url=system.api_url, timeout=10, headers=headers) as client:  # an alarm to acknowledge
        assert client.put("/api/v1/beds/ICU-02/alarm-settings/rules/hr_high",
                          json={"settings": {"limit": 50, "delay_s": 0}}).status_code == 200
        changes = client.get("/api/v1/beds/ICU-02/alarm-settings/changes").json()
        assert (changes[0]["by"], changes[0]["bed"], changes[0]["new"]) == ("n-icu", "ICU-02",
                                                                            {"limit": 50, "delay_s": 0})
        assert {c["bed"] for c in changes} <= {None, "ICU-02"}, "another bed's changes are not this bed's history"
    browser.get(system.api_url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(system.api_url + "/console/")
    wait(browser, lambda d: d.execute_script("return document.activeElement.id") == "username", "focus in the form")
    keys = ActionChains(browser)
    keys.send_keys("n-icu", Keys.TAB, password(ward[0].config, "n-icu"), Keys.TAB).perform()
    assert browser.execute_script(FOCUS)["id"] == "sign-in"
    assert browser.execute_script(FOCUS)["visible"], "the focused button is outlined"
    ActionChains(browser).send_keys(Keys.SPACE).perform()
    wait(browser, lambda d: css(d, "#sign-out") and css(d, "#sign-out")[0].is_displayed(), "signed in by keyboard")

    def tab_to(selector: str, *, back: bool = False, most: int = 60) -> None:
        """Tab (or Shift+Tab) until ``selector`` has the focus, each stop visibly focused."""
        for _ in range(most):
            (ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT) if back
             else ActionChains(browser).send_keys(Keys.TAB)).perform()
            focus = browser.execute_script(FOCUS)
            assert focus["visible"], f"focus not visible on {focus}"
            if browser.execute_script("return document.activeElement.matches(arguments[0])", selector):
                return
        raise AssertionError(f"{selector} not reached with {most} tabs")

    tab_to("#nav-alerts", back=True)  # the sections come before the page's content
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait(browser, lambda d: d.execute_script("return location.hash") == "#/alerts", "the alert list by Enter")
    ack = '#alert-list li[data-bed="ICU-02"][data-type="hr_high"] button.ack'
    wait(browser, lambda d: css(d, ack), "ICU-02's alarm to acknowledge", 30)
    tab_to(ack)
    shoot(browser, screenshots, "keyboard-focus")
    ActionChains(browser).send_keys(Keys.SPACE).perform()
    wait(browser, lambda d: css(d, '#alert-list li[data-bed="ICU-02"][data-type="hr_high"][data-state="acknowledged"]'),
         "acknowledged by Space")

    # Every priority of the page (and the three of the bedside convention) is written and marked, not only coloured.
    browser.execute_script("const done = arguments[0]; import('/console/dom.js').then((m) => {"
                           "const p = document.createElement('p'); p.id = 'all-priorities';"
                           "p.append(...['high', 'medium', 'low'].map(m.priorityBadge));"
                           "document.getElementById('main').append(p); })")
    wait(browser, lambda d: css(d, "#all-priorities .prio-low"), "the three priorities drawn")
    badges = browser.execute_script("return [...document.querySelectorAll('.prio')].map((b) => b.textContent)")
    assert len(badges) >= 4
    marks = {"▲ *** High priority", "◆ ** Medium priority", "● * Low priority"}
    assert all(b.strip() in marks for b in badges), badges
    ratios = browser.execute_script(CONTRAST, "h1, h2, p, label, a, button, caption, th, td, .prio, .alert-state, "
                                              ".escalation, #who, #live-status, nav a, select")
    assert len(ratios) > 20
    low = [(what, round(ratio, 2)) for what, ratio in ratios if ratio < 4.5]
    assert low == [], f"text below 4.5:1: {low}"


def test_the_live_list_reconnects_after_a_server_restart(ward: tuple[Background, Mosquitto], browser: WebDriver,
                                                         screenshots: Path) -> None:
    old = ward[0]
    assert old.system is not None
    sign_in(browser, old.system, old.config, "n-icu")
    click(browser, "#nav-alerts")
    wait(browser, lambda d: css(d, '#live-status[data-state="live"]'), "the stream live")
    before = int(css(browser, "#live-status")[0].get_attribute("data-snapshots") or 0)
    browser.execute_script("window.sameDocument = true")
    old.stop()
    wait(browser, lambda d: css(d, '#live-status[data-state="reconnecting"]'), "the console noticing the restart")
    again = Background(old.config)  # same data directory and port: the token stays valid
    again.start()
    try:
        wait(browser, lambda d: int(css(d, '#live-status[data-state="live"]')[0].get_attribute("data-snapshots") or 0)
             > before if css(d, '#live-status[data-state="live"]') else False, "live again with a new snapshot", 90)
        assert browser.execute_script("return window.sameDocument") is True, "no page reload"
        wait(browser, lambda d: css(d, '#alert-list li[data-bed="ICU-03"]'), "ICU-03's alarm after resynchronising")
        shoot(browser, screenshots, "nurse-alerts")
    finally:
        ward[0].__dict__.update(again.__dict__)  # the module fixture stops whichever system is running
