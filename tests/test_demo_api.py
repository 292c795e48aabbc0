"""The demo API (OAuth2 client credentials + recorded fixtures) and the bundled templates rendered against it."""

import base64
import json
import re
import socket
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import httpx
import jinja2
import pytest

from worker.demo import CLIENT_ID, CLIENT_SECRET, FIXTURE_ROUTES, NEWS_PATH, TOKEN_PATH, DemoAPI, rss_to_json

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TEMPLATES = ROOT / "templates"
TZ_NAME = "America/New_York"
TZ = ZoneInfo(TZ_NAME)
FORM = {"content-type": "application/x-www-form-urlencoded"}
# 16:35 in New York on the day the Open-Meteo fixture was recorded.
GENERATED_AT = datetime(2026, 2, 6, 21, 35, tzinfo=UTC)


class FakeClock:
    """A monotonic clock the test moves by hand, so token expiry needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def api(clock: FakeClock) -> Iterator[DemoAPI]:
    demo = DemoAPI(clock=clock)
    demo.start("127.0.0.1", 0)
    try:
        yield demo
    finally:
        demo.stop()


@pytest.fixture
def client(api: DemoAPI) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.base_url, timeout=5, trust_env=False) as http:
        yield http


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def get_token(client: httpx.Client) -> str:
    body = f"grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}"
    response = client.post(TOKEN_PATH, content=body, headers=FORM)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


# -- token endpoint ----------------------------------------------------------------------------------


def test_token_for_the_body_oauth_token_js_sends(api: DemoAPI, client: httpx.Client) -> None:
    # jobs/oauth_token.js joins key=value pairs without encoding them; the demo credentials survive that.
    script = (ROOT / "jobs" / "oauth_token.js").read_text(encoding="utf-8")
    assert "key + '=' + body[key]" in script
    body = f"grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}"

    response = client.post(TOKEN_PATH, content=body, headers=FORM)

    assert response.status_code == 200
    doc = response.json()
    assert doc["token_type"] == "Bearer"
    assert doc["expires_in"] == 3600
    assert len(doc["access_token"]) >= 32
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert api.count(TOKEN_PATH) == 1


def test_tokens_are_random_and_expiry_is_configurable(clock: FakeClock) -> None:
    with DemoAPI(expires_in=120, clock=clock) as demo, httpx.Client(base_url=demo.base_url, trust_env=False) as http:
        first, second = get_token(http), get_token(http)
        assert first != second
        response = http.post(TOKEN_PATH, data={"grant_type": "client_credentials", "client_id": CLIENT_ID,
                                               "client_secret": CLIENT_SECRET})
        assert response.json()["expires_in"] == 120
        assert demo.count(TOKEN_PATH) == 3


def test_form_values_are_percent_decoded(clock: FakeClock) -> None:
    secret = "p+ss w&rd=%/é"
    with DemoAPI(client_secret=secret, clock=clock) as demo, httpx.Client(base_url=demo.base_url) as http:
        body = urlencode({"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": secret})
        assert "%2B" in body and "+" in body  # '+' encoded, the space as '+'

        assert http.post(TOKEN_PATH, content=body, headers=FORM).status_code == 200
        # The unencoded form would turn '+' into a space and split at '&': that secret is wrong.
        raw = f"grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={secret}"
        assert http.post(TOKEN_PATH, content=raw.encode(), headers=FORM).status_code in (400, 401)


def test_http_basic_client_authentication(clock: FakeClock) -> None:
    secret = "a:b+c é"  # ':' and '+' must survive the RFC 6749 2.3.1 form-encoding inside Basic
    with DemoAPI(client_secret=secret, clock=clock) as demo, httpx.Client(base_url=demo.base_url) as http:
        userpass = f"{quote(CLIENT_ID, safe='')}:{quote(secret, safe='')}"
        auth = "Basic " + base64.b64encode(userpass.encode()).decode()
        response = http.post(TOKEN_PATH, content="grant_type=client_credentials",
                             headers={**FORM, "Authorization": auth})
        assert response.status_code == 200, response.text

        wrong = "Basic " + base64.b64encode(f"{CLIENT_ID}:nope".encode()).decode()
        response = http.post(TOKEN_PATH, content="grant_type=client_credentials",
                             headers={**FORM, "Authorization": wrong})
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Basic ")

        both = http.post(TOKEN_PATH, content=f"grant_type=client_credentials&client_secret={quote(secret)}",
                         headers={**FORM, "Authorization": auth})
        assert both.status_code == 400
        assert both.json()["error"] == "invalid_request"


def test_wrong_secret_is_401_invalid_client_shaped_like_azure_ad(client: httpx.Client) -> None:
    response = client.post(TOKEN_PATH, data={"grant_type": "client_credentials", "client_id": CLIENT_ID,
                                             "client_secret": "wrong"})

    assert response.status_code == 401
    doc = response.json()
    real = json.loads(fixture_text("azure-ad-error-invalid-client.json"))
    assert doc["error"] == real["error"] == "invalid_client"
    assert set(doc) <= set(real)
    assert doc["error_codes"] == real["error_codes"] == [7000215]
    assert "Invalid client secret is provided." in doc["error_description"]
    assert "\r\nTrace ID: " in doc["error_description"]
    assert "access_token" not in response.text


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"grant_type": "client_credentials", "client_id": "someone-else", "client_secret": CLIENT_SECRET},
         401, "invalid_client"),
        ({"grant_type": "client_credentials", "client_id": CLIENT_ID}, 401, "invalid_client"),
        ({"grant_type": "password", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
         400, "unsupported_grant_type"),
        ({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}, 400, "invalid_request"),
    ],
    ids=["unknown-client", "no-secret", "password-grant", "no-grant"],
)
def test_token_errors(client: httpx.Client, form: dict[str, str], status: int, error: str) -> None:
    response = client.post(TOKEN_PATH, data=form)
    assert response.status_code == status
    assert response.json()["error"] == error


def test_token_needs_a_form_body_with_each_parameter_once(client: httpx.Client) -> None:
    as_json = client.post(TOKEN_PATH, json={"grant_type": "client_credentials", "client_id": CLIENT_ID,
                                            "client_secret": CLIENT_SECRET})
    assert as_json.status_code == 400
    assert as_json.json()["error"] == "invalid_request"
    repeated = client.post(TOKEN_PATH, headers=FORM,
                           content="grant_type=client_credentials&grant_type=client_credentials"
                                   f"&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}")
    assert repeated.status_code == 400
    assert client.get(TOKEN_PATH).status_code == 405


# -- data endpoints ----------------------------------------------------------------------------------


def test_data_without_token_is_401_with_bearer_challenge(api: DemoAPI, client: httpx.Client) -> None:
    response = client.get("/weather/forecast")

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge
    assert api.count("/weather/forecast") == 1
    assert api.count(TOKEN_PATH) == 0


@pytest.mark.parametrize(
    "header",
    ["Bearer not-a-token", "Bearer  {token}", "Bearer{token}", "Token {token}", "{token}", "Bearer {token} x"],
    ids=["unknown", "two-spaces", "no-space", "other-scheme", "no-scheme", "trailing"],
)
def test_malformed_or_unknown_bearer_is_401(client: httpx.Client, header: str) -> None:
    token = get_token(client)
    response = client.get("/calendar/events", headers={"Authorization": header.format(token=token)})
    assert response.status_code == 401


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(client: httpx.Client, scheme: str) -> None:
    token = get_token(client)
    assert client.get("/calendar/events", headers={"Authorization": f"{scheme} {token}"}).status_code == 200


def test_token_expires(clock: FakeClock, client: httpx.Client) -> None:
    token = get_token(client)
    auth = {"Authorization": f"Bearer {token}"}
    clock.now += 3599
    assert client.get("/sheets/menu", headers=auth).status_code == 200
    clock.now += 1
    response = client.get("/sheets/menu", headers=auth)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    # A fresh token works again.
    assert client.get("/sheets/menu", headers={"Authorization": f"Bearer {get_token(client)}"}).status_code == 200


@pytest.mark.parametrize(("path", "name"), sorted(FIXTURE_ROUTES.items()))
def test_data_with_token_is_the_exact_fixture(client: httpx.Client, path: str, name: str) -> None:
    token = get_token(client)

    response = client.get(path, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.content == (FIXTURES / name).read_bytes()


def test_news_is_the_rss_fixture_as_json(client: httpx.Client) -> None:
    token = get_token(client)

    response = client.get(NEWS_PATH, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    doc = response.json()
    assert doc["status"] == "ok"
    assert doc["feed"] == {"title": "Jane Doe", "link": "https://blog.example.test",
                           "description": "Temas sobre Linux, VoIP, Open Source, tecnología y lo relacionado."}
    assert len(doc["items"]) == 10
    first = doc["items"][0]
    assert first["title"] == "QPanel 0.13.0"
    assert first["link"] == "https://blog.example.test/qpanel-0-13-0/"
    assert first["pubDate"] == "2016-09-20T11:16:08+00:00"
    assert first["author"] == "jdoe"
    assert first["categories"][:3] == ["Software", "app_queue", "asterisk"]
    assert first["description"].startswith("Ya está disponible la versión 0.13.0 de QPanel")
    # Entities decoded, HTML gone, whitespace collapsed.
    assert doc["items"][1]["title"] == "Problema VirtualBox “starting virtual machine” …"
    for item in doc["items"]:
        assert "<" not in item["description"] and "&#" not in item["description"]
        assert "  " not in item["description"]
        assert set(item) >= {"title", "link", "pubDate", "author", "description", "categories"}


def test_rss_conversion_strips_markup_between_blocks() -> None:
    xml = (b"<rss><channel><title>T</title><item><title>A &amp; B</title>"
           b"<description><![CDATA[<p>one</p><p>two<br>three</p><script>x()</script>]]></description>"
           b"<pubDate>not a date</pubDate></item></channel></rss>")
    item = rss_to_json(xml)["items"][0]
    assert item["title"] == "A & B"
    assert item["description"] == "one two three"
    assert item["pubDate"] == "not a date"
    assert item["categories"] == []


def test_counters_are_per_path_and_thread_safe(api: DemoAPI, client: httpx.Client) -> None:
    token = get_token(client)
    auth = {"Authorization": f"Bearer {token}"}

    def fetch(_: int) -> int:
        with httpx.Client(base_url=api.base_url, trust_env=False) as http:
            return http.get("/transit/departures", headers=auth).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(fetch, range(24))) == [200] * 24
    client.get("/nowhere")

    assert api.count("/transit/departures") == 24
    assert api.counts() == {TOKEN_PATH: 1, "/transit/departures": 24, "/nowhere": 1}


def test_unknown_path_is_404_json(client: httpx.Client) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_stop_closes_the_port(clock: FakeClock) -> None:
    demo = DemoAPI(clock=clock)
    _, base_url = demo.start()
    port = int(base_url.rsplit(":", 1)[1])
    demo.stop()
    demo.stop()  # idempotent
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_demo_data_and_test_fixtures_are_identical_copies() -> None:
    shipped = ROOT / "worker" / "demo_data"
    names = sorted(p.name for p in shipped.iterdir())
    assert names == sorted(p.name for p in FIXTURES.iterdir() if p.is_file())
    for name in names:
        assert (shipped / name).read_bytes() == (FIXTURES / name).read_bytes(), name


# -- bundled config ----------------------------------------------------------------------------------


def test_bundled_config_points_only_at_the_demo_api() -> None:
    config = tomllib.loads((ROOT / "config.toml").read_text(encoding="utf-8"))
    secrets = config["secrets"]
    names = {s["name"] for s in config["sources"]}
    assert secrets["OAUTH_AUTHENTICATION_URL"] == "http://127.0.0.1:8787/oauth2/token"
    assert secrets["DEMO_API"] == "http://127.0.0.1:8787"
    served = {*FIXTURE_ROUTES, NEWS_PATH}
    script = (ROOT / "jobs" / "oauth_token.js").read_text(encoding="utf-8")
    for source in config["sources"]:
        assert source["url"].startswith("<DEMO_API>/")
        assert source["url"].removeprefix("<DEMO_API>") in served
        for placeholder in re.findall(r"<([A-Z_]+)>", source["url"] + script):
            assert placeholder in secrets
    for feed in config["feeds"]:
        assert (TEMPLATES / feed["template"]).is_file()
        assert set(feed["sources"]) <= names


# -- templates ---------------------------------------------------------------------------------------


def local_time(value: Any, fmt: str = "%H:%M") -> str:
    """Minimal stand-in for the renderer's filter: aware → TZ, naive ISO strings as written."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    if not isinstance(value, datetime):
        return str(value)
    return (value.astimezone(TZ) if value.tzinfo else value).strftime(fmt)


def ago(value: datetime | None) -> str:
    return "never" if value is None else f"{int((GENERATED_AT - value).total_seconds() // 60)} minutes ago"


@pytest.fixture(scope="module")
def env() -> jinja2.Environment:
    # StrictUndefined is stricter than the renderer: a template that passes here never prints a missing key.
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     undefined=jinja2.StrictUndefined)
    environment.filters["local_time"] = local_time
    environment.filters["ago"] = ago
    return environment


def fixture_data() -> dict[str, Any]:
    """What each bundled source stores: the fixture after config.toml's `select`."""
    return {
        "weather": json.loads(fixture_text("open-meteo-forecast.json")),
        "calendar": json.loads(fixture_text("msgraph-events-list.json"))["value"],
        "menu": json.loads(fixture_text("google-sheets-values-get.json"))["values"],
        "news": rss_to_json((FIXTURES / "rss2-wordpress-blog-feed.xml").read_bytes()),
        "transit": json.loads(fixture_text("entur-ruter-departures.json"))["stopPlace"],
    }


def source(name: str, data: Any, stale: bool = False, fetched_at: datetime | None = None) -> SimpleNamespace:
    fetched = fetched_at if fetched_at is not None or data is None else GENERATED_AT - timedelta(minutes=3)
    return SimpleNamespace(name=name, data=data, fetched_at=fetched, stale=stale,
                           last_error="HTTP 503" if stale else None, updated_ago=ago(fetched))


PAGES = {
    "weather.html.j2": ["weather"],
    "rooms.html.j2": ["calendar"],
    "menu.html.j2": ["menu"],
    "ticker.html.j2": ["news"],
    "departures.html.j2": ["transit"],
    "lobby.html.j2": ["weather", "calendar", "news"],
}
EXPECTED = {
    "weather.html.j2": ["New York", "-1°", "Overcast", "Light snow", "Saturday", "07:00", "17:19", "60",
                        "km/h", "SE", "Next 12 hours", "-22°"],
    "rooms.html.j2": ["Assembly Hall", "Orientation", "Jane Doe", "10:00", "12:00", "Fri 21 Apr 2017", "Available"],
    "menu.html.j2": ["test_update_cells_noncontiguous 5", "test_update_cells_noncontiguous 26 bottom_right"],
    "ticker.html.j2": ["QPanel 0.13.0", "Problema VirtualBox “starting virtual machine” …", "Mandar un email desde",
                       "Software", "ticker-scroll", "Jane Doe"],
    "departures.html.j2": ["Jernbanetorget", "Ellingsrudåsen", "Storo-Grefsen st.", "34X", "#E60000", "+8′",
                           "On time"],
    "lobby.html.j2": ["Overcast", "Orientation", "QPanel 0.13.0", "New York", "Welcome"],
}


def render(env: jinja2.Environment, template: str, views: dict[str, Any],
           generated_at: datetime = GENERATED_AT) -> str:
    context = {**views, "sources": views, "generated_at": generated_at, "timezone": TZ_NAME}
    return env.get_template(template).render(context)


@pytest.mark.parametrize("template", sorted(PAGES))
def test_template_renders_the_fixtures(env: jinja2.Environment, template: str) -> None:
    data = fixture_data()
    html = render(env, template, {name: source(name, data[name]) for name in PAGES[template]})

    assert html.startswith("<!DOCTYPE html>")
    assert '<meta http-equiv="refresh" content="60">' in html
    for text in EXPECTED[template]:
        assert text in html, text
    assert "updated 16:32" in html
    assert 'class="badge stale"' not in html
    assert "Waiting for" not in html
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)  # nothing a screen could try to load


def test_menu_skips_the_title_row(env: jinja2.Environment) -> None:
    html = render(env, "menu.html.j2", {"menu": source("menu", fixture_data()["menu"])})
    assert "top_left" not in html
    assert html.count('class="dish"') == 5


def test_menu_sections_and_prices(env: jinja2.Environment) -> None:
    rows = [["Dish", "Notes", "Price"], ["Soups"], ["Tomato soup", "vegan", "$4.50"], ["Bread", "", "$1"],
            ["Short row"]]
    html = render(env, "menu.html.j2", {"menu": source("menu", rows)})
    assert '<div class="section">Soups</div>' in html
    assert '<div class="price">$4.50</div>' in html
    assert '<div class="details">vegan</div>' in html


def test_rooms_shows_the_meeting_in_progress(env: jinja2.Environment) -> None:
    during = datetime(2017, 4, 21, 10, 30, tzinfo=TZ)
    html = render(env, "rooms.html.j2", {"calendar": source("calendar", fixture_data()["calendar"])}, during)
    assert "In use" in html and "until 12:00" in html
    assert 'class="event now"' in html


def test_rooms_reads_google_calendar_too(env: jinja2.Environment) -> None:
    doc = json.loads(fixture_text("google-calendar-events-list.json"))
    html = render(env, "rooms.html.j2", {"calendar": source("calendar", doc["items"])})
    assert "Staff Meeting" in html and "Sales Staff Meeting" in html
    assert "12:30" in html  # 09:30-07:00 shown in New York time


@pytest.mark.parametrize("template", sorted(PAGES))
def test_template_waits_for_data_and_shows_stale(env: jinja2.Environment, template: str) -> None:
    html = render(env, template, {name: source(name, None, stale=True) for name in PAGES[template]})

    assert "Waiting for" in html
    assert "stale" in html
    assert "HTTP 503" not in html  # errors belong in the log, not on a public screen


@pytest.mark.parametrize("template", sorted(PAGES))
def test_template_stale_badge_names_the_data_time(env: jinja2.Environment, template: str) -> None:
    data = fixture_data()
    fetched = GENERATED_AT - timedelta(hours=2)
    html = render(env, template, {n: source(n, data[n], stale=True, fetched_at=fetched) for n in PAGES[template]})
    assert "data from 14:35 — stale" in html
    yesterday = GENERATED_AT - timedelta(days=1)
    html = render(env, template, {n: source(n, data[n], stale=True, fetched_at=yesterday) for n in PAGES[template]})
    assert "data from Thu 05 Feb 16:35 — stale" in html


@pytest.mark.parametrize("shape", [{}, [], [{}], "text", 42, {"value": [{"start": "x"}]}, [[None, 3]]],
                         ids=["dict", "list", "list-of-empty", "string", "number", "odd-event", "odd-row"])
@pytest.mark.parametrize("template", sorted(PAGES))
def test_template_survives_unexpected_shapes(env: jinja2.Environment, template: str, shape: object) -> None:
    html = render(env, template, {name: source(name, shape) for name in PAGES[template]})
    assert "</html>" in html


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_api_data_is_escaped(env: jinja2.Environment) -> None:
    data = fixture_data()
    data["calendar"][0]["subject"] = HOSTILE
    data["news"]["items"][0]["title"] = HOSTILE
    data["menu"][1][0] = HOSTILE
    call = data["transit"]["estimatedCalls"][0]
    call["serviceJourney"]["line"]["presentation"]["colour"] = "red;background:url(http://x.test/)"
    call["destinationDisplay"]["frontText"] = HOSTILE
    for template, names in PAGES.items():
        html = render(env, template, {name: source(name, data[name]) for name in names})
        assert "<script>alert" not in html and "<img src=x" not in html, template
        assert "x.test" not in html, template


def test_templates_never_mark_data_safe() -> None:
    for path in TEMPLATES.glob("*.j2"):
        text = re.sub(r"\{#.*?#\}", "", path.read_text(encoding="utf-8"), flags=re.S)  # comments may say "never |safe"
        assert not re.search(r"\|\s*safe\b", text), path.name
        assert "autoescape false" not in text, path.name


def test_every_page_is_self_contained() -> None:
    for path in TEMPLATES.glob("*.j2"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), path.name
        assert "@import" not in text and "url(" not in text, path.name


