"""The page at ``/`` in a real headless Chromium against a real server (uvicorn on 127.0.0.1, tiny checkpoint).

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium (dev extra).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from api_fixtures import TOKEN, env, make_checkpoint
from conftest import REPO, write_tiny_ml100k

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
HISTORY = [1, 6, 11]  # items 1, 6, 11 share Director_1 (and stars): explanation paths exist
PATH_LINE = re.compile(r"^(.+) —(\w+)→ (.+) ←(\w+)— (.+)$")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_bert: str) -> Iterator[str]:
    root = tmp_path_factory.mktemp("page")
    data = write_tiny_ml100k(root / "data")
    ckpt = make_checkpoint(data, tiny_bert, root / "ckpt", score="cosine")
    port = _free_port()
    e = {**os.environ, **env(data, ckpt, root / "state"), "FEDXREC_PORT": str(port), "FEDXREC_WORKERS": "1"}
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.api.cli"], cwd=REPO, env=e, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import time

        deadline = time.time() + 90
        while True:
            assert proc.poll() is None, (root / "server.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "server did not start"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()  # by its PID
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        reason = "chromium / chromedriver not installed (apt-get install chromium chromium-driver; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the page test")
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,2000",
    ):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()


def _wait(drv: object, cond, timeout: float = 30):  # type: ignore[no-untyped-def]
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout).until(cond)


def test_the_page_searches_recommends_explains_and_registers(server: str, browser: object) -> None:
    from selenium.webdriver.common.by import By

    drv = browser
    drv.get(server + "/")  # type: ignore[attr-defined]
    assert drv.title.startswith("fedxrec")  # type: ignore[attr-defined]
    _wait(drv, lambda d: "serving 120 items" in d.find_element(By.ID, "status").text)

    # pick the history by typing titles into the search box (GET /v1/items?query=...)
    search = drv.find_element(By.ID, "search")  # type: ignore[attr-defined]
    for item in HISTORY:
        search.clear()
        search.send_keys(f"Movie {item}")
        add = _wait(drv, lambda d, i=item: d.find_element(By.CSS_SELECTOR, f'#search-results button[data-id="{i}"]'))
        add.click()
    search.clear()
    search.send_keys("les mis")
    _wait(drv, lambda d: d.find_element(By.CSS_SELECTOR, '#search-results li[data-id="7"]'))
    history = [li.get_attribute("data-id") for li in drv.find_elements(By.CSS_SELECTOR, "#history li")]  # type: ignore[attr-defined]
    assert history == [str(i) for i in HISTORY]

    # the rendered top-k is the API's, and each path is drawn item —relation→ entity ←relation— item
    k = drv.find_element(By.ID, "k")  # type: ignore[attr-defined]
    k.clear()
    k.send_keys("8")
    drv.find_element(By.ID, "recommend").click()  # type: ignore[attr-defined]
    _wait(drv, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#recommendations li.rec")) == 8)
    want = httpx.post(f"{server}/v1/recommend", json={"history": HISTORY, "k": 8, "explain": True}).json()["items"]
    recs = drv.find_elements(By.CSS_SELECTOR, "#recommendations li.rec")  # type: ignore[attr-defined]
    assert [li.get_attribute("data-id") for li in recs] == [str(it["id"]) for it in want]
    drawn = 0
    for li, it in zip(recs, want, strict=True):
        e = it["explanation"]
        assert li.find_element(By.CSS_SELECTOR, ".sentence").text == e["sentence"]
        lines = [p.text for p in li.find_elements(By.CSS_SELECTOR, ".path")]
        expected = [
            f"{p['triples'][0]['head_label']} —{p['triples'][0]['relation']}→ {p['entity_label']}"
            f" ←{p['triples'][1]['relation']}— {p['triples'][1]['head_label']}"
            for p in e["paths"]
        ]
        assert lines == expected
        for line in lines:
            assert PATH_LINE.match(line), line
        drawn += len(lines)
    assert drawn > 0, "items 1..30 share directors and stars: some path must be drawn"

    # register a new item with the token; the page says where it ranks (the API's own rank)
    drv.find_element(By.ID, "token").send_keys(TOKEN)  # type: ignore[attr-defined]
    drv.find_element(By.ID, "new-title").send_keys("Movie Sequel")  # type: ignore[attr-defined]
    drv.find_element(By.ID, "new-genres").send_keys("Comedy")  # type: ignore[attr-defined]
    drv.find_element(By.ID, "new-director").send_keys("http://dbpedia.org/resource/Director_1")  # type: ignore[attr-defined]
    drv.find_element(By.ID, "register").click()  # type: ignore[attr-defined]
    rank = _wait(drv, lambda d: d.find_element(By.ID, "new-rank"), timeout=60).text
    assert "as id 121" in drv.find_element(By.ID, "registered").text  # type: ignore[attr-defined]
    top = httpx.post(f"{server}/v1/recommend", json={"history": HISTORY, "k": 30}).json()["items"]
    ids = [it["id"] for it in top]
    assert rank == (
        f"It ranks #{ids.index(121) + 1} for your history."
        if 121 in ids
        else "It is not in the top 30 for your history."
    )
    # explainable at once (it shares Director_1 with the history)
    e = httpx.post(f"{server}/v1/explain", json={"history": HISTORY, "item_id": 121}).json()
    assert e["paths"] and e["paths"][0]["entity_label"] == "Director 1"

    drv.find_element(By.ID, "delete-new").click()  # type: ignore[attr-defined]
    _wait(drv, lambda d: d.find_element(By.ID, "deleted"))
    assert httpx.get(f"{server}/v1/items/121").status_code == 404

    # a wrong token: the page shows the API's refusal
    token = drv.find_element(By.ID, "token")  # type: ignore[attr-defined]
    token.clear()
    token.send_keys("wrong")
    drv.find_element(By.ID, "register").click()  # type: ignore[attr-defined]
    err = _wait(drv, lambda d: d.find_element(By.CSS_SELECTOR, "#register-result .error")).text
    assert err == "401: invalid bearer token"
